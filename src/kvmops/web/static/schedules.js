/* kvmops web UI: the "Backup schedules" card of the VM page -- the VM's schedules (add,
   run now, remove) and a month calendar of their past runs coloured by result. Every
   change is a fetch to /api/v1/backup-schedules with the session's CSRF token, so the
   API's role checks, path policy, audit and refusals apply. */
"use strict";

(() => {
  const card = document.getElementById("backup-schedules");
  if (!card) return;
  const vm = card.dataset.vm;
  const base = "/api/v1/backup-schedules";
  const RANK = { failed: 4, retrying: 3, running: 2, queued: 2, skipped: 1, ok: 0 };
  let month = new Date();
  month = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth(), 1));
  let runs = [];

  const $ = (sel) => card.querySelector(sel);
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };
  const when = (iso) => (iso ? iso.replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC") : "–");

  function showError(message) {
    const box = $("[data-field=schedule-error]");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) K.toast(message, "error");
  }

  function keepText(s) {
    return ["last", "hourly", "daily", "weekly", "monthly", "yearly"]
      .filter((k) => s["keep_" + k]).map((k) => k + "=" + s["keep_" + k]).join(" ");
  }

  function renderSchedules(list) {
    const body = $("tbody[data-field=schedules]");
    body.replaceChildren();
    if (!list.length) {
      const tr = el("tr");
      const td = el("td", "No backup schedule for this VM.", "muted empty");
      td.colSpan = 7;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const s of list) {
      const tr = el("tr");
      tr.dataset.schedule = s.id;
      if (s.tag) tr.dataset.tag = s.tag;
      const last = s.last_run ? s.last_run.result + " " + when(s.last_run.due_at) : "–";
      tr.append(el("td", s.id), el("td", s.repo + (s.tag ? " (tag " + s.tag + ")" : "")), el("td", s.cron), el("td", keepText(s)),
                el("td", when(s.next_due)));
      const lastTd = el("td");
      lastTd.append(el("span", last, "badge run-" + (s.last_run ? s.last_run.result : "none")));
      tr.append(lastTd);
      const actions = el("td");
      if (card.dataset.operator === "1") {
        const run = el("button", "Run now");
        run.type = "button";
        run.dataset.scheduleAction = "run-now";
        run.dataset.schedule = s.id;
        const del = el("button", "Remove", "danger");
        del.type = "button";
        del.dataset.scheduleAction = "remove";
        del.dataset.schedule = s.id;
        actions.append(run, " ", del);
      }
      tr.append(actions);
      body.append(tr);
    }
  }

  function renderCalendar() {
    const grid = $("[data-field=calendar]");
    grid.replaceChildren();
    $("[data-field=month]").textContent = month.toLocaleString("en", { month: "long", year: "numeric", timeZone: "UTC" });
    for (const d of ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]) grid.append(el("div", d, "cal-head"));
    const first = month.getUTCDay() === 0 ? 6 : month.getUTCDay() - 1;
    for (let i = 0; i < first; i++) grid.append(el("div", "", "cal-pad"));
    const days = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + 1, 0)).getUTCDate();
    const prefix = month.toISOString().slice(0, 8);
    for (let day = 1; day <= days; day++) {
      const key = prefix + String(day).padStart(2, "0");
      const today = runs.filter((r) => r.due_at.slice(0, 10) === key);
      const cell = el("div", null, "cal-day");
      cell.dataset.day = key;
      cell.append(el("span", day, "cal-num"));
      if (today.length) {
        const worst = today.reduce((a, r) => ((RANK[r.result] ?? 0) > (RANK[a] ?? 0) ? r.result : a), "ok");
        cell.classList.add("run-" + worst);
        cell.dataset.result = worst;
        cell.append(el("span", today.length > 1 ? today.length + " runs" : today[0].result, "cal-count"));
        cell.title = today.map((r) => when(r.due_at) + " " + r.result +
          (r.backup_id ? " " + r.backup_id : "") + (r.error ? " – " + r.error : "")).join("\n");
      }
      grid.append(cell);
    }
  }

  async function load() {
    try {
      const [list, past] = await Promise.all([
        K.api("GET", base + "?covering=" + encodeURIComponent(vm)),
        K.api("GET", base + "/runs?limit=2000&vm=" + encodeURIComponent(vm))]);
      renderSchedules(list.data);
      runs = past.data;
      renderCalendar();
    } catch (err) {
      showError(err.message);
    }
  }

  async function change(button, run, done) {
    if (button) button.disabled = true;
    showError("");
    try {
      await run();
      K.toast(done, "ok");
      await load();
    } catch (err) {
      showError(err.message);
    } finally {
      if (button) button.disabled = false;
    }
  }

  card.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-schedule-action], button[data-month]");
    if (!b) return;
    if (b.dataset.month) {
      month = new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + Number(b.dataset.month), 1));
      renderCalendar();
      return;
    }
    const id = b.dataset.schedule;
    if (b.dataset.scheduleAction === "remove") {
      if (!confirm("Remove backup schedule " + id + "? Its backups stay in the repository.")) return;
      change(b, () => K.api("DELETE", base + "/" + id), "schedule " + id + " removed");
    } else {
      change(b, () => K.api("POST", base + "/" + id + "/run-now"), "schedule " + id + " started");
    }
  });

  const form = $("form.schedule-add");
  if (form) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const num = (name) => {
        const v = (f.get(name) || "").toString().trim();
        return v ? Number(v) : null;
      };
      const body = { vm, repo: (f.get("repo") || "").toString().trim(),
                     cron: (f.get("cron") || "").toString().trim(),
                     keep_last: num("keep_last"), keep_daily: num("keep_daily"),
                     keep_weekly: num("keep_weekly"), keep_monthly: num("keep_monthly"),
                     full_every: num("full_every") };
      change(form.querySelector("button[type=submit]"), () => K.api("POST", base, body),
             "backup schedule added").then(() => { if (!$("[data-field=schedule-error]").textContent) form.reset(); });
    });
  }
  load();
})();
