/* kvmops web UI: the networks pages. Loaded after app.js (both deferred), it adds
   its page initialisers to PAGES; every change is a fetch to /api/v1/networks with
   the session's CSRF token, so the API's role checks, audit and refusals apply. */
"use strict";

function netError(message) {
  const box = document.getElementById("net-error");
  if (box) {
    box.textContent = message;
    box.hidden = !message;
  }
  if (message) K.toast(message, "error");
}

function wireNetActions(afterDelete) {
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-net-action]");
    if (!b) return;
    const name = b.dataset.net;
    const url = "/api/v1/networks/" + encodeURIComponent(name);
    const action = b.dataset.netAction;
    if (action === "delete" && !confirm("Delete network '" + name + "'?")) return;
    b.disabled = true;
    netError("");
    try {
      if (action === "delete") await K.api("DELETE", url);
      else if (action === "start") await K.api("POST", url + "/start");
      else if (action === "stop") await K.api("POST", url + "/stop");
      else await K.api("POST", url + "/autostart?enabled=" + (action === "autostart-on"));
      K.toast("network '" + name + "': " + action + " done", "ok");
      if (action === "delete" && afterDelete) location.href = afterDelete;
      else location.reload();
    } catch (err) {
      netError(err.message);
      b.disabled = false;
    }
  });
}

PAGES.networks = () => {
  wireNetActions(null);
  const form = document.getElementById("net-create");
  if (!form) return;  /* a viewer's page has no form */
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { name: get("name"), mode: get("mode"), autostart: f.get("autostart") !== null };
    for (const k of ["bridge", "ipv4", "dhcp", "ipv6", "ipv6_mode"]) if (get(k)) body[k] = get(k);
    if (f.get("create_bridge") !== null) body.create_bridge = true;  /* ovs only: said by the API */
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    netError("");
    try {
      await K.api("POST", "/api/v1/networks", body);
      K.toast("network '" + body.name + "' created", "ok");
      location.reload();
    } catch (err) {
      netError(err.message);
      button.disabled = false;
    }
  });
};

PAGES.networks_detail = () => { wireNetActions("/networks"); };
