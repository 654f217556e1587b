// Evaluation charts (Chart.js from static/vendor): a metric across checkpoints and the arena
// leaderboard, both with 95% intervals drawn as error bars. Data comes from a JSON <script> next
// to each canvas; htmx swaps bring new canvases, so charts are (re)built after every settle.
(() => {
  "use strict";

  const charts = new Map(); // canvas -> Chart

  // Chart.js has no error bars: draw each dataset's `errorBars[i] = [low, high]` as a vertical
  // line with caps at its point's x.
  const errorBars = {
    id: "veredictoErrorBars",
    afterDatasetsDraw(chart) {
      const { ctx } = chart;
      const y = chart.scales.y;
      chart.data.datasets.forEach((dataset, d) => {
        const meta = chart.getDatasetMeta(d);
        if (!dataset.errorBars || meta.hidden) return;
        ctx.save();
        ctx.strokeStyle = dataset.borderColor || "#3451b2";
        ctx.lineWidth = 1.5;
        meta.data.forEach((point, i) => {
          const bar = dataset.errorBars[i];
          if (!bar || point.skip) return;
          const top = y.getPixelForValue(bar[1]);
          const bottom = y.getPixelForValue(bar[0]);
          ctx.beginPath();
          ctx.moveTo(point.x, top);
          ctx.lineTo(point.x, bottom);
          ctx.moveTo(point.x - 4, top);
          ctx.lineTo(point.x + 4, top);
          ctx.moveTo(point.x - 4, bottom);
          ctx.lineTo(point.x + 4, bottom);
          ctx.stroke();
        });
        ctx.restore();
      });
    },
  };

  const palette = ["#3451b2", "#12b76a", "#b54708", "#b42318", "#7a5af8", "#0e9384", "#667085"];

  function metricConfig(series) {
    return {
      type: "line",
      data: {
        labels: series.labels,
        datasets: series.datasets.map((line, i) => ({
          label: line.label,
          data: line.data,
          errorBars: line.errorBars,
          borderColor: palette[i % palette.length],
          backgroundColor: palette[i % palette.length],
          spanGaps: true,
          pointRadius: 4,
          borderWidth: 2,
        })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        // offset: room at both ends, so the first and last error bars are not cut in half
        scales: { x: { offset: true }, y: { grace: "5%", title: { display: true, text: series.label } } },
        plugins: {
          tooltip: {
            callbacks: {
              afterLabel(item) {
                const bar = item.dataset.errorBars[item.dataIndex];
                return bar ? `95% CI ${bar[0].toPrecision(4)} – ${bar[1].toPrecision(4)}` : "";
              },
            },
          },
        },
      },
    };
  }

  function leaderboardConfig(board) {
    return {
      type: "line",
      data: {
        labels: board.labels,
        datasets: [{
          label: "Bradley-Terry rating",
          data: board.ratings,
          errorBars: board.errorBars,
          showLine: false,
          pointRadius: 5,
          borderColor: palette[0],
          backgroundColor: palette[0],
        }],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              afterLabel(item) {
                const bar = board.errorBars[item.dataIndex];
                return `95% CI ${Math.round(bar[0])} – ${Math.round(bar[1])}`;
              },
            },
          },
        },
        scales: {
          x: { offset: true },
          y: {
            grace: "5%",
            title: { display: true, text: `rating (${board.reference} = 1000)` },
            // Error bars reach past the points: size the axis to the intervals.
            suggestedMin: Math.min(...board.errorBars.map((b) => b[0])),
            suggestedMax: Math.max(...board.errorBars.map((b) => b[1])),
          },
        },
      },
    };
  }

  const builders = { metric: metricConfig, leaderboard: leaderboardConfig };

  function render() {
    if (!window.Chart) return;
    for (const [canvas, chart] of charts) {
      if (!canvas.isConnected) {
        chart.destroy();
        charts.delete(canvas);
      }
    }
    document.querySelectorAll("canvas[data-eval-chart]").forEach((canvas) => {
      if (charts.has(canvas)) return;
      const source = document.getElementById(canvas.dataset.source);
      const build = builders[canvas.dataset.evalChart];
      if (!source || !build) return;
      const config = build(JSON.parse(source.textContent));
      config.plugins = [errorBars];
      charts.set(canvas, new window.Chart(canvas, config));
    });
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();

// Wide tables (the dashboard's metric columns): a table that scrolls inside its box says how many
// columns lie out of view and on which side, and shades that edge. Without it, 4 of 13 metric
// columns showed and nothing said that more existed (issue #17).
(() => {
  "use strict";

  function updateCue(scroller) {
    const frame = scroller.closest("[data-scroll-frame]");
    const cue = frame?.querySelector("[data-scroll-cue]");
    if (!frame || !cue) return;
    const box = scroller.getBoundingClientRect();
    const sticky = scroller.querySelector("thead .sticky")?.getBoundingClientRect().right ?? box.left;
    const columns = [...scroller.querySelectorAll("thead th[data-column]")];
    const right = columns.filter((th) => th.getBoundingClientRect().right > box.right + 1).length;
    const left = columns.filter((th) => th.getBoundingClientRect().left < sticky - 1).length;
    frame.classList.toggle("more-right", right > 0);
    frame.classList.toggle("more-left", left > 0);
    cue.hidden = right === 0 && left === 0;
    const parts = [];
    if (left) parts.push(`← ${left} to the left`);
    if (right) parts.push(`${right} more to the right →`);
    const what = columns[0]?.dataset.column || "column";
    cue.textContent =
      `${columns.length - left - right} of ${columns.length} ${what} columns in view; ` +
      `${parts.join(", ")}. Scroll the table sideways (Shift + wheel, or swipe).`;
  }

  function watch() {
    document.querySelectorAll("[data-scroll-frame] .table-scroll").forEach((scroller) => {
      if (!scroller.dataset.cueReady) {
        scroller.dataset.cueReady = "1";
        scroller.addEventListener("scroll", () => updateCue(scroller), { passive: true });
      }
      updateCue(scroller);
    });
  }

  document.addEventListener("DOMContentLoaded", watch);
  document.addEventListener("htmx:afterSettle", watch);
  window.addEventListener("resize", watch);
})();
