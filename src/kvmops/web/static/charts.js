/* kvmops charts: small time-series charts over uPlot (vendored in /static/uplot by
   scripts/setup-host.sh). Reusable by any page:

     <link rel="stylesheet" href="/static/uplot/uPlot.min.css">
     <script src="/static/uplot/uPlot.iife.min.js" defer></script>
     <script src="/static/charts.js" defer></script>

   KCharts.chart(el, {title, unit, labels: ["read", "write"]}) -> {update(times, columns)}
     one chart in el; times are seconds since the epoch, columns one array of numbers
     (or null for a gap) per label. unit: "percent", "bytes", "bytes/s", "count", or
     any short text shown after the number.
   KCharts.live(el, url, specs, everyMs) -> {refresh(), stop()}
     fetches url (JSON {times: [...], series: {key: [...]}, interval_s}) now and every
     everyMs (default: the answer's interval_s, at least 2 s), one chart per spec
     {title, unit, keys: [[key, label], ...]} in el.
   KCharts.format(unit, value) -> text.
   KCharts.VM / KCharts.HOST: the specs of the sampler's VM and host series.

   Markup alone works too: <div data-live-charts="vm|host" data-url="..."> fills itself
   when the page loads; a <select data-chart-host> next to a host chart set (same
   parent) switches data-url's {host} between the hosts it offers.

   Each chart's element carries data-points (how many non-null values it shows), so
   tests and scripts can tell an empty chart from a drawn one. Without uPlot (not
   installed) a chart says so instead of failing the page. */
"use strict";

const KCharts = (() => {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

  function scaled(value, base, units) {
    let i = 0;
    let v = Math.abs(value);
    while (v >= base && i < units.length - 1) { v /= base; i++; }
    const sign = value < 0 ? "-" : "";
    const digits = Number.isInteger(v) || v >= 100 ? 0 : v >= 10 && i === 0 ? 0 : 1;
    return sign + v.toFixed(digits) + " " + units[i];
  }

  function format(unit, value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    switch (unit) {
      case "percent": return value.toFixed(value >= 10 ? 0 : 1) + " %";
      case "bytes": return scaled(value, 1024, ["B", "KiB", "MiB", "GiB", "TiB"]);
      case "bytes/s": return scaled(value, 1024, ["B/s", "KiB/s", "MiB/s", "GiB/s"]);
      case "count": case "": case undefined: return scaled(value, 1000, ["", "k", "M", "G"]).trim();
      default: return scaled(value, 1000, ["", "k", "M", "G"]).trim() + " " + unit;
    }
  }

  function points(columns) {
    let n = 0;
    for (const col of columns) for (const v of col) if (v !== null && v !== undefined) n++;
    return n;
  }

  function chart(el, opts) {
    el.classList.add("chart");
    el.dataset.points = "0";
    const title = document.createElement("div");
    title.className = "chart-title";
    title.textContent = opts.title || "";
    const body = document.createElement("div");
    body.className = "chart-body";
    el.replaceChildren(title, body);
    const labels = opts.labels || [""];
    if (typeof uPlot === "undefined") {
      body.textContent = "Charts need uPlot: run scripts/setup-host.sh (it installs uplot with npm).";
      body.classList.add("error-text");
      return { update() {}, destroy() {} };
    }
    const height = opts.height || 160;
    const width = () => Math.max(160, Math.floor(body.clientWidth || 300));
    const plot = new uPlot({
      width: width(),
      height,
      legend: { show: labels.length > 1 || !!labels[0] },
      cursor: { drag: { x: false, y: false } },
      /* from 0 (or below), and at least 1 unit high: a flat 0 line shows as 0, not as noise */
      scales: { y: { range: (u, min, max) => [Math.min(0, min ?? 0), Math.max(max ?? 1, 1)] } },
      axes: [
        {},
        { size: 70, values: (u, ticks) => ticks.map((t) => format(opts.unit, t)) },
      ],
      series: [{}].concat(labels.map((label, i) => ({
        label: label || opts.title || "",
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        spanGaps: false,
        value: (u, v) => format(opts.unit, v),
      }))),
    }, [[], ...labels.map(() => [])], body);
    /* the plot follows its box's width (grid cells settle after the first layout) */
    let lastWidth = width();
    const resized = new ResizeObserver(() => {
      const w = width();
      if (w !== lastWidth) { lastWidth = w; plot.setSize({ width: w, height }); }
    });
    resized.observe(body);
    return {
      update(times, columns) {
        const cols = labels.map((_, i) => (columns[i] || []).map((v) => (v === undefined ? null : v)));
        plot.setData([times.slice(), ...cols]);
        el.dataset.points = String(points(cols));
      },
      destroy() { resized.disconnect(); plot.destroy(); },
    };
  }

  function live(el, url, specs, everyMs) {
    /* every box in the grid first, so that each plot starts at its cell's width */
    const boxes = specs.map(() => el.appendChild(document.createElement("div")));
    const charts = specs.map((spec, i) => ({
      spec,
      chart: chart(boxes[i], { title: spec.title, unit: spec.unit, labels: spec.keys.map((k) => k[1]) }),
    }));
    let timer = null;
    let stopped = false;
    let every = everyMs;
    async function refresh() {
      let data;
      try {
        const resp = await fetch(url, { credentials: "same-origin" });
        if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
        data = await resp.json();
        el.dataset.error = "";
      } catch (err) {
        el.dataset.error = String(err.message || err);
        return;
      }
      if (!everyMs && data.interval_s) every = Math.max(2000, data.interval_s * 1000);
      const series = data.series || {};
      for (const { spec, chart: c } of charts) {
        c.update(data.times || [], spec.keys.map((k) => series[k[0]] || []));
      }
      el.dataset.updated = String(Date.now());
    }
    function loop() {
      if (stopped) return;
      timer = setTimeout(async () => { if (!document.hidden) await refresh(); loop(); }, every || 10000);
    }
    refresh().then(loop);
    return {
      refresh,
      stop() {
        stopped = true;
        if (timer) clearTimeout(timer);
        charts.forEach((c) => c.chart.destroy());
      },
    };
  }

  const VM = [
    { title: "CPU (% of the host)", unit: "percent", keys: [["cpu_percent", ""]] },
    { title: "Memory", unit: "bytes", keys: [["memory_bytes", ""]] },
    { title: "Disk", unit: "bytes/s", keys: [["disk_read_bps", "read"], ["disk_write_bps", "write"]] },
    { title: "Network", unit: "bytes/s", keys: [["net_rx_bps", "rx"], ["net_tx_bps", "tx"]] },
  ];
  const HOST = [
    { title: "CPU (all CPUs)", unit: "percent", keys: [["cpu_percent", ""]] },
    { title: "Memory", unit: "bytes", keys: [["memory_used_bytes", "used"], ["memory_total_bytes", "total"]] },
    { title: "Disk (VMs)", unit: "bytes/s", keys: [["disk_read_bps", "read"], ["disk_write_bps", "write"]] },
    { title: "Network (VMs)", unit: "bytes/s", keys: [["net_rx_bps", "rx"], ["net_tx_bps", "tx"]] },
  ];

  function auto(el) {
    const specs = el.dataset.liveCharts === "host" ? HOST : VM;
    const select = el.parentElement && el.parentElement.querySelector("select[data-chart-host]");
    let current = null;
    const start = () => {
      if (current) current.stop();
      el.replaceChildren();
      const host = select ? select.value : "local";
      el.dataset.host = host;
      current = live(el, el.dataset.url.replace("{host}", encodeURIComponent(host)), specs);
    };
    if (select) select.addEventListener("change", start);
    start();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-live-charts]").forEach(auto);
  });

  return { chart, live, format, VM, HOST };
})();
