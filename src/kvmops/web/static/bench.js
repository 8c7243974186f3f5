/* Benchmarks in the guest (guest page, #guest-bench): the VM's runs from
   GET /api/v1/vms/{name}/bench as a table and, with charts.js, a chart of each
   benchmark's score over time; a form starts a run (POST .../bench, a job). */
"use strict";

(() => {
  const box = document.getElementById("guest-bench");
  if (!box || typeof K === "undefined") return;
  const name = box.dataset.vm;
  const url = "/api/v1/vms/" + encodeURIComponent(name) + "/bench";
  const table = box.querySelector("tbody");
  const chartEl = box.querySelector("[data-bench-chart]");
  const form = document.getElementById("bench-form");
  const status = box.querySelector('[data-field="bench-status"]');

  function unit(run) { return run.kind === "fio" ? "IOPS" : "events/s"; }
  function series(run) { return run.kind + " " + run.test; }
  function num(v) { return v.toLocaleString(undefined, { maximumFractionDigits: 1 }); }
  function latency(run) {
    const m = run.metrics;
    if (run.kind === "fio") {
      const side = m.read_iops ? "read" : "write";
      const p = ["p50", "p99", "p99.9"].map((q) => m[side + "_clat_" + q + "_us"]);
      return p[0] === undefined ? "–" : "p50/p99/p99.9 " + p.map((v) => num(v)).join("/") + " µs";
    }
    return "avg/p95 " + num(m.latency_avg_ms || 0) + "/" + num(m.latency_p95_ms || 0) + " ms";
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function draw(entries) {
    table.replaceChildren();
    for (const e of entries.slice().reverse()) {
      const r = e.run;
      const tr = document.createElement("tr");
      tr.dataset.run = r.id;
      cell(tr, r.id);
      cell(tr, new Date(r.started_at).toLocaleString());
      cell(tr, series(r));
      cell(tr, num(r.score) + " " + unit(r));
      cell(tr, latency(r), "small");
      cell(tr, e.change_percent === null || e.change_percent === undefined ? "–"
        : (e.change_percent > 0 ? "+" : "") + e.change_percent.toFixed(1) + " %");
      cell(tr, (e.config_changes || []).join("; ") || "–", "small");
      table.appendChild(tr);
    }
    box.querySelector('[data-field="bench-empty"]').hidden = entries.length > 0;
    if (!chartEl || typeof KCharts === "undefined" || !entries.length) return;
    // one line per benchmark (kind and test), its score at each run's time
    const names = [...new Set(entries.map((e) => series(e.run)))];
    const times = entries.map((e) => Date.parse(e.run.started_at) / 1000);
    const columns = names.map((n) => entries.map((e) => (series(e.run) === n ? e.run.score : null)));
    const c = KCharts.chart(chartEl, { title: "Score per run (IOPS, events/s)", unit: "count", labels: names });
    c.update(times, columns);
  }

  async function load() {
    try { draw((await K.api("GET", url)).data); }
    catch (err) { K.toast(err.message, "error"); }
  }

  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const [kind, test] = f.get("bench").toString().split(" ");
      const seconds = parseInt(f.get("seconds") || "10", 10);
      const body = kind === "fio" ? { kind, rw: test, runtime: seconds } : { kind, test, time: seconds };
      const target = (f.get("target") || "").toString().trim();
      if (kind === "fio" && target) body.target = target;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      box.dataset.state = "running";
      try {
        const r = await K.api("POST", url, body);
        const job = await K.watchJob(r.data.job_id, (pct, msg) => { status.textContent = msg || ""; });
        box.dataset.state = job.state;
        status.textContent = job.state === "succeeded" ? "" : (job.error || job.state);
        if (job.state !== "succeeded") K.toast(job.error || job.state, "error");
        await load();
      } catch (err) {
        box.dataset.state = "failed";
        K.toast(err.message, "error");
      } finally { button.disabled = false; }
    });
  }
  load();
})();
