/* kvmops web UI: the VM page's "Screen and diagnostics" card. The thumbnail is
   GET /api/v1/vms/{name}/screenshot (PNG; refreshed on demand and once the VM starts);
   an operator injects an NMI (POST .../nmi), resets (POST .../reset) or dumps the
   memory (POST .../dump: a job followed on the event stream, cancellable). */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const card = document.getElementById("diagnostics");
  if (!card) return;
  const name = card.dataset.vm;
  const vmApi = "/api/v1/vms/" + encodeURIComponent(name);
  const img = document.getElementById("screenshot-img");
  const note = card.querySelector('[data-field="screenshot-note"]');
  const refresh = document.getElementById("screenshot-refresh");
  let shown = null;

  async function loadScreenshot() {
    refresh.disabled = true;
    try {
      const resp = await fetch(K.onHost(vmApi + "/screenshot?t=" + Date.now(), document.body.dataset.host),
                               { credentials: "same-origin" });
      if (!resp.ok) {
        let text = resp.status + " " + resp.statusText;
        try { text = (await resp.json()).error || text; } catch (e) { /* not JSON */ }
        throw new Error(text);
      }
      const blob = await resp.blob();
      if (shown) URL.revokeObjectURL(shown);
      shown = URL.createObjectURL(blob);
      img.src = shown;
      img.hidden = false;
      note.textContent = "taken " + new Date().toLocaleTimeString() +
        (resp.headers.get("X-Screen-Size") ? " · " + resp.headers.get("X-Screen-Size") : "");
      note.classList.remove("error-text");
    } catch (err) {
      img.hidden = true;
      note.textContent = "no screenshot: " + err.message;
      note.classList.add("error-text");
    } finally {
      refresh.disabled = false;
    }
  }
  refresh.addEventListener("click", loadScreenshot);
  img.addEventListener("click", () => { if (shown) window.open(shown, "_blank"); });
  K.on("domain", (ev) => {
    if (ev.vm === name && (ev.event === "started" || ev.event === "resumed")) setTimeout(loadScreenshot, 2000);
  });
  loadScreenshot();

  /* operator actions */
  async function post(verb, question) {
    if (question && !confirm(question)) return;
    try {
      const r = await K.api("POST", vmApi + "/" + verb);
      K.toast(r.data.message || verb + " done", "ok");
      setTimeout(loadScreenshot, 1500);
    } catch (err) { K.toast(err.message, "error"); }
  }
  const nmi = document.getElementById("nmi-btn");
  if (nmi) nmi.addEventListener("click", () => post("nmi", null));
  const reset = document.getElementById("reset-btn");
  if (reset) reset.addEventListener("click", () => post("reset", "Reset VM '" + name + "'? It reboots at once; unsaved guest data is lost."));

  const dlg = document.getElementById("dump-dialog");
  const open = document.getElementById("dump-btn");
  if (!dlg || !open) return;
  const form = dlg.querySelector("form");
  const status = document.getElementById("dump-status");
  const msg = status.querySelector('[data-field="message"]');
  const cancel = document.getElementById("dump-cancel");
  let jobId = null;
  open.addEventListener("click", () => dlg.showModal());
  dlg.addEventListener("close", async () => {
    if (dlg.returnValue !== "ok") return;
    const f = new FormData(form);
    const body = { memory_only: f.get("memory_only") !== null, format: (f.get("format") || "elf").toString(),
                   live: f.get("live") !== null, force: f.get("force") !== null };
    const file = (f.get("file") || "").toString().trim();
    if (file) body.file = file;
    status.hidden = false;
    status.dataset.state = "running";
    status.querySelector("progress").value = 0;
    msg.textContent = "dumping…";
    try {
      const job = await K.runJobIn({ status, msg, cancel }, vmApi + "/dump", body, "dump",
                                   (id) => { jobId = id; });
      msg.textContent = "written to " + job.result.path + " (" + K.fmtBytes(job.result.size) + ")";
      K.toast("VM '" + name + "' dumped to " + job.result.path, "ok");
    } catch (err) {
      status.dataset.state = "failed";
      msg.textContent = err.message;
      K.toast(err.message, "error");
    }
  });
  cancel.addEventListener("click", () => { if (jobId) K.cancelJob(jobId); });
});
