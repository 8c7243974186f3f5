/* kvmops web UI: the Hosts page. Adding and removing are fetches to /api/v1/hosts with
   the session's CSRF token, so the API's role checks (admin), audit and refusals apply. */
"use strict";

function hostsError(message) {
  const box = document.getElementById("hosts-error");
  if (box) {
    box.textContent = message;
    box.hidden = !message;
  }
  if (message) K.toast(message, "error");
}

async function hostsCall(button, method, url, body, done) {
  if (button) button.disabled = true;
  hostsError("");
  try {
    await K.api(method, url, body);
    K.toast(done, "ok");
    location.reload();
  } catch (err) {
    hostsError(err.message);
    if (button) button.disabled = false;
  }
}

PAGES.hosts = () => {
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-host-remove]");
    if (!b) return;
    const name = b.dataset.hostRemove;
    if (!confirm("Remove host '" + name + "'? Its VMs and libvirt are not touched.")) return;
    hostsCall(b, "DELETE", "/api/v1/hosts/" + encodeURIComponent(name), undefined,
              "host '" + name + "' removed");
  });
  const form = document.getElementById("hosts-add");
  if (!form) return;  /* only admins add hosts */
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const name = (f.get("name") || "").toString().trim();
    const uri = (f.get("uri") || "").toString().trim();
    hostsCall(form.querySelector("button[type=submit]"), "POST", "/api/v1/hosts",
              { name: name, uri: uri, check: f.get("check") === "on" },
              "host '" + name + "' added");
  });
};
