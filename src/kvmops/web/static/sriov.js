/* kvmops web UI: the SR-IOV page. Every change is a fetch to /api/v1/sriov with the
   session's CSRF token, so the API's role checks (admin), audit and refusals apply. */
"use strict";

function sriovError(message) {
  const box = document.getElementById("sriov-error");
  if (box) {
    box.textContent = message;
    box.hidden = !message;
  }
  if (message) K.toast(message, "error");
}

async function sriovCall(button, method, url, body, done) {
  if (button) button.disabled = true;
  sriovError("");
  try {
    await K.api(method, url, body);
    K.toast(done, "ok");
    location.reload();
  } catch (err) {
    sriovError(err.message);
    if (button) button.disabled = false;
  }
}

PAGES.sriov = () => {
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-sriov-delete]");
    if (!b) return;
    const name = b.dataset.sriovDelete;
    if (!confirm("Delete SR-IOV pool '" + name + "'?")) return;
    sriovCall(b, "DELETE", "/api/v1/sriov/pools/" + encodeURIComponent(name), undefined,
              "pool '" + name + "' deleted");
  });
  document.querySelectorAll("form[data-sriov-vfs]").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const pf = form.dataset.sriovVfs;
      const count = Number(new FormData(form).get("count"));
      sriovCall(form.querySelector("button"), "PUT",
                "/api/v1/sriov/pfs/" + encodeURIComponent(pf) + "/vfs", { count: count },
                "PF '" + pf + "': " + count + " VFs");
    });
  });
  const form = document.getElementById("sriov-create");
  if (!form) return;  /* only admins create pools */
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const name = (f.get("name") || "").toString().trim();
    const pfs = (f.get("pfs") || "").toString().split(",").map((s) => s.trim()).filter(Boolean);
    sriovCall(form.querySelector("button[type=submit]"), "POST", "/api/v1/sriov/pools",
              { name: name, pfs: pfs }, "pool '" + name + "' created");
  });
};
