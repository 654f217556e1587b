// Job page: a Chart.js line per metric, fed by the metric history that every htmx poll of
// #job-progress brings (a JSON <script>). The canvas is hx-preserve'd, so the chart is built
// once and only its data changes; datasets a user hid in the legend stay hidden.
(() => {
  "use strict";

  let chart = null;
  // Losses and rewards are what people watch; other metrics start hidden (click the legend).
  const shownByDefault = (name) => /loss|reward/i.test(name);

  // One line per metric. Once there are several points, a metric logged only once (the end-of-run
  // summary: runtime, throughput, eval_*) is left out: it would be a lone dot in the legend.
  function series(points) {
    const names = [...new Set(points.flatMap((p) => Object.keys(p)))].filter((k) => k !== "step");
    return names
      .map((name) => ({
        name,
        data: points.filter((p) => name in p).map((p) => ({ x: p.step, y: p[name] })),
      }))
      .filter((line) => points.length < 2 || line.data.length >= 2);
  }

  function render() {
    const source = document.getElementById("job-metrics");
    const canvas = document.getElementById("job-chart");
    if (!source || !canvas || !window.Chart) return;
    const lines = series(JSON.parse(source.textContent || "[]"));
    canvas.closest(".chart-card")?.classList.toggle("has-data", lines.length > 0);
    if (!chart) {
      const anyShown = lines.some((line) => shownByDefault(line.name));
      chart = new window.Chart(canvas, {
        type: "line",
        data: {
          datasets: lines.map((line, i) => ({
            label: line.name,
            data: line.data,
            hidden: anyShown ? !shownByDefault(line.name) : i > 0,
            pointRadius: 0,
            borderWidth: 2,
          })),
        },
        options: {
          animation: false,
          parsing: false,
          maintainAspectRatio: false,
          interaction: { mode: "nearest", axis: "x", intersect: false },
          scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        },
      });
      return;
    }
    const names = new Set(lines.map((line) => line.name));
    chart.data.datasets = chart.data.datasets.filter((d) => names.has(d.label));
    for (const line of lines) {
      const existing = chart.data.datasets.find((d) => d.label === line.name);
      if (existing) existing.data = line.data;
      else
        chart.data.datasets.push({
          label: line.name, data: line.data, hidden: !shownByDefault(line.name), pointRadius: 0, borderWidth: 2,
        });
    }
    chart.update("none");
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();
