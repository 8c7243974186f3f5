/* kvmops web UI: the host page's doctor section. "Run now" is POST
   /api/v1/hosts/{name}/doctor (operators and admins; on this machine it starts the probe
   guests, 10-40 s), then the page shows the new last report. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("doctor-run");
  if (!button) return;
  const state = document.getElementById("doctor-state");
  button.addEventListener("click", async () => {
    button.disabled = true;
    state.textContent = "running the checks…";
    try {
      const { data } = await K.api("POST", "/api/v1/hosts/" + encodeURIComponent(button.dataset.host) + "/doctor");
      K.toast(data.checks.length + " checks: " + data.failed + " failed, " + data.warnings + " warning(s)",
        data.ok ? "ok" : "error");
      location.reload();
    } catch (err) {
      state.textContent = err.message;
      K.toast(err.message, "error");
      button.disabled = false;
    }
  });
});
