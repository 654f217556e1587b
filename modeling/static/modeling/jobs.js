// Job page: a Chart.js line per metric, fed by the metric history that every htmx poll of
// #job-progress brings (a JSON <script>). The chart box is hx-preserve'd, so the chart and its
// legend are built once and only their data changes.
//
// TRL logs a dozen series (learning rate, grad norm, epoch, logits, token counts…) on scales a
// thousand times apart: drawn together they flatten the loss. The few that say whether training
// works are drawn; the rest wait, named and counted, under "More metrics", a tick away. Our own
// legend replaces Chart.js's, whose struck-through names did not read as "off, click me".
(() => {
  "use strict";

  let chart = null;
  // Loss (train and eval), rewards, accuracies and margins: what people watch.
  const matters = (name) =>
    /(^|[/_])loss$|(^|[/_])rewards?($|[/_](margins|accuracies|chosen)$)|accurac(y|ies)$/i.test(name);

  // One line per metric. Once there are several points, a metric logged only once (the end-of-run
  // summary: runtime, throughput, eval_*) is left out: it would be a lone dot.
  function series(points) {
    const names = [...new Set(points.flatMap((p) => Object.keys(p)))].filter((k) => k !== "step");
    return names
      .map((name) => ({
        name,
        data: points.filter((p) => name in p).map((p) => ({ x: p.step, y: p[name] })),
      }))
      .filter((line) => points.length < 2 || line.data.length >= 2);
  }

  function dataset(line, hidden) {
    return { label: line.name, data: line.data, hidden, pointRadius: 0, borderWidth: 2 };
  }

  function toggle(name, shown) {
    const index = chart.data.datasets.findIndex((d) => d.label === name);
    if (index < 0) return;
    chart.setDatasetVisibility(index, shown);
    chart.update("none");
  }

  // Two lists of checkboxes: the metrics drawn by default, and the others inside a <details>
  // whose summary says how many there are. A box's colour is its line's.
  function renderLegend(box) {
    let legend = box.querySelector(".chart-legend");
    if (!legend) {
      legend = document.createElement("div");
      legend.className = "chart-legend";
      legend.innerHTML =
        '<div class="legend-main"></div>' +
        '<details class="legend-more"><summary></summary><div class="legend-rest"></div></details>';
      legend.addEventListener("change", (e) => {
        if (e.target.dataset.metric) toggle(e.target.dataset.metric, e.target.checked);
      });
      box.append(legend); // inside the preserved box: a poll's swap keeps it
    }
    const main = legend.querySelector(".legend-main");
    const rest = legend.querySelector(".legend-rest");
    chart.data.datasets.forEach((d, index) => {
      if (legend.querySelector(`[data-metric="${CSS.escape(d.label)}"]`)) return;
      const label = document.createElement("label");
      label.className = "legend-item";
      const input = document.createElement("input");
      input.type = "checkbox";
      input.dataset.metric = d.label;
      input.checked = chart.isDatasetVisible(index);
      if (typeof d.borderColor === "string") input.style.accentColor = d.borderColor;
      label.append(input, " ", d.label); // a name is text, never markup
      (matters(d.label) || !main.children.length && index === 0 ? main : rest).append(label);
    });
    const more = rest.children.length;
    legend.querySelector(".legend-more").hidden = more === 0;
    legend.querySelector(".legend-more summary").textContent =
      `${more} more metric${more === 1 ? "" : "s"} (learning rate, grad norm…): tick to draw`;
  }

  function render() {
    const source = document.getElementById("job-metrics");
    const canvas = document.getElementById("job-chart");
    if (!source || !canvas || !window.Chart) return;
    const lines = series(JSON.parse(source.textContent || "[]"));
    const box = canvas.closest(".chart-card");
    box?.classList.toggle("has-data", lines.length > 0);
    if (!chart) {
      const anyMatters = lines.some((line) => matters(line.name));
      chart = new window.Chart(canvas, {
        type: "line",
        data: {
          datasets: lines.map((line, i) => dataset(line, anyMatters ? !matters(line.name) : i > 0)),
        },
        options: {
          animation: false,
          parsing: false,
          maintainAspectRatio: false,
          interaction: { mode: "nearest", axis: "x", intersect: false },
          plugins: { legend: { display: false } },
          scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        },
      });
    } else {
      const names = new Set(lines.map((line) => line.name));
      chart.data.datasets = chart.data.datasets.filter((d) => names.has(d.label));
      for (const line of lines) {
        const existing = chart.data.datasets.find((d) => d.label === line.name);
        if (existing) existing.data = line.data;
        else chart.data.datasets.push(dataset(line, !matters(line.name)));
      }
      chart.update("none");
    }
    if (box && lines.length) renderLegend(box);
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();
