/* kvmops web UI: the host page's "Evacuate" dialog, as `kvmops host evacuate NAME`.
   The plan first: POST /api/v1/hosts/{name}/evacuate with dry_run (a job whose result
   is the plan: per running VM its target and why, or its blockers; nothing changes).
   Then "Evacuate" runs the same route without dry_run: a job followed on the event
   stream (its notes and percent), cancelled through POST /api/v1/jobs/{id}/cancel,
   whose result is the per-VM report. */
"use strict";

/* One VM's line of the plan or the report (EvacuationItem.line in services/evacuate.py). */
function evacuationLine(item) {
  let text = item.vm + " -> " + (item.target || "-") + ": " + item.status;
  if (item.status === "planned" || item.status === "no-room") text += " (" + item.reason + ")";
  else if (item.status === "blocked") {
    text += ": " + item.blockers.map((b) => b.code + ": " + b.message + " (" + b.remedy + ")").join("; ");
  } else if (item.status === "moved") {
    text += " in " + (item.seconds || 0).toFixed(1) + " s" +
      (item.downtime_ms !== null && item.downtime_ms !== undefined ? ", downtime " + item.downtime_ms + " ms" : "");
  } else if (item.error) text += ": " + item.error;
  return text;
}

/* The report's VMs (one li each, data-vm/-target/-status) and its other facts. */
function showEvacuation(list, report) {
  list.replaceChildren();
  const add = (text, cls, item) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    if (item) {
      li.dataset.vm = item.vm;
      li.dataset.target = item.target || "";
      li.dataset.status = item.status;
    }
    list.appendChild(li);
  };
  const good = report.dry_run ? "planned" : "moved";
  report.vms.forEach((item) => add(evacuationLine(item), item.status === good ? "" : "error-text", item));
  if (!report.vms.length) add("no running VM on " + report.host + ": nothing to move", "muted");
  if (report.staying.length) add("not running, staying: " + report.staying.join(", "), "muted");
  Object.entries(report.unreachable).forEach(([h, why]) => add(h + " unreachable: " + why, "muted"));
  report.notes.forEach((n) => add(n, "muted"));
}

document.addEventListener("DOMContentLoaded", () => {
  const dlg = document.getElementById("evacuate-dialog");
  const open = document.getElementById("evacuate-btn");
  if (!dlg || !open) return;  // below the operator role
  const host = dlg.dataset.host;
  const url = "/api/v1/hosts/" + encodeURIComponent(host) + "/evacuate";
  const form = dlg.querySelector("form");
  const plan = document.getElementById("evacuate-plan");
  const planState = document.getElementById("evacuate-plan-state");
  const go = document.getElementById("evacuate-go");
  const status = document.getElementById("evacuate-status");
  const bar = status.querySelector("progress");
  const msg = status.querySelector('[data-field="message"]');
  const report = document.getElementById("evacuate-report");
  const cancel = document.getElementById("evacuate-cancel");
  let jobId = null;
  let planning = 0;

  function body() {
    const f = new FormData(form);
    const b = { parallel: Math.max(1, parseInt((f.get("parallel") || "2").toString(), 10) || 2),
                copy_storage: f.get("copy_storage") !== null,
                auto_converge: f.get("auto_converge") !== null };
    const bw = parseInt((f.get("bandwidth_mib") || "").toString(), 10);
    if (bw > 0) b.bandwidth_mib = bw;
    return b;
  }

  async function makePlan() {
    const mine = ++planning;
    go.disabled = true;
    plan.replaceChildren();
    planState.textContent = "planning (a dry run: nothing changes)…";
    try {
      await K.connected();
      const r = await K.api("POST", url, Object.assign(body(), { dry_run: true }));
      const job = await K.watchJob(r.data.job_id, () => {});
      if (mine !== planning) return;  // a newer plan was asked for
      if (job.state !== "succeeded") throw new Error("plan " + job.state + ": " + (job.error || ""));
      showEvacuation(plan, job.result);
      const moving = job.result.vms.filter((i) => i.status === "planned").length;
      planState.textContent = "plan: " + moving + " of " + job.result.vms.length +
        " running VM(s) can move";
      go.disabled = moving === 0;
    } catch (err) {
      if (mine === planning) planState.textContent = err.message;
    }
  }

  open.addEventListener("click", () => {
    dlg.showModal();
    makePlan();
  });
  document.getElementById("evacuate-replan").addEventListener("click", (ev) => {
    ev.preventDefault();
    makePlan();
  });

  dlg.addEventListener("close", async () => {
    if (dlg.returnValue !== "ok") return;
    planning++;  // a plan still running is of no use now
    status.hidden = false;
    status.dataset.state = "running";
    bar.value = 0;
    report.replaceChildren();
    msg.textContent = "evacuating '" + host + "'…";
    try {
      await K.connected();
      const r = await K.api("POST", url, Object.assign(body(), { dry_run: false }));
      jobId = r.data.job_id;
      cancel.hidden = false;
      const job = await K.watchJob(jobId, (pct, m) => {
        if (pct !== null) bar.value = pct;
        if (m) msg.textContent = m;
      });
      status.dataset.state = job.state;
      cancel.hidden = true;
      if (job.result) showEvacuation(report, job.result);
      if (job.state !== "succeeded") throw new Error("evacuation " + job.state + ": " + (job.error || ""));
      const moved = job.result.vms.filter((i) => i.status === "moved").length;
      bar.value = 100;
      msg.textContent = moved + " of " + job.result.vms.length + " VM(s) moved";
      K.toast("host '" + host + "': " + msg.textContent, moved === job.result.vms.length ? "ok" : "error");
    } catch (err) {
      msg.textContent = err.message;
      K.toast(err.message, "error");
    }
  });

  cancel.addEventListener("click", () => { if (jobId) K.cancelJob(jobId); });
});
