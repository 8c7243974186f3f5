/* "Change the repository key" on the backups page (admins, encrypted repositories):
   POST /api/v1/backups/repo/rekey; the old key no longer opens the repository after. */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("rekey");
  if (!box || typeof K === "undefined") return;
  const form = box.querySelector("#rekey-form");
  const out = box.querySelector("#rekey-result");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { repo: box.dataset.repo };
    for (const k of ["key_file", "passphrase", "new_key_file", "new_passphrase"]) {
      const v = (f.get(k) || "").toString();
      if (v) body[k] = v;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const r = await K.api("POST", "/api/v1/backups/repo/rekey", body);
      out.hidden = false;
      out.dataset.keyId = r.data.key_id || "";
      out.textContent = "The repository now opens with the new key only (key id " + r.data.key_id + ").";
      form.reset();
      K.toast("repository key changed", "ok");
    } catch (err) {
      out.hidden = false;
      out.textContent = err.message;
      K.toast(err.message, "error");
    } finally { button.disabled = false; }
  });
});
