/* kvmops web UI: the storage pools page. Loaded after app.js (both deferred), it adds
   its page initialiser to PAGES; every change is a fetch to /api/v1/pools with the
   session's CSRF token, so the API's role checks, path policy, audit and refusals apply. */
"use strict";

function poolError(message) {
  const box = document.getElementById("pool-error");
  if (box) {
    box.textContent = message;
    box.hidden = !message;
  }
  if (message) K.toast(message, "error");
}

async function poolChange(button, run, done) {
  button.disabled = true;
  poolError("");
  try {
    await run();
    K.toast(done, "ok");
    location.reload();
  } catch (err) {
    poolError(err.message);
    button.disabled = false;
  }
}

PAGES.pools = () => {
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-pool-action], button[data-volume-action]");
    if (!b) return;
    const pool = b.dataset.pool;
    const url = "/api/v1/pools/" + encodeURIComponent(pool);
    if (b.dataset.volumeAction === "delete") {
      const vol = b.dataset.volume;
      if (!confirm("Delete volume '" + vol + "' of pool '" + pool + "'? Its data is lost.")) return;
      poolChange(b, () => K.api("DELETE", url + "/volumes/" + encodeURIComponent(vol)),
                 "volume '" + vol + "' deleted");
      return;
    }
    const action = b.dataset.poolAction;
    if (action === "delete" && !confirm("Delete pool '" + pool + "'? Its data stays in place.")) return;
    poolChange(b, () => (action === "delete" ? K.api("DELETE", url) : K.api("POST", url + "/" + action)),
               "pool '" + pool + "': " + action + " done");
  });
  for (const form of document.querySelectorAll("form.volume-create")) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const body = { name: (f.get("name") || "").toString().trim(),
                     size: (f.get("size") || "").toString().trim(),
                     format: (f.get("format") || "").toString() };
      const url = "/api/v1/pools/" + encodeURIComponent(form.dataset.pool) + "/volumes";
      poolChange(form.querySelector("button[type=submit]"), () => K.api("POST", url, body),
                 "volume '" + body.name + "' created");
    });
  }
  for (const form of document.querySelectorAll("form.volume-upload")) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      volumeUpload(form);
    });
  }
  const create = document.getElementById("pool-create");
  if (!create) return;  /* only an admin's page has the pool form */
  create.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(create);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { name: get("name"), type: get("type"), build: f.get("build") !== null,
                   autostart: f.get("autostart") !== null };
    for (const k of ["target", "device", "host", "target_iqn", "initiator_iqn", "source_dir",
                     "source_name"]) if (get(k)) body[k] = get(k);
    if (get("port")) body.port = Number(get("port"));
    poolChange(create.querySelector("button[type=submit]"), () => K.api("POST", "/api/v1/pools", body),
               "pool '" + body.name + "' created");
  });
};

/* Upload a file into a volume: PUT .../data with the file as the body (the browser
   streams it; the server passes it to libvirt as it arrives), the CSRF token as every
   change, and the bar fed by the upload's own progress events. */
function volumeUpload(form) {
  const file = form.querySelector("input[type=file]").files[0];
  if (!file) return;
  const pool = form.dataset.pool, vol = form.dataset.volume;
  const fmt = form.querySelector("select[name=format]").value;
  const button = form.querySelector("button[type=submit]");
  const box = form.querySelector(".job-progress");
  const bar = box.querySelector("progress"), pct = box.querySelector(".pct");
  if (file.size > Number(form.dataset.capacity) && fmt === "raw") {
    poolError("the file is " + K.fmtBytes(file.size) + "; volume '" + vol + "' holds " +
              K.fmtBytes(Number(form.dataset.capacity)) + ": resize the volume first");
    return;
  }
  poolError("");
  button.disabled = true;
  box.hidden = false;
  bar.value = 0;
  pct.textContent = "0%";
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", "/api/v1/pools/" + encodeURIComponent(pool) + "/volumes/" +
           encodeURIComponent(vol) + "/data?format=" + encodeURIComponent(fmt));
  xhr.setRequestHeader("X-CSRF-Token", K.csrf);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    const p = Math.floor((100 * e.loaded) / e.total);
    bar.value = p;
    pct.textContent = p + "%";
  });
  const failed = (message) => {
    poolError(message);
    button.disabled = false;
    box.hidden = true;
  };
  xhr.addEventListener("load", () => {
    if (xhr.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
      return;
    }
    if (xhr.status >= 200 && xhr.status < 300) {
      bar.value = 100;
      pct.textContent = "100%";
      form.dataset.uploaded = "yes";
      K.toast(file.name + " uploaded into volume '" + vol + "'", "ok");
      location.reload();
      return;
    }
    let message = xhr.status + " " + xhr.statusText;
    try { message = JSON.parse(xhr.responseText).error || message; } catch (e) { /* text */ }
    failed(message);
  });
  xhr.addEventListener("error", () => failed("the upload failed: the server cannot be reached"));
  xhr.send(file);
}
