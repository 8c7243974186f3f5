/* "Restore drills" on the backups page: the VM's drill log (GET .../backups/drills) and
   a form running one (POST .../backups/drill, a job followed in place). */
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const card = document.getElementById("drills");
  if (!card || typeof K === "undefined") return;
  const vmApi = "/api/v1/vms/" + encodeURIComponent(card.dataset.vm);
  const rows = card.querySelector("#drill-rows");

  function cell(tr, text, label) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  async function load() {
    const r = await K.api("GET", vmApi + "/backups/drills?limit=20");
    rows.replaceChildren();
    for (const d of r.data) {
      const tr = document.createElement("tr");
      tr.dataset.drill = d.id;
      tr.dataset.ok = d.ok ? "1" : "0";
      cell(tr, new Date(d.started).toLocaleString(), "Started");
      cell(tr, d.backup_id || "–", "Point");
      const result = d.ok ? "passed" : "FAILED: " + (d.error || (d.verified ? "see the record" : "verification: " + d.problems.join("; ")));
      cell(tr, result, "Result").className = d.ok ? "ok" : "bad";
      cell(tr, d.agent_s === null ? "–" : d.agent_s.toFixed(1) + " s", "Agent after");
      cell(tr, d.check_command.length ? d.check_command.join(" ") + " → " + d.check_exit : "–", "Check");
      cell(tr, d.authentic ? "yes" : "NO", "Authentic");
      rows.appendChild(tr);
    }
    if (!r.data.length) {
      const tr = document.createElement("tr");
      cell(tr, "no drill yet", "Started").colSpan = 6;
      rows.appendChild(tr);
    }
  }

  const form = card.querySelector("#drill-form");
  if (form) {
    const status = card.querySelector("#drill-progress");
    const box = { status, msg: status.querySelector('[data-field="message"]'),
                  cancel: card.querySelector("#drill-cancel") };
    let jobId = null;
    box.cancel.addEventListener("click", () => jobId && K.cancelJob(jobId));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = new FormData(form);
      const check = (data.get("check") || "").trim();
      const body = { repo: card.dataset.repo, boot: data.get("boot") === "on",
                     check: check ? check.split(/\s+/) : [] };
      if ((data.get("at") || "").trim()) body.at = data.get("at").trim();
      status.hidden = false;
      status.dataset.state = "running";
      box.msg.textContent = "starting the drill…";
      try {
        await K.runJobIn(box, vmApi + "/backups/drill", body, "restore drill", (id) => { jobId = id; });
        K.toast("restore drill passed", "ok");
      } catch (err) {
        K.toast(err.message, "error");
      } finally {
        await load();
      }
    });
  }
  load().catch((err) => K.toast(err.message, "error"));
});
