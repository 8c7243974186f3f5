/* "Browse files…" on the backups page: list a backup point's files (GET .../files, which
   mounts the point read-only on the server for the call), walk into directories, download a
   file (GET .../file) or restore it into the running guest (POST .../restore-file, a job). */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const dlg = document.getElementById("files-dialog");
  const box = document.getElementById("backup-points");
  if (!dlg || !box || typeof K === "undefined") return;
  const vm = box.dataset.vm;
  const repo = box.dataset.repo;
  const vmApi = "/api/v1/vms/" + encodeURIComponent(vm);
  const rows = dlg.querySelector("#files-rows");
  const pathEl = dlg.querySelector('[data-field="path"]');
  const status = dlg.querySelector(".job-progress");
  const msg = status.querySelector('[data-field="message"]');
  const cancel = dlg.querySelector("#files-cancel-job");
  let point = null;
  let path = "/";
  let jobId = null;

  const join = (dir, name) => (dir.endsWith("/") ? dir : dir + "/") + name;
  const parent = (p) => p.replace(/\/[^/]+\/?$/, "") || "/";
  function pointApi(tail, params) {
    const q = new URLSearchParams({ repo, ...params });
    const disk = dlg.querySelector('[name="disk"]').value.trim();
    const part = dlg.querySelector('[name="partition"]').value.trim();
    if (disk) q.set("disk", disk);
    if (part) q.set("partition", part);
    return vmApi + "/backups/" + encodeURIComponent(point) + "/" + tail + "?" + q.toString();
  }
  function cell(tr, text, label) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  function button(text, data) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    Object.assign(b.dataset, data);
    return b;
  }

  async function show(dir) {
    rows.replaceChildren();
    pathEl.textContent = dir;
    msg.textContent = "mounting the backup point…";
    status.hidden = false;
    status.dataset.state = "running";
    try {
      const r = await K.api("GET", pointApi("files", { path: dir }));
      path = dir;
      status.hidden = true;
      for (const e of r.data.entries) {
        const tr = document.createElement("tr");
        tr.dataset.name = e.name;
        tr.dataset.type = e.type;
        const full = join(dir, e.name);
        const name = e.type === "dir" ? button(e.name + "/", { open: full }) : e.name + (e.target ? " → " + e.target : "");
        cell(tr, name, "Name");
        cell(tr, e.type, "Type");
        cell(tr, e.type === "file" ? K.fmtBytes(e.size) : "–", "Size");
        cell(tr, e.mode, "Mode");
        cell(tr, e.mtime.replace("T", " ").slice(0, 19), "Modified");
        const actions = cell(tr, "", "");
        if (e.type === "file") {
          const a = document.createElement("a");
          a.href = pointApi("file", { path: full });
          a.textContent = "Download";
          a.className = "button";
          a.setAttribute("download", e.name);
          actions.appendChild(a);
          actions.appendChild(button("Restore to guest", { restoreFile: full }));
        }
        rows.appendChild(tr);
      }
    } catch (err) {
      status.dataset.state = "failed";
      msg.textContent = err.message;
    }
  }

  async function restore(file, force) {
    status.hidden = false;
    status.dataset.state = "running";
    status.querySelector("progress").value = 0;
    msg.textContent = "restoring " + file + " into the guest…";
    const body = { repo, path: file, into_guest: true, force };
    const disk = dlg.querySelector('[name="disk"]').value.trim();
    const part = dlg.querySelector('[name="partition"]').value.trim();
    if (disk) body.disk = disk;
    if (part) body.partition = parseInt(part, 10);
    try {
      const job = await K.runJobIn({ status, msg, cancel },
        vmApi + "/backups/" + encodeURIComponent(point) + "/restore-file", body,
        "restore of " + file, (id) => { jobId = id; });
      status.dataset.state = "succeeded";
      msg.textContent = "restored " + file + " into the guest (sha256 " + (job.result.sha256 || "").slice(0, 16) + "…)";
      K.toast("restored " + file + " into VM '" + vm + "'", "ok");
    } catch (err) {
      if (!force && /already exists/.test(err.message) &&
          confirm(file + " exists in the guest. Replace it with the backup's copy?")) {
        return restore(file, true);
      }
      status.dataset.state = "failed";
      msg.textContent = err.message;
      K.toast(err.message, "error");
    }
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-browse]");
    if (!b) return;
    point = b.dataset.browse;
    dlg.querySelector('[data-field="point"]').textContent = point;
    dlg.showModal();
    show("/");
  });
  dlg.addEventListener("click", (ev) => {
    const open = ev.target.closest("button[data-open]");
    if (open) { show(open.dataset.open); return; }
    const r = ev.target.closest("button[data-restore-file]");
    if (r) restore(r.dataset.restoreFile, false);
  });
  dlg.querySelector("#files-up").addEventListener("click", () => show(parent(path)));
  dlg.querySelector("#files-reload").addEventListener("click", () => show(path));
  cancel.addEventListener("click", () => { if (jobId) K.cancelJob(jobId); });
});
