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

/* The admin's "Bridge over an uplink" form: a dry run shows the plan; Apply starts the
   job (POST /api/v1/host/bridges), whose messages are its steps, and says whether the
   bridge was kept or rolled back. */
function wireBridgeForm() {
  const form = document.getElementById("bridge-create");
  if (!form) return;  /* only an admin's page has it */
  const select = form.querySelector("select[name=uplink]");
  const outcome = document.getElementById("bridge-outcome");
  const status = document.getElementById("bridge-status");
  const steps = document.getElementById("bridge-steps");
  const buttons = form.querySelectorAll("button");
  const busy = (on) => buttons.forEach((b) => { b.disabled = on; });
  const lines = [];
  function say(text, kind) {
    outcome.hidden = false;
    status.textContent = text;
    status.className = kind === "error" ? "error-text" : "";
    status.dataset.outcome = kind || "";
  }
  function show(more, reset) {
    if (reset) lines.length = 0;
    for (const l of more) if (l) lines.push(l);
    steps.textContent = lines.join("\n");
    outcome.hidden = false;
  }
  function planLines(p) {
    const out = (p.notes || []).map((n) => "note: " + n);
    out.push(p.verify_target ? "check after the change: " + p.verify_target + " (" +
             p.verify_source + ") must answer" : "nothing to check after the change");
    out.push("plan (" + p.plan.length + " steps):");
    return out.concat(p.plan.map((s) => "  " + s));
  }
  function body(dryRun) {
    const f = new FormData(form);
    const get = (k) => (f.get(k) || "").toString().trim();
    const b = { name: get("name"), uplink: get("uplink"), define: f.get("define") !== null,
                dry_run: dryRun };
    if (get("verify")) b.verify = get("verify");
    if (get("verify_timeout")) b.verify_timeout = Number(get("verify_timeout"));
    return b;
  }
  async function loadInterfaces() {
    try {
      const found = (await K.api("GET", "/api/v1/host/interfaces")).data;
      select.textContent = "";
      for (const i of found) {
        const o = document.createElement("option");
        o.value = i.name;
        o.textContent = i.name + " (" + (i.addresses.join(", ") || "no address") + ")" +
          (i.uplink_ok ? "" : ": " + i.why_not);
        o.disabled = !i.uplink_ok;
        select.appendChild(o);
      }
      const first = found.find((i) => i.uplink_ok);
      if (first) select.value = first.name;
    } catch (err) { netError(err.message); }
  }
  async function loadRollbacks() {
    const box = document.getElementById("bridge-rollbacks");
    const list = document.getElementById("bridge-rollback-list");
    try {
      const records = (await K.api("GET", "/api/v1/host/bridges/rollbacks")).data;
      list.textContent = "";
      for (const r of records) {
        const li = document.createElement("li");
        li.textContent = r.bridge + " (" + (r.kind === "unbridge" ? "removal" : "over " + r.uplink) + ") ";
        const b = document.createElement("button");
        b.textContent = "Roll back";
        b.dataset.bridgeRollback = r.bridge;
        b.addEventListener("click", async () => {
          b.disabled = true;
          try {
            await K.api("POST", "/api/v1/host/bridges/" + encodeURIComponent(r.bridge) + "/rollback");
            K.toast("bridge '" + r.bridge + "': rolled back", "ok");
          } catch (err) { netError(err.message); }
          loadRollbacks();
        });
        li.appendChild(b);
        list.appendChild(li);
      }
      box.hidden = records.length === 0;
    } catch (err) { netError(err.message); }
  }
  document.getElementById("bridge-dry-run").addEventListener("click", async () => {
    if (!form.reportValidity()) return;
    busy(true);
    netError("");
    try {
      const plan = (await K.api("POST", "/api/v1/host/bridges", body(true))).data;
      say("dry run: nothing changed (bridge '" + plan.bridge + "' over '" + plan.uplink + "')");
      show(planLines(plan), true);
    } catch (err) {
      say(err.message, "error");
      show([], true);
    }
    busy(false);
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const b = body(false);
    if (!confirm("Move the addresses and routes of '" + b.uplink + "' onto bridge '" + b.name +
                 "'? It is rolled back when the check fails.")) return;
    busy(true);
    netError("");
    try {
      await K.connected();
      const r = (await K.api("POST", "/api/v1/host/bridges", b)).data;
      say("applying (job " + r.job_id + ")…");
      show(planLines(r), true);
      show(["applying…"]);
      const job = await K.watchJob(r.job_id, (_pct, msg) => {
        if (msg && !["queued", "running", "succeeded", "failed"].includes(msg) &&
            !planLines(r).includes(msg) && !msg.startsWith("  ")) show([msg]);
      });
      if (job.state === "succeeded") {
        const res = job.result;
        show((res.log || []).concat([job.message || ""]), true);
        say("kept: bridge '" + res.bridge + "' over '" + res.uplink + "'" +
            (res.verified && res.verify_target ? ", " + res.verify_target + " answered through it" : "") +
            (res.defined ? "; libvirt network '" + res.name + "' defined" : ""), "ok");
      } else {
        say(job.error || ("job " + job.state), "error");
      }
    } catch (err) {
      say(err.message, "error");
    }
    busy(false);
    loadRollbacks();
  });
  loadInterfaces();
  loadRollbacks();
}

PAGES.networks = () => {
  wireNetActions(null);
  wireBridgeForm();
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
