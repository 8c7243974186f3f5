/* The VM page's instant-recovery line: while the VM runs on overlays of a backup point,
   the background copy's progress (GET /api/v1/backups/instant, from libvirt's block job
   info), polled until it completes; hidden for a VM that was never recovered so. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const line = document.getElementById("instant-recovery");
  if (!line || typeof K === "undefined") return;
  const vm = line.dataset.vm;
  const mib = (n) => (n / 1048576).toFixed(1) + " MiB";

  async function poll() {
    let found = null;
    try {
      const all = (await K.api("GET", "/api/v1/backups/instant")).data || [];
      found = all.find((s) => s.record && s.record.vm === vm) || null;
    } catch (err) {
      return;  // the line is a hint: no error banner for it
    }
    if (!found) { line.hidden = true; return; }
    const r = found.record;
    const pct = Math.round(found.percent_done);
    let text = "Instant recovery of backup " + r.backup_id + " of VM " + r.source_vm + ": ";
    if (r.state === "completed") text += "completed, the disks are standalone.";
    else if (r.state === "pulling") text += "copying in the background, " + pct + "% (" +
      mib(found.done) + " of " + mib(found.total) + ")" +
      (found.vm_running ? "" : "; the VM is not running (resume with kvmops backup instant resume)");
    else text += r.state + (r.message ? " — " + r.message : "");
    line.textContent = text;
    line.dataset.state = r.state;
    line.hidden = false;
    if (r.state === "pulling") setTimeout(poll, 2000);
  }
  poll();
});
