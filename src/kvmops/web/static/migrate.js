/* kvmops web UI: the VM page's "Migrate" dialog. The preflight is
   POST /api/v1/vms/{name}/migrate/preflight (every blocker with its remedy, nothing
   changes); the migration POST /api/v1/vms/{name}/migrate, a job followed on the event
   stream, cancelled through POST /api/v1/jobs/{id}/cancel. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const dlg = document.getElementById("migrate-dialog");
  const open = document.getElementById("migrate-btn");
  if (!dlg || !open) return;  // below the operator role
  const name = dlg.dataset.vm;
  const here = document.body.dataset.host || "local";
  const vmApi = "/api/v1/vms/" + encodeURIComponent(name);
  const form = dlg.querySelector("form");
  const select = form.querySelector('select[name="to"]');
  const checks = document.getElementById("migrate-checks");
  const status = document.getElementById("migrate-status");
  const msg = status.querySelector('[data-field="message"]');
  const cancel = document.getElementById("migrate-cancel");
  let jobId = null;

  function body() {
    const f = new FormData(form);
    const b = { to: (f.get("to") || "").toString(), copy_storage: f.get("copy_storage") !== null,
                auto_converge: f.get("auto_converge") !== null };
    const pool = (f.get("target_pool") || "").toString().trim();
    if (pool) b.target_pool = pool;
    const bw = parseInt((f.get("bandwidth_mib") || "").toString(), 10);
    if (bw > 0) b.bandwidth_mib = bw;
    return b;
  }
  function show(items, cls) {
    items.forEach((text) => {
      const li = document.createElement("li");
      li.className = cls;
      li.textContent = text;
      checks.appendChild(li);
    });
  }

  open.addEventListener("click", async () => {
    select.replaceChildren();
    checks.replaceChildren();
    try {
      const hosts = (await K.api("GET", "/api/v1/hosts")).data;
      hosts.filter((h) => h.name !== here).forEach((h) => {
        const o = document.createElement("option");
        o.value = h.name;
        o.textContent = h.name + (h.reachable ? "" : " (unreachable)");
        select.appendChild(o);
      });
    } catch (err) { K.toast(err.message, "error"); }
    if (!select.options.length) show(["no other host: add one on the Hosts page"], "muted");
    dlg.showModal();
  });

  document.getElementById("migrate-check").addEventListener("click", async (ev) => {
    ev.preventDefault();
    checks.replaceChildren();
    try {
      const r = (await K.api("POST", vmApi + "/migrate/preflight", body())).data;
      show(r.blockers.map((b) => b.code + ": " + b.message + " (" + b.remedy + ")"), "error-text");
      show(r.warnings, "muted");
      if (!r.blockers.length) show([r.kind + " migration to '" + r.target + "' may run"], "ok");
    } catch (err) { show([err.message], "error-text"); }
  });

  dlg.addEventListener("close", async () => {
    if (dlg.returnValue !== "ok") return;
    const b = body();
    status.hidden = false;
    status.dataset.state = "running";
    msg.textContent = "migrating to '" + b.to + "'…";
    try {
      await K.runJobIn({ status, msg, cancel }, vmApi + "/migrate", b, "migration",
                       (id) => { jobId = id; });
      msg.textContent = "migrated to '" + b.to + "'";
      K.toast("VM '" + name + "' migrated to '" + b.to + "'", "ok");
    } catch (err) {
      msg.textContent = err.message;
      K.toast(err.message, "error");
    }
  });

  cancel.addEventListener("click", () => { if (jobId) K.cancelJob(jobId); });
});
