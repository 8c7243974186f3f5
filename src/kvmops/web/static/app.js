/* kvmops web UI: page behaviour. Every state change is a fetch to the REST API
   with the session's CSRF token; live updates come from the SSE stream
   /api/v1/events (libvirt domain events and job progress). */
"use strict";

const K = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  /* A VM page of a VM on another host (body data-host): its VM calls name that host. */
  function onHost(url, host) {
    if (!host || host === "local" || !/^\/api\/v1\/(ui\/)?vms\/[^?]/.test(url) || /[?&]host=/.test(url)) return url;
    return url + (url.includes("?") ? "&" : "?") + "host=" + encodeURIComponent(host);
  }
  async function api(method, url, body) {
    url = onHost(url, document.body.dataset.host);
    const opts = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, opts);
    } catch (err) {
      throw new Error("the server cannot be reached");
    }
    if (resp.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("log in again");
    }
    const type = resp.headers.get("content-type") || "";
    const data = type.includes("json") ? await resp.json() : await resp.text();
    if (!resp.ok) {
      throw new Error((data && data.error) || resp.status + " " + resp.statusText);
    }
    return { status: resp.status, data };
  }

  function toast(message, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast " + (kind || "info");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = message;
    box.appendChild(el);
    setTimeout(() => el.remove(), kind === "error" ? 9000 : 4000);
  }

  /* One EventSource per page; listeners by kind ("domain", "job"). Job events
     are kept per job id so a watcher registered late still sees them. */
  const listeners = { domain: [], job: [], open: [], error: [] };
  const jobEvents = new Map();
  let source = null;
  function events() {
    if (source) return source;
    source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => listeners.open.forEach((f) => f()));
    source.addEventListener("error", () => listeners.error.forEach((f) => f()));
    for (const kind of ["domain", "job"]) {
      source.addEventListener(kind, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        if (kind === "job") {
          const seen = jobEvents.get(data.id) || [];
          seen.push(data);
          jobEvents.set(data.id, seen);
        }
        listeners[kind].forEach((f) => f(data));
      });
    }
    return source;
  }
  function on(kind, fn) { listeners[kind].push(fn); events(); }
  function connected() {
    return new Promise((resolve) => {
      const es = events();
      if (es.readyState === EventSource.OPEN) return resolve();
      on("open", resolve);
      setTimeout(resolve, 3000);  // go on without: the final job state is fetched anyway
    });
  }

  const FINAL = ["succeeded", "failed", "cancelled", "interrupted"];
  /* Follow a job: onProgress(percent|null, message), resolves with the final job. */
  function watchJob(id, onProgress) {
    return new Promise((resolve) => {
      let done = false;
      const handle = (ev) => {
        if (done || ev.id !== id) return;
        const msg = ev.message || ev.error || "";
        if (ev.percent !== undefined && ev.percent !== null) onProgress(ev.percent, msg);
        else if (msg || ev.state) onProgress(null, msg || ev.state);
        if (FINAL.includes(ev.state)) finish();
      };
      const finish = async () => {
        if (done) return;
        done = true;
        try { resolve((await api("GET", "/api/v1/jobs/" + id)).data); }
        catch (e) { resolve({ id, state: "failed", error: e.message }); }
      };
      on("job", handle);
      (jobEvents.get(id) || []).forEach(handle);
      // the stream may have dropped: look at the job itself now and then
      const check = async () => {
        if (done) return;
        try {
          const job = (await api("GET", "/api/v1/jobs/" + id)).data;
          if (FINAL.includes(job.state)) return finish();
        } catch (e) { /* next time */ }
        setTimeout(check, 5000);
      };
      setTimeout(check, 5000);
    });
  }

  /* Ask the server to cancel a job (a failure is a toast: the job goes on). */
  async function cancelJob(id) {
    try { await api("POST", "/api/v1/jobs/" + encodeURIComponent(id) + "/cancel"); }
    catch (err) { toast(err.message, "error"); }
  }

  /* POST a job and follow it in a dialog's status box ({status, msg, cancel}): its progress
     bar and message, the cancel button shown while it runs; started(id) learns the job's id
     (for that button). The finished job, or an Error "<what> <state>: <error>". */
  async function runJobIn(box, path, body, what, started) {
    await connected();
    const r = await api("POST", path, body);
    started(r.data.job_id);
    box.cancel.hidden = false;
    const job = await watchJob(r.data.job_id, (pct, m) => {
      if (pct !== null) box.status.querySelector("progress").value = pct;
      if (m) box.msg.textContent = m;
    });
    box.status.dataset.state = job.state;
    box.cancel.hidden = true;
    if (job.state !== "succeeded") throw new Error(what + " " + job.state + ": " + (job.error || ""));
    box.status.querySelector("progress").value = 100;
    return job;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
  }

  return { api, toast, on, connected, watchJob, cancelJob, runJobIn, fmtBytes, csrf, onHost };
})();

/* ------------------------------------------------------------ VM states */
const EVENT_STATE = {
  started: "running", resumed: "running", suspended: "paused", stopped: "shut off",
  shutdown: "in shutdown", crashed: "crashed", pmsuspended: "pmsuspended",
};
function stateClass(state) { return "state state-" + state.replace(/ /g, "-"); }

function applyState(container, state) {
  container.querySelectorAll('[data-field="state"]').forEach((el) => {
    if (el.closest("[data-job]")) return;
    el.textContent = state;
    el.className = stateClass(state);
  });
  container.querySelectorAll(".actions[data-actions-for]").forEach((bar) => applyActions(bar, state));
}
function applyActions(bar, state) {
  bar.dataset.state = state;
  bar.querySelectorAll("button[data-action]").forEach((b) => {
    b.hidden = !b.dataset.when.split(",").includes(state);
    b.disabled = false;
  });
}

const ACTIONS = {
  start: ["start", {}], "start-paused": ["start", { paused: true }],
  shutdown: ["shutdown", { wait: false }], "shutdown-agent": ["shutdown", { wait: false, mode: "agent" }],
  reboot: ["reboot", {}], suspend: ["suspend", null],
  resume: ["resume", null], destroy: ["destroy", null],
};
/* A shutdown request is only a request: say so when the VM is still on after a while. */
function watchShutdown(name, how) {
  const seconds = parseInt(document.body.dataset.shutdownWatch || "60", 10);
  let stopped = false;
  K.on("domain", (ev) => { if (ev.vm === name && ev.event === "stopped") stopped = true; });
  setTimeout(() => {
    if (!stopped) {
      K.toast("VM '" + name + "' is still running " + seconds + " s after the " + how +
              " shutdown request: the guest ignored it. Use Force off" +
              (how === "ACPI" ? ", or Shut down (agent)" : "") + ".", "error");
    }
  }, seconds * 1000);
}
function wireActions(root) {
  root.querySelectorAll(".actions[data-actions-for]").forEach((bar) => applyActions(bar, bar.dataset.state));
  root.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const bar = b.closest("[data-actions-for]");
    const name = bar.dataset.actionsFor;
    const [verb, body] = ACTIONS[b.dataset.action];
    if (verb === "destroy" && !confirm("Force VM '" + name + "' off? Unsaved guest data is lost.")) return;
    b.disabled = true;
    try {
      const r = await K.api("POST", K.onHost("/api/v1/vms/" + encodeURIComponent(name) + "/" + verb,
                                             bar.dataset.host), body === null ? undefined : body);
      K.toast(r.data.message || verb + " done", "ok");
      if (verb === "shutdown") watchShutdown(name, body.mode === "agent" ? "agent" : "ACPI");
    } catch (err) {
      K.toast(err.message, "error");
    } finally {
      b.disabled = false;
    }
  });
}

function liveStates(onUnknown) {
  const status = document.getElementById("live-status");
  K.on("open", () => { if (status) status.textContent = "live"; });
  K.on("error", () => { if (status) status.textContent = "reconnecting…"; });
  K.on("domain", (ev) => {
    const state = EVENT_STATE[ev.event];
    /* an event names its host: a VM of the same name on another host is not this one */
    const pageHost = document.body.dataset.host || "local";
    const sameHost = (el) => !ev.host || (el.closest("[data-host]") ? el.closest("[data-host]").dataset.host : pageHost) === ev.host;
    const targets = [...document.querySelectorAll('[data-vm="' + CSS.escape(ev.vm) + '"], [data-vm-page="' + CSS.escape(ev.vm) + '"]')].filter(sameHost);
    if (state) {
      targets.forEach((el) => applyState(el, state));
      [...document.querySelectorAll('[data-vm-state="' + CSS.escape(ev.vm) + '"]')].filter(sameHost).forEach((el) => {
        el.textContent = state; el.className = stateClass(state);
      });
      [...document.querySelectorAll('.actions[data-actions-for="' + CSS.escape(ev.vm) + '"]')].filter(sameHost).forEach((bar) => applyActions(bar, state));
    }
    if (onUnknown && (ev.event === "defined" || ev.event === "undefined")) onUnknown(ev);
  });
}

/* ------------------------------------------------------------ pages */
const PAGES = {};

PAGES.vms = () => {
  const tbody = document.getElementById("vm-rows");
  wireActions(tbody);
  const hostFilter = document.getElementById("host-filter");
  if (hostFilter) hostFilter.addEventListener("change", () => hostFilter.form.submit());
  const filter = document.getElementById("vm-filter");
  filter.addEventListener("input", () => {
    const q = filter.value.trim().toLowerCase();
    tbody.querySelectorAll("tr[data-vm]").forEach((tr) => { tr.hidden = q && !tr.dataset.vm.toLowerCase().includes(q); });
  });
  liveStates(async (ev) => {
    const row = tbody.querySelector('tr[data-vm="' + CSS.escape(ev.vm) + '"]');
    if (ev.event === "undefined") { if (row) row.remove(); }
    else if (!row) {
      // a new VM: render the page's list again (one request, triggered by the event)
      try {
        const html = (await (await fetch("/vms" + location.search, { credentials: "same-origin" })).text());
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.getElementById("vm-rows");
        if (fresh) { tbody.innerHTML = fresh.innerHTML; wireActionsState(tbody); }
      } catch (e) { /* keep what we show */ }
    }
    document.getElementById("vm-total").textContent = tbody.querySelectorAll("tr[data-vm]").length;
  });
};
PAGES.host_page = () => {
  const tbody = document.getElementById("vm-rows");
  if (tbody) wireActions(tbody);
  liveStates(null);
};
function wireActionsState(root) {
  root.querySelectorAll(".actions[data-actions-for]").forEach((bar) => applyActions(bar, bar.dataset.state));
}

function vmHeader() {
  const head = document.querySelector("[data-vm-page]");
  if (head) wireActions(head);
  liveStates(null);
}

function jobRow(job) {
  const tr = document.createElement("tr");
  tr.dataset.job = job.id;
  tr.innerHTML = '<td data-label="Job"><code></code></td><td data-label="Target"></td>' +
    '<td data-label="State"><span class="badge" data-field="state"></span></td>' +
    '<td data-label="Progress"><div class="job-cell"><progress max="100" value="0"></progress> <small data-field="message"></small></div></td>' +
    '<td data-label="By"></td><td data-label="Started"></td>';
  tr.querySelector("code").textContent = job.kind || "";
  tr.children[1].textContent = job.target || "";
  return tr;
}

PAGES.dashboard = () => {
  const active = document.getElementById("active-jobs");
  const count = () => {
    const n = active.querySelectorAll('tr[data-job] [data-field="state"]');
    const live = [...n].filter((s) => s.textContent === "queued" || s.textContent === "running").length;
    const el = document.querySelector('[data-field="active"]');
    if (el) el.textContent = live;
  };
  /* Jobs the server's own runner does not announce (a kvmops command's backup) are
     read from the job store every few seconds. */
  (function poll() {
    setTimeout(async () => {
      if (!document.hidden) {
        try {
          const jobs = (await K.api("GET", "/api/v1/jobs?limit=20")).data;
          jobs.forEach((j) => {
            const known = active.querySelector('tr[data-job="' + CSS.escape(j.id) + '"]');
            const live = j.state === "queued" || j.state === "running";
            if (!known && !live) return;
            update({ id: j.id, kind: j.kind, target: j.target, state: j.state, by: j.created_by,
                     percent: j.progress ? j.progress.percent : null, message: j.message, error: j.error });
          });
        } catch (e) { /* next time */ }
      }
      poll();
    }, 5000);
  })();
  K.on("job", (ev) => update(ev));
  function update(ev) {
    let row = active.querySelector('tr[data-job="' + CSS.escape(ev.id) + '"]');
    if (!row && (ev.state === "queued" || ev.state === "running")) {
      row = jobRow(ev);
      if (ev.by) row.children[4].textContent = ev.by;
      active.prepend(row);
      const none = document.getElementById("no-jobs");
      if (none) none.hidden = true;
    }
    if (!row) return;
    if (ev.state) {
      const s = row.querySelector('[data-field="state"]');
      s.textContent = ev.state; s.className = "badge job-" + ev.state;
    }
    if (typeof ev.percent === "number") row.querySelector("progress").value = ev.percent;
    if (ev.state === "succeeded") row.querySelector("progress").value = 100;
    if (ev.message || ev.error) row.querySelector('[data-field="message"]').textContent = ev.message || ev.error;
    if (["succeeded", "failed", "cancelled", "interrupted"].includes(ev.state) && !row.dataset.leaving) {
      row.dataset.leaving = "1";
      setTimeout(() => { row.remove(); count(); }, 5000);
    }
    count();
  }
  K.on("domain", async (ev) => {
    if (!["started", "stopped", "suspended", "resumed", "defined", "undefined", "crashed"].includes(ev.event)) return;
    try {
      const vms = (await K.api("GET", "/api/v1/vms")).data;
      const counts = {};
      vms.forEach((vm) => { counts[vm.state] = (counts[vm.state] || 0) + 1; });
      const box = document.getElementById("vm-counts");
      box.querySelector('[data-field="total"]').textContent = vms.length;
      const ul = box.querySelector("ul.counts");
      ul.innerHTML = "";
      Object.keys(counts).sort().forEach((st) => {
        const li = document.createElement("li");
        li.innerHTML = '<span></span> <strong></strong>';
        li.firstChild.textContent = st; li.firstChild.className = stateClass(st);
        li.lastChild.textContent = counts[st];
        ul.appendChild(li);
      });
    } catch (e) { /* keep */ }
  });
};

PAGES.vm = () => {
  vmHeader();
  const name = document.querySelector("[data-vm-page]").dataset.vmPage;
  const vmUrl = "/api/v1/ui/vms/" + encodeURIComponent(name);
  // guest details (agent answers may take a moment: after the page is shown)
  const guest = document.getElementById("guest");
  async function loadGuest() {
    try {
      const g = (await K.api("GET", vmUrl + "/guest")).data;
      const os = guest.querySelector('[data-field="os"]');
      const host = guest.querySelector('[data-field="hostname"]');
      os.classList.toggle("muted", !g.os["pretty-name"] && !g.os.name);
      os.textContent = g.os["pretty-name"] || [g.os.name, g.os.version].filter(Boolean).join(" ") ||
        (g.os["kernel-release"] ? "Linux " + g.os["kernel-release"] : (g.active ? "unknown (" + (g.errors.os || "no agent") + ")" : "VM not running"));
      host.textContent = g.hostname || "–";
      const body = guest.querySelector('[data-field="addresses"]');
      body.innerHTML = "";
      if (!g.addresses.length) {
        body.innerHTML = '<tr><td colspan="4" class="muted"></td></tr>';
        body.querySelector("td").textContent = g.active ? "No addresses reported (agent, lease, ARP)." : "VM not running.";
      }
      g.addresses.forEach((a) => {
        const tr = document.createElement("tr");
        for (const [label, text] of [["Interface", a.interface], ["MAC", a.mac || "–"],
                                     ["Address", a.address + (a.prefix !== null ? "/" + a.prefix : "")],
                                     ["Source", a.source]]) {
          const td = document.createElement("td");
          td.dataset.label = label;
          if (label === "Source") { const s = document.createElement("span"); s.className = "badge src-" + text; s.textContent = text; td.appendChild(s); }
          else td.textContent = text;
          tr.appendChild(td);
        }
        body.appendChild(tr);
      });
    } catch (err) {
      guest.querySelector('[data-field="os"]').textContent = err.message;
    }
  }
  loadGuest();
  K.on("domain", (ev) => {
    if (ev.vm !== name) return;
    addEvent(new Date().toISOString(), ev.event, "");
    if (ev.event === "started" || ev.event === "stopped") setTimeout(loadGuest, 1500);
  });
  K.on("job", (ev) => {
    if (ev.target !== name || !ev.state) return;
    addEvent(ev.time || new Date().toISOString(), ev.state, ev.kind || "job");
  });
  function addEvent(time, what, kind) {
    const ul = document.getElementById("events");
    const empty = ul.querySelector(".empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.innerHTML = "<time></time> " + (kind ? "<code></code> " : "") + '<span class="badge"></span>';
    li.querySelector("time").textContent = time.replace("T", " ").slice(0, 19);
    if (kind) li.querySelector("code").textContent = kind;
    li.querySelector(".badge").textContent = what;
    ul.prepend(li);
  }
  stats(vmUrl);
  manageVm(name);
  manageNics(name);
};

/* The VM page's NIC editor (operators): add a NIC on a libvirt network, set a NIC's
   link up or down, remove it -- calls to /api/v1/vms/{name}/nics, the same services as
   ``kvmops vm nic``. The table is drawn again from the API after each change. */
function manageNics(name) {
  const form = document.getElementById("nic-add-form");
  if (!form) return;  // below the operator role
  const nicApi = "/api/v1/vms/" + encodeURIComponent(name) + "/nics";
  const tbody = document.getElementById("nic-rows");
  async function run(button, fn) {
    const was = button ? button.disabled : false;
    if (button) button.disabled = true;
    try { await fn(); } catch (err) { K.toast(err.message, "error"); }
    finally { if (button) button.disabled = was; }
  }
  function cell(tr, label, text, code) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (code) {
      const c = document.createElement("code");
      c.textContent = text;
      td.appendChild(c);
    } else {
      td.textContent = text;
    }
    tr.appendChild(td);
    return td;
  }
  function button(text, attr, value, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute(attr, value);
    if (cls) b.className = cls;
    return b;
  }
  function qosText(n) {
    const parts = [];
    if (n.inbound) parts.push("in " + n.inbound);
    if (n.outbound) parts.push("out " + n.outbound);
    if (n.vlan) parts.push("VLAN " + n.vlan);
    return parts.length ? parts.join(", ") : "–";
  }
  const qosForm = document.getElementById("nic-qos-form");
  function draw(nics) {
    const pick = qosForm.querySelector("select[name=mac]");
    pick.replaceChildren(...nics.map((n) => new Option(n.mac + " (" + n.source + ")", n.mac)));
    tbody.replaceChildren();
    if (!nics.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "", "No network interfaces.");
      td.colSpan = 7;
      td.className = "muted";
      tbody.appendChild(tr);
      return;
    }
    for (const n of nics) {
      const tr = document.createElement("tr");
      tr.dataset.nic = n.mac;
      cell(tr, "Type", n.type);
      cell(tr, "Source", n.source);
      cell(tr, "Model", n.model);
      cell(tr, "MAC", n.mac, true);
      cell(tr, "Host device", n.host_device || "–");
      cell(tr, "Limits / VLAN", qosText(n)).dataset.field = "qos";
      cell(tr, "Link", n.link).dataset.field = "link";
      const actions = cell(tr, "", "");
      const up = n.link === "up";
      actions.appendChild(button(up ? "Link down" : "Link up", "data-link", up ? "down" : "up"));
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("Remove", "data-remove", n.mac, "danger"));
      tbody.appendChild(tr);
    }
  }
  async function refresh() {
    draw((await K.api("GET", nicApi)).data);
  }
  tbody.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-link], button[data-remove]");
    if (!b) return;
    const mac = b.closest("tr").dataset.nic;
    const url = nicApi + "/" + encodeURIComponent(mac);
    if (b.dataset.remove !== undefined) {
      if (!confirm("Remove NIC " + mac + " from VM " + name + "?")) return;
      run(b, async () => {
        const r = await K.api("DELETE", url);
        K.toast("NIC " + r.data.mac + " removed", "ok");
        await refresh();
      });
    } else {
      const state = b.dataset.link;
      run(b, async () => {
        await K.api("POST", url + "/link", { state });
        K.toast("NIC " + mac + " link " + state, "ok");
        await refresh();
      });
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const get = (k) => (f.get(k) || "").toString().trim();
    const source = get("network");
    const body = source.startsWith("vf:")
      ? { vf_pool: source.slice(3) }  // an SR-IOV VF: no model, limits are the VF's own
      : { network: source, model: get("model") || "virtio" };
    if (get("mac")) body.mac = get("mac");
    if (get("inbound")) body.inbound = get("inbound");
    if (get("outbound")) body.outbound = get("outbound");
    if (get("vlan")) body.vlan = Number(get("vlan"));
    run(form.querySelector("button[type=submit]"), async () => {
      const r = await K.api("POST", nicApi, body);
      K.toast("NIC " + r.data.mac + " added on " + r.data.source, "ok");
      form.querySelector("input[name=mac]").value = "";
      await refresh();
    });
  });
  qosForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(qosForm);
    const get = (k) => (f.get(k) || "").toString().trim();
    const mac = get("mac");
    const body = {};
    for (const k of ["inbound", "outbound"]) {
      if (get(k)) body[k] = get(k).toLowerCase() === "none" ? null : get(k);
    }
    if (get("vlan")) body.vlan = get("vlan").toLowerCase() === "none" ? null : Number(get("vlan"));
    if (!Object.keys(body).length) { K.toast("Nothing to change: fill a field", "error"); return; }
    run(qosForm.querySelector("button[type=submit]"), async () => {
      await K.api("PATCH", nicApi + "/" + encodeURIComponent(mac), body);
      K.toast("NIC " + mac + " updated", "ok");
      for (const k of ["inbound", "outbound", "vlan"]) qosForm.querySelector("input[name=" + k + "]").value = "";
      await refresh();
    });
  });
  const select = form.querySelector("select[name=network]");
  run(null, async () => {
    const nets = (await K.api("GET", "/api/v1/networks")).data;
    select.replaceChildren();
    for (const n of nets) {
      const o = document.createElement("option");
      o.value = n.name;
      o.textContent = n.name + (n.active ? "" : " (inactive)");
      select.appendChild(o);
    }
    // SR-IOV pools: a NIC that is one free VF of the pool (the VF's VLAN from the form).
    const pools = (await K.api("GET", "/api/v1/sriov/pools")).data;
    for (const p of pools) {
      select.appendChild(new Option("SR-IOV pool " + p.name + " (" + p.free + " VFs free)",
                                    "vf:" + p.name));
    }
    if (!nets.length && !pools.length) {
      select.appendChild(new Option("no networks: create one first", ""));
    }
  });
  run(null, refresh);
}

/* The VM page's configuration actions: vCPUs, memory, autostart, clone, undefine (with
   or without the storage the dialog names), disk attach and detach -- each a call to the
   REST API, which runs the same service as the CLI. */
function manageVm(name) {
  const box = document.getElementById("vm-manage");
  if (!box) return;  // below the operator role
  const vmApi = "/api/v1/vms/" + encodeURIComponent(name);
  const field = (f) => document.querySelector('.kv [data-field="' + f + '"]');
  async function run(button, fn) {
    const was = button ? button.disabled : false;
    if (button) button.disabled = true;
    try { await fn(); } catch (err) { K.toast(err.message, "error"); }
    finally { if (button) button.disabled = was; }
  }
  function said(r) {
    K.toast(r.data.message, "ok");
    (r.data.notes || []).forEach((n) => K.toast(n, "info"));
  }
  document.getElementById("vcpus-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const count = parseInt(new FormData(ev.target).get("vcpus"), 10);
    run(ev.target.querySelector("button"), async () => {
      const r = await K.api("PUT", vmApi + "/vcpus", { vcpus: count });
      field("vcpus").textContent = r.data.vcpus;
      said(r);
    });
  });
  document.getElementById("memory-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    run(ev.target.querySelector("button"), async () => {
      const r = await K.api("PUT", vmApi + "/memory",
                            { memory: f.get("memory").toString().trim(), force: f.get("force") !== null });
      field("memory").textContent = K.fmtBytes(r.data.memory);
      said(r);
    });
  });
  const auto = document.getElementById("autostart-toggle");
  auto.addEventListener("click", () => run(auto, async () => {
    const enabled = auto.dataset.enabled !== "true";
    const r = await K.api("PUT", vmApi + "/autostart", { enabled });
    auto.dataset.enabled = String(enabled);
    auto.textContent = enabled ? "Disable autostart" : "Enable autostart";
    field("autostart").textContent = enabled ? "on" : "off";
    K.toast(r.data.message, "ok");
  }));

  // clone and undefine need the VM shut off: say so on the buttons, following its state
  const cloneBtn = document.getElementById("clone-btn");
  const undefBtn = document.getElementById("undefine-btn");
  function gate(state) {
    const off = state === "shut off" || state === "crashed";
    cloneBtn.disabled = state !== "shut off";
    undefBtn.disabled = !off;
    const why = "shut the VM off first (it is " + state + ")";
    cloneBtn.title = cloneBtn.disabled ? why : "";
    undefBtn.title = undefBtn.disabled ? why : "";
  }
  const head = document.querySelector("[data-vm-page] .actions[data-actions-for]");
  if (head) gate(head.dataset.state);
  K.on("domain", (ev) => { if (ev.vm === name && EVENT_STATE[ev.event]) gate(EVENT_STATE[ev.event]); });

  const cloneDlg = document.getElementById("clone-dialog");
  document.getElementById("clone-btn").addEventListener("click", () => cloneDlg.showModal());
  cloneDlg.addEventListener("close", () => {
    if (cloneDlg.returnValue !== "ok") return;
    const f = new FormData(cloneDlg.querySelector("form"));
    const body = { new_name: f.get("new_name").toString().trim() };
    const dir = (f.get("images_dir") || "").toString().trim();
    if (dir) body.images_dir = dir;
    const status = document.getElementById("clone-status");
    run(document.getElementById("clone-btn"), async () => {
      status.hidden = false;
      status.dataset.state = "running";
      status.querySelector('[data-field="message"]').textContent = "cloning as '" + body.new_name + "'…";
      await K.connected();
      const r = await K.api("POST", vmApi + "/clone", body);
      const job = await K.watchJob(r.data.job_id, (pct, msg) => {
        if (pct !== null) status.querySelector("progress").value = pct;
        if (msg) status.querySelector('[data-field="message"]').textContent = msg;
      });
      status.dataset.state = job.state;
      if (job.state !== "succeeded") {
        status.querySelector('[data-field="message"]').textContent = "clone " + job.state + ": " + (job.error || "");
        throw new Error(job.error || "clone " + job.state);
      }
      status.querySelector("progress").value = 100;
      const msg = status.querySelector('[data-field="message"]');
      msg.textContent = "cloned as ";
      const a = document.createElement("a");
      a.href = "/vms/" + encodeURIComponent(body.new_name);
      a.textContent = body.new_name;
      msg.appendChild(a);
      K.toast("VM '" + name + "' cloned as '" + body.new_name + "'", "ok");
    });
  });

  const undefDlg = document.getElementById("undefine-dialog");
  const files = document.getElementById("undefine-files");
  const storage = document.getElementById("undefine-storage");
  const showFiles = () => { files.hidden = !storage.checked; };
  storage.addEventListener("change", showFiles);
  showFiles();
  function listInto(ul, items) {
    ul.replaceChildren(...items.map(([path, why]) => {
      const li = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = path;
      li.appendChild(code);
      if (why) { const s = document.createElement("small"); s.className = "muted"; s.textContent = " " + why; li.appendChild(s); }
      return li;
    }));
  }
  /* The files an undefine with storage deletes (and keeps, with why), read when the
     dialog opens: GET /api/v1/vms/NAME/storage, nothing is changed. */
  async function preview() {
    files.dataset.state = "loading";
    try {
      const p = (await K.api("GET", vmApi + "/storage")).data;
      const remove = files.querySelector('[data-field="remove"]');
      listInto(remove, p.remove.map((f) => [f, ""]));
      files.querySelector('[data-field="remove-title"]').textContent =
        p.remove.length ? "These files are deleted with the storage:" : "No file would be deleted.";
      const kept = files.querySelector('[data-field="kept"]');
      listInto(kept, p.kept.map((k) => [k.path, k.reason]));
      kept.hidden = files.querySelector('[data-field="kept-title"]').hidden = !p.kept.length;
      files.dataset.state = "ready";
    } catch (err) {
      files.querySelector('[data-field="remove"]').replaceChildren();
      files.querySelector('[data-field="remove-title"]').textContent = err.message;
      files.dataset.state = "failed";
    }
  }
  document.getElementById("undefine-btn").addEventListener("click", () => { preview(); undefDlg.showModal(); });
  undefDlg.addEventListener("close", () => {
    if (undefDlg.returnValue !== "ok") return;
    const remove = storage.checked;
    run(document.getElementById("undefine-btn"), async () => {
      const r = await K.api("DELETE", vmApi + "?remove_storage=" + remove);
      const d = r.data.details || {};
      K.toast(r.data.message + ((d.removed || []).length ? "; deleted " + d.removed.join(", ") : ""), "ok");
      (d.kept || []).forEach((k) => K.toast("kept " + k.path + ": " + k.reason, "info"));
      setTimeout(() => { location.href = "/vms"; }, 1500);
    });
  });

  const detachDlg = document.getElementById("detach-dialog");
  let detaching = null;
  document.getElementById("disk-rows").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-detach]");
    if (!b) return;
    detaching = b.dataset.detach;
    detachDlg.querySelector('[data-field="target"]').textContent = detaching;
    detachDlg.querySelector('[data-field="source"]').textContent = b.dataset.source || "–";
    detachDlg.querySelector("input[name=remove_storage]").checked = false;
    detachDlg.showModal();
  });
  detachDlg.addEventListener("close", () => {
    if (detachDlg.returnValue !== "ok" || !detaching) return;
    const target = detaching;
    const remove = detachDlg.querySelector("input[name=remove_storage]").checked;
    run(null, async () => {
      const r = await K.api("DELETE", vmApi + "/disks/" + encodeURIComponent(target) + "?remove_storage=" + remove);
      K.toast("disk " + target + " detached" + (r.data.removed_storage ? "; deleted " + r.data.image : ""), "ok");
      location.reload();
    });
  });
  const attach = document.getElementById("attach-form");
  attach.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData(attach);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { bus: get("bus") || "virtio" };
    if (f.get("source") === "image") {
      body.image = get("image");
      if (get("format")) body.format = get("format");
    } else {
      body.size = get("size");
      if (get("images_dir")) body.images_dir = get("images_dir");
    }
    run(attach.querySelector("button[type=submit]"), async () => {
      const r = await K.api("POST", vmApi + "/disks", body);
      K.toast("disk " + r.data.target + " attached (" + (r.data.image || "") + ")", "ok");
      location.reload();
    });
  });
}

/* CPU, memory, disk and network figures: samples of the stats endpoint, rates
   from the difference of two samples, drawn as sparklines. */
function stats(vmUrl) {
  const perf = document.getElementById("perf");
  const series = { cpu: [], mem: [], disk: [], net: [] };
  const MAX = 30;
  let prev = null;
  const note = perf.querySelector('[data-field="perf-note"]');
  function draw(metric, text, ceiling) {
    const fig = perf.querySelector('[data-metric="' + metric + '"]');
    fig.querySelector('[data-field="value"]').textContent = text;
    const values = series[metric];
    const top = ceiling || Math.max(1, ...values) * 1.15;
    const pts = values.map((v, i) => {
      const x = (i + (MAX - values.length)) * (120 / (MAX - 1));
      const y = 39 - (v / top) * 37;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    fig.querySelector("polyline").setAttribute("points", pts.join(" "));
    if (pts.length > 1) {
      fig.querySelector("polygon").setAttribute("points",
        pts[0].split(",")[0] + ",40 " + pts.join(" ") + " " + pts[pts.length - 1].split(",")[0] + ",40");
    }
  }
  function push(metric, value) {
    series[metric].push(value);
    if (series[metric].length > MAX) series[metric].shift();
  }
  async function tick() {
    if (document.hidden) return setTimeout(tick, 2000);
    try {
      const s = (await K.api("GET", vmUrl + "/stats")).data;
      if (!s.active) {
        note.textContent = "(not running)";
        prev = null;
      } else {
        note.textContent = "";
        if (prev && s.time > prev.time && prev.cpu_time_ns !== null) {
          const dt = s.time - prev.time;
          const cpu = Math.max(0, (s.cpu_time_ns - prev.cpu_time_ns) / 1e9 / dt / Math.max(1, s.vcpus) * 100);
          const disk = Math.max(0, (s.disk_read_bytes - prev.disk_read_bytes + s.disk_write_bytes - prev.disk_write_bytes) / dt);
          const net = Math.max(0, (s.net_rx_bytes - prev.net_rx_bytes + s.net_tx_bytes - prev.net_tx_bytes) / dt);
          push("cpu", cpu); push("disk", disk); push("net", net);
          draw("cpu", cpu.toFixed(1) + " %", 100);
          draw("disk", K.fmtBytes(disk) + "/s");
          draw("net", K.fmtBytes(net) + "/s");
        }
        /* the guest's memory (balloon) is the figure to compare with its maximum; QEMU's
           resident size on the host includes QEMU itself and can exceed it */
        const mem = s.memory_current || s.memory_rss;
        if (mem) {
          push("mem", mem);
          draw("mem", K.fmtBytes(mem) + (s.memory_max ? " of " + K.fmtBytes(s.memory_max) : "") +
               (s.memory_rss ? " (QEMU uses " + K.fmtBytes(s.memory_rss) + " on the host)" : ""),
               s.memory_max);
        }
        prev = s;
      }
    } catch (err) {
      note.textContent = "(" + err.message + ")";
    }
    setTimeout(tick, 2000);
  }
  tick();
}

/* The create page's host select: the network list follows the host (with "auto":
   every host's networks, each named with the hosts that have it). */
function createHostNetworks(form) {
  const hostSel = form.querySelector('select[name="host"]');
  const netSel = form.querySelector('select[name="network"]');
  if (!hostSel || !netSel) return;
  const names = [...hostSel.options].map((o) => o.value).filter((v) => v !== "auto");
  hostSel.addEventListener("change", async () => {
    const chosen = hostSel.value;
    const asked = chosen === "auto" ? names : [chosen];
    const found = new Map();  // network -> hosts
    await Promise.all(asked.map(async (h) => {
      try {
        const q = h === "local" ? "" : "?host=" + encodeURIComponent(h);
        (await K.api("GET", "/api/v1/networks" + q)).data.forEach((n) => {
          found.set(n.name, (found.get(n.name) || []).concat([h]));
        });
      } catch (err) { /* a host not answering: its networks are not offered */ }
    }));
    const keep = netSel.value;
    netSel.replaceChildren(new Option("none", ""));
    [...found.keys()].sort().forEach((n) => {
      const label = chosen === "auto" ? n + " (" + found.get(n).join(", ") + ")" : n;
      netSel.appendChild(new Option(label, n, false, n === keep));
    });
  });
}

/* After a placed creation: where and why (every host's verdict), a link to the VM. */
function showPlaced(vm, link) {
  const box = document.getElementById("placed");
  if (!box || !vm.placement) return false;
  const p = vm.placement;
  box.querySelector('[data-field="host"]').textContent = p.host;
  box.querySelector('[data-field="reason"]').textContent = p.reason;
  const list = box.querySelector('[data-field="verdicts"]');
  list.replaceChildren();
  p.verdicts.forEach((v) => {
    const li = document.createElement("li");
    li.dataset.host = v.host;
    li.dataset.fits = v.fits ? "true" : "false";
    li.className = v.fits ? "" : "muted";
    li.textContent = v.host + ": " + (v.fits ? "fits" : "rejected") + ": " + v.reason;
    list.appendChild(li);
  });
  box.querySelector('[data-field="link"]').href = link;
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
  return true;
}

PAGES.create = () => {
  const form = document.getElementById("create-vm");
  createHostNetworks(form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { name: get("name"), memory: get("memory"), vcpus: parseInt(get("vcpus"), 10),
                   agent: f.get("agent") !== null, start: f.get("start") !== null, disks: [] };
    if (get("disk_size")) body.disks.push({ size: get("disk_size") });
    if (get("disk_path")) {
      const disk = { path: get("disk_path") };
      if (get("disk_format")) disk.format = get("disk_format");
      body.disks.push(disk);
    }
    for (const k of ["kernel", "initrd", "cmdline", "cdrom", "network", "bridge", "images_dir", "accelerator"]) if (get(k)) body[k] = get(k);
    if (f.get("force") !== null) body.force = true;
    const button = form.querySelector("button[type=submit]");
    const status = form.querySelector('[data-field="status"]');
    const bar = form.querySelector("progress");
    const host = get("host") || "local";
    const url = "/api/v1/vms" + (host === "local" ? "" : "?host=" + encodeURIComponent(host));
    button.disabled = true;
    status.classList.remove("error-text");
    status.textContent = host === "auto" ? "placing…" : "creating…";
    document.getElementById("placed").hidden = true;
    try {
      await K.connected();
      const r = await K.api("POST", url, body);
      let vm = r.data;
      if (r.status === 202) {
        bar.hidden = false;
        const job = await K.watchJob(r.data.job_id, (pct, msg) => {
          if (pct !== null) bar.value = pct;
          if (msg) status.textContent = msg;
        });
        if (job.state !== "succeeded") throw new Error(job.error || "creation " + job.state);
        vm = job.result || {};
      }
      const on = vm.host || (host === "auto" ? "local" : host);
      const link = "/vms/" + encodeURIComponent(body.name) +
        (on === "local" ? "" : "?host=" + encodeURIComponent(on));
      K.toast("VM '" + body.name + "' created" + (on === "local" ? "" : " on " + on), "ok");
      if (showPlaced(vm, link)) {
        status.textContent = "created on " + on;
        bar.hidden = true;
        button.disabled = false;
        return;
      }
      location.href = link;
    } catch (err) {
      status.textContent = err.message;  // stays: a refused placement names every host
      status.classList.add("error-text");
      bar.hidden = true;
      K.toast(err.message, "error");
      button.disabled = false;
    }
  });
};

PAGES.console = () => { vmHeader(); /* the screen itself: console.js (ES module, noVNC) */
  const name = document.querySelector("[data-vm-page]").dataset.vmPage;
  const url = "/api/v1/ui/vms/" + encodeURIComponent(name);
  document.getElementById("send-text").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    let text = (f.get("text") || "").toString();
    if (f.get("enter") !== null) text += "\n";
    if (!text) return;
    try {
      const r = await K.api("POST", url + "/send-text", { text });
      K.toast(r.data.message, "ok");
      ev.target.elements.text.value = "";
    } catch (err) { K.toast(err.message, "error"); }
  });
  document.getElementById("ctrl-alt-del").addEventListener("click", async () => {
    try { K.toast((await K.api("POST", url + "/ctrl-alt-del")).data.message, "ok"); }
    catch (err) { K.toast(err.message, "error"); }
  });
};

PAGES.snapshots = () => {
  vmHeader();
  const name = document.querySelector("[data-vm-page]").dataset.vmPage;
  const base = "/api/v1/vms/" + encodeURIComponent(name) + "/snapshots";
  const form = document.getElementById("snapshot-form");
  async function job(r, what) {
    const status = form ? form.querySelector('[data-field="status"]') : null;
    const result = await K.watchJob(r.data.job_id, (pct, msg) => { if (status && msg) status.textContent = msg; });
    if (result.state !== "succeeded") throw new Error(result.error || what + " " + result.state);
  }
  if (form) form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { name: f.get("name").toString().trim(), memory: f.get("memory") !== null,
                   disk_only: f.get("disk_only") !== null, quiesce: f.get("quiesce") !== null };
    const d = (f.get("description") || "").toString().trim();
    if (d) body.description = d;
    try {
      await K.connected();
      await job(await K.api("POST", base, body), "snapshot");
      K.toast("snapshot '" + body.name + "' taken", "ok");
      location.reload();
    } catch (err) { K.toast(err.message, "error"); }
  });
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-snap-action]");
    if (!b) return;
    const snap = b.dataset.snapshot;
    const url = base + "/" + encodeURIComponent(snap);
    b.disabled = true;
    try {
      if (b.dataset.snapAction === "revert") {
        if (!confirm("Revert VM '" + name + "' to snapshot '" + snap + "'? Changes since are lost.")) return;
        const r = await K.api("POST", url + "/revert", {});
        K.toast("reverted to '" + snap + "': VM " + r.data.state, "ok");
      } else {
        if (!confirm("Delete snapshot '" + snap + "'?")) return;
        await K.connected();
        await job(await K.api("DELETE", url), "delete");
        K.toast("snapshot '" + snap + "' deleted", "ok");
      }
      location.reload();
    } catch (err) { K.toast(err.message, "error"); }
    finally { b.disabled = false; }
  });
};

PAGES.backups = () => {
  vmHeader();
  const name = document.querySelector("[data-vm-page]").dataset.vmPage;
  const points = document.getElementById("backup-points");
  const repo = points.dataset.repo;
  const vmApi = "/api/v1/vms/" + encodeURIComponent(name);
  const box = document.getElementById("backup-progress");
  K.connected();
  function progress(label) {
    box.hidden = false;
    const bar = box.querySelector("progress");
    bar.removeAttribute("value");  // indeterminate until the job reports a percentage
    box.querySelector('[data-field="percent"]').textContent = "…";
    box.querySelector('[data-field="message"]').textContent = label;
    box.dataset.state = "running";
    box.dataset.ticks = "0";  // progress reports of the job seen before its end
    return (pct, msg) => {
      if (pct !== null && box.dataset.state === "running" && pct < 100) {
        box.dataset.ticks = String(Number(box.dataset.ticks) + 1);
      }
      if (pct !== null) {
        bar.value = pct;
        box.querySelector('[data-field="percent"]').textContent = Math.round(pct) + "%";
      }
      if (msg) box.querySelector('[data-field="message"]').textContent = msg;
    };
  }
  async function runJob(request, label) {
    const show = progress(label);
    await K.connected();
    const r = await request();
    const job = await K.watchJob(r.data.job_id, show);
    if (job.state === "succeeded") {
      show(100, label + ": done");
      box.dataset.state = job.state;
      return job;
    }
    box.dataset.state = job.state;
    show(null, label + ": " + (job.error || job.state));
    throw new Error(job.error || label + " " + job.state);
  }
  async function refresh() {
    const html = await (await fetch("/vms/" + encodeURIComponent(name) + "/backups/fragment?repo=" +
                                    encodeURIComponent(repo), { credentials: "same-origin" })).text();
    points.innerHTML = html;
  }
  const form = document.getElementById("backup-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { repo };
    if (f.get("mode")) body.mode = f.get("mode");
    const speed = (f.get("speed") || "").toString().trim();
    if (speed) body.speed = speed;
    if (f.get("fleecing") && f.get("fleecing") !== "auto") body.fleecing = f.get("fleecing");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await runJob(() => K.api("POST", vmApi + "/backups", body), "backup");
      K.toast("backup " + ((job.result && job.result.id) || "") + " written", "ok");
      await refresh();
    } catch (err) { K.toast(err.message, "error"); }
    finally { button.disabled = false; }
  });
  const prune = document.getElementById("prune-form");
  prune.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(prune);
    const body = { repo, dry_run: f.get("dry_run") !== null };
    for (const k of ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]) body[k] = parseInt(f.get(k) || "0", 10);
    if (!body.dry_run && !confirm("Delete the backups of VM '" + name + "' this policy does not keep?")) return;
    const button = prune.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await runJob(() => K.api("POST", vmApi + "/backups/prune", body), "prune");
      const plan = job.result.plan;
      const out = document.getElementById("prune-result");
      out.hidden = false;
      out.dataset.removed = plan.remove.join(" ");
      out.textContent = (job.result.dry_run ? "Would remove " : "Removed ") + plan.remove.length +
        " backup(s)" + (plan.remove.length ? ": " + plan.remove.join(", ") : "") + "; keeps " + plan.keep.length + ".";
      if (!job.result.dry_run) await refresh();
    } catch (err) { K.toast(err.message, "error"); }
    finally { button.disabled = false; }
  });
  document.getElementById("verify-btn").addEventListener("click", async (ev) => {
    ev.target.disabled = true;
    try {
      const job = await runJob(() => K.api("POST", "/api/v1/backups/verify", { repo, vm: name }), "verify");
      K.toast("repository verified: " + (job.result && job.result.sound ? "sound" : "see details"), "ok");
    } catch (err) { K.toast(err.message, "error"); }
    finally { ev.target.disabled = false; }
  });
  let chosen = null;
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-restore]");
    if (!b) return;
    chosen = b.dataset.restore;
    const dlg = document.getElementById("restore-dialog");
    dlg.querySelector('[data-field="point"]').textContent = chosen;
    dlg.showModal();
  });
  document.addEventListener("close", async (ev) => {
    const dlg = ev.target;
    if (!(dlg instanceof HTMLDialogElement) || dlg.id !== "restore-dialog" || dlg.returnValue !== "ok") return;
    const f = new FormData(dlg.querySelector("form"));
    const target = f.get("target");
    const body = { repo, at: chosen };
    if (target === "new_vm") body.new_vm = f.get("new_vm").toString().trim();
    else if (target === "to") body.to = f.get("to").toString().trim();
    else body.in_place = true;
    try {
      await runJob(() => K.api("POST", vmApi + "/backups/restore", body), "restore of " + chosen);
      K.toast("restored " + chosen + (body.new_vm ? " as VM '" + body.new_vm + "'" : ""), "ok");
    } catch (err) { K.toast(err.message, "error"); }
  }, true);
};

/* The job history: the rows of GET /api/v1/jobs (the one job store, whoever started the
   job -- a CLI backup too), refreshed on every job event and every few seconds. */
PAGES.jobs = () => {
  const table = document.getElementById("jobs-table");
  const tbody = document.getElementById("job-rows");
  const live = document.getElementById("jobs-live");
  const operator = table.querySelectorAll("thead th").length > 8;
  const params = new URLSearchParams({ limit: table.dataset.limit || "100" });
  if (table.dataset.state) params.set("state", table.dataset.state);
  if (table.dataset.target) params.set("target", table.dataset.target);
  const when = (t) => (t ? t.replace("T", " ").slice(0, 19) : "–");
  function cell(tr, label) {
    const td = document.createElement("td");
    td.dataset.label = label;
    tr.appendChild(td);
    return td;
  }
  function row(job) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    tr.dataset.state = job.state;
    const kind = cell(tr, "Job");
    const code = document.createElement("code");
    code.textContent = job.kind;
    const id = document.createElement("small");
    id.className = "muted";
    id.textContent = job.id;
    kind.append(code, document.createElement("br"), id);
    const target = cell(tr, "Target");
    if (job.target) {
      const a = document.createElement("a");
      a.href = "/vms/" + encodeURIComponent(job.target);
      a.textContent = job.target;
      target.appendChild(a);
    }
    const badge = document.createElement("span");
    badge.className = "badge job-" + job.state;
    badge.dataset.field = "state";
    badge.textContent = job.state;
    cell(tr, "State").appendChild(badge);
    const pct = job.state === "succeeded" ? 100 : (job.progress && job.progress.percent) || 0;
    const prog = cell(tr, "Progress");
    const bar = document.createElement("progress");
    bar.max = 100; bar.value = pct;
    const label = document.createElement("small");
    label.dataset.field = "percent";
    if (job.progress && typeof job.progress.percent === "number") label.textContent = Math.round(job.progress.percent) + "%";
    prog.append(bar, " ", label);
    const msg = cell(tr, "Error / message");
    msg.dataset.field = "message";
    msg.textContent = job.error || job.message || "";
    if (job.error) msg.className = "error-text";
    const by = cell(tr, "By");
    by.dataset.field = "by";
    by.textContent = job.created_by || "";
    cell(tr, "Created").textContent = when(job.created_at);
    const fin = cell(tr, "Finished");
    fin.dataset.field = "finished";
    fin.textContent = when(job.finished_at);
    if (operator) {
      const td = cell(tr, "");
      if (job.state === "queued" || job.state === "running") {
        const b = document.createElement("button");
        b.className = "danger";
        b.dataset.cancel = job.id;
        b.textContent = "Cancel";
        td.appendChild(b);
      }
    }
    return tr;
  }
  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const jobs = (await K.api("GET", "/api/v1/jobs?" + params)).data;
      tbody.replaceChildren(...jobs.map(row));
      document.getElementById("no-jobs").hidden = jobs.length > 0;
      live.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      live.textContent = "(" + err.message + ")";
    } finally { busy = false; }
  }
  let pending = null;
  K.on("job", () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); });
  (function poll() {
    if (!document.hidden) refresh();
    setTimeout(poll, 3000);
  })();
  tbody.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-cancel]");
    if (!b) return;
    if (!confirm("Cancel job " + b.dataset.cancel + "?")) return;
    b.disabled = true;
    try {
      const r = await K.api("POST", "/api/v1/jobs/" + encodeURIComponent(b.dataset.cancel) + "/cancel");
      K.toast("cancel requested for " + r.data.kind + " (" + r.data.state + ")", "ok");
      refresh();
    } catch (err) { K.toast(err.message, "error"); b.disabled = false; }
  });
};

PAGES.xml = () => { vmHeader(); };

/* Guest agent actions through the REST API (/vms/{name}/guest/...). */
PAGES.guest = () => {
  vmHeader();
  const name = document.querySelector("[data-vm-page]").dataset.vmPage;
  const base = "/api/v1/vms/" + encodeURIComponent(name) + "/guest";
  const box = document.getElementById("guest-exec");
  const form = document.getElementById("exec-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { argv: ["/bin/sh", "-c", f.get("command").toString()],
                   timeout: parseFloat(f.get("timeout") || "60") };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    box.dataset.state = "running";
    try {
      const r = (await K.api("POST", base + "/exec", body)).data;
      document.getElementById("exec-result").hidden = false;
      box.querySelector('[data-field="exit"]').textContent =
        r.exit_code !== null && r.exit_code !== undefined ? r.exit_code : "signal " + r.signal;
      box.querySelector('[data-field="stdout"]').textContent = r.stdout + (r.stdout_truncated ? "\n[cut]" : "");
      box.querySelector('[data-field="stderr"]').textContent = r.stderr + (r.stderr_truncated ? "\n[cut]" : "");
      box.dataset.state = "done";
    } catch (err) {
      box.dataset.state = "failed";
      K.toast(err.message, "error");
    } finally { button.disabled = false; }
  });
  const fsState = document.querySelector('#guest-fs [data-field="fs-state"]');
  async function fs(method, path, say) {
    try {
      const r = (await K.api(method, base + path, method === "POST" ? {} : undefined)).data;
      if (say) K.toast(say(r), "ok");
      const s = (await K.api("GET", base + "/fsfreeze")).data;
      fsState.textContent = s.status;
    } catch (err) { K.toast(err.message, "error"); }
  }
  document.getElementById("fs-status").addEventListener("click", () => fs("GET", "/fsfreeze"));
  document.getElementById("fs-freeze").addEventListener("click", () => {
    if (!confirm("Freeze the file systems of VM '" + name + "'? Writers block until the thaw.")) return;
    fs("POST", "/fsfreeze", (r) => "froze " + r.frozen + " file system(s)");
  });
  document.getElementById("fs-thaw").addEventListener("click", () =>
    fs("POST", "/fsthaw", (r) => "thawed " + r.thawed + " file system(s)"));
  document.getElementById("agent-ping").addEventListener("click", async () => {
    try { K.toast((await K.api("GET", base + "/ping")).data.message, "ok"); }
    catch (err) { K.toast(err.message, "error"); }
  });
  // files: push an upload, pull to the page (text shown, bytes saved through a blob)
  const files = document.getElementById("guest-files");
  document.getElementById("push-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const file = f.get("file");
    const bytes = new Uint8Array(await file.arrayBuffer());
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    const body = { path: f.get("path").toString().trim(), content_b64: btoa(bin) };
    if (f.get("mode")) body.mode = f.get("mode").toString();
    try {
      await K.api("POST", base + "/push", body);
      K.toast("pushed " + bytes.length + " byte(s) to " + body.path, "ok");
    } catch (err) { K.toast(err.message, "error"); }
  });
  document.getElementById("pull-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const path = new FormData(ev.target).get("path").toString().trim();
    try {
      const r = (await K.api("POST", base + "/pull", { path })).data;
      const bin = atob(r.content_b64);
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      files.querySelector('[data-field="content"]').textContent = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
      files.querySelector('[data-field="pulled-size"]').textContent = r.path + ": " + r.size + " byte(s)";
      const link = files.querySelector('[data-field="download"]');
      if (link.href) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(new Blob([bytes]));
      link.download = path.split("/").pop();
      files.querySelector('[data-field="pulled"]').hidden = false;
    } catch (err) { K.toast(err.message, "error"); }
  });
  // guest users: SSH keys and password
  const keysForm = document.getElementById("keys-form");
  const keyList = document.getElementById("ssh-keys");
  function showKeys(keys) {
    keyList.replaceChildren(...keys.map((k) => { const li = document.createElement("li"); const c = document.createElement("code"); c.textContent = k; li.appendChild(c); return li; }));
    keyList.dataset.count = String(keys.length);
  }
  keysForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const what = ev.submitter ? ev.submitter.value : "list";
    const f = new FormData(keysForm);
    const user = f.get("user").toString().trim();
    const key = (f.get("key") || "").toString().trim();
    try {
      let r;
      if (what === "list") r = await K.api("GET", base + "/ssh-keys?user=" + encodeURIComponent(user));
      else {
        if (!key) throw new Error("paste a public key first");
        r = await K.api("POST", base + (what === "add" ? "/ssh-keys" : "/ssh-keys/remove"), { user, keys: [key] });
        K.toast((what === "add" ? "added a key for " : "removed a key of ") + user, "ok");
      }
      showKeys(r.data.keys);
    } catch (err) { K.toast(err.message, "error"); }
  });
  document.getElementById("password-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const r = await K.api("POST", base + "/password", { user: f.get("user").toString().trim(), password: f.get("password").toString() });
      K.toast(r.data.message, "ok");
      ev.target.elements.password.value = "";
    } catch (err) { K.toast(err.message, "error"); }
  });
  const qmp = document.getElementById("qmp-form");
  if (!qmp) return;  // admins only
  qmp.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(qmp);
    const out = document.querySelector('#monitor [data-field="reply"]');
    const vmApi = "/api/v1/vms/" + encodeURIComponent(name);
    try {
      let reply;
      if (f.get("kind") === "hmp") {
        reply = (await K.api("POST", vmApi + "/hmp", { command: f.get("command").toString() })).data.output;
      } else {
        const body = { execute: f.get("execute").toString().trim() };
        const args = (f.get("arguments") || "").toString().trim();
        if (args) {
          try { body.arguments = JSON.parse(args); }
          catch (e) { throw new Error("QMP arguments: not a JSON object (" + e.message + ")"); }
        }
        reply = JSON.stringify((await K.api("POST", vmApi + "/qmp", body)).data.return, null, 2);
      }
      out.textContent = reply;
      out.dataset.state = "done";
    } catch (err) { out.dataset.state = "failed"; K.toast(err.message, "error"); }
  });
};

/* Disk images through the REST API (/api/v1/images): info, check, create, convert. */
PAGES.images = () => {
  const info = document.getElementById("info-form");
  const details = document.getElementById("image-details");
  const notes = document.getElementById("image-notes");
  function show(rows, extra) {
    details.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      dd.dataset.field = k.toLowerCase().replace(/ /g, "-");
      details.append(dt, dd);
    }
    details.hidden = false;
    notes.replaceChildren(...(extra || []).map((n) => { const li = document.createElement("li"); li.textContent = n; return li; }));
  }
  const fields = () => {
    const f = new FormData(info);
    return { path: f.get("path").toString().trim(), format: (f.get("format") || "").toString(),
             backing_chain: f.get("backing_chain") !== null };
  };
  info.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = fields();
    const params = new URLSearchParams({ path: q.path, backing_chain: q.backing_chain });
    if (q.format) params.set("format", q.format);
    try {
      const i = (await K.api("GET", "/api/v1/images/info?" + params)).data;
      const rows = [["File", i.filename], ["Format", i.format + (i.format_source ? " (" + i.format_source + ")" : "")],
                    ["Virtual size", K.fmtBytes(i.virtual_size)], ["Actual size", K.fmtBytes(i.actual_size)]];
      if (i.backing_filename) rows.push(["Backing file", i.backing_filename + (i.backing_format ? " (" + i.backing_format + ")" : "")]);
      if (i.bitmaps && i.bitmaps.length) rows.push(["Bitmaps", i.bitmaps.join(", ")]);
      if (i.snapshots && i.snapshots.length) rows.push(["Snapshots", i.snapshots.map((s) => s.name).join(", ")]);
      (i.backing_chain || []).forEach((b, n) => rows.push(["Chain " + (n + 1), b.filename + " (" + b.format + ")"]));
      show(rows, i.notes);
    } catch (err) { K.toast(err.message, "error"); }
  });
  const check = document.getElementById("check-btn");
  check.addEventListener("click", async () => {
    if (!info.reportValidity()) return;
    const q = fields();
    const body = { path: q.path };
    if (q.format) body.format = q.format;
    try {
      const c = (await K.api("POST", "/api/v1/images/check", body)).data;
      show([["File", c.filename], ["Format", c.format], ["Check", c.status],
            ["Corruptions", String(c.corruptions)], ["Leaks", String(c.leaks)]]);
    } catch (err) { K.toast(err.message, "error"); }
  });
  const create = document.getElementById("image-create");
  if (!create) return;  // below the operator role
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(create);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { path: get("path"), format: get("format") };
    if (get("size")) body.size = get("size");
    if (get("backing")) body.backing = get("backing");
    try {
      const i = (await K.api("POST", "/api/v1/images", body)).data;
      K.toast("created " + i.filename + " (" + i.format + ", " + K.fmtBytes(i.virtual_size) + ")", "ok");
      setTimeout(() => location.reload(), 1200);
    } catch (err) { K.toast(err.message, "error"); }
  });
  const convert = document.getElementById("image-convert");
  convert.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(convert);
    const get = (k) => (f.get(k) || "").toString().trim();
    const body = { source: get("source"), destination: get("destination"), format: get("format"),
                   compress: f.get("compress") !== null };
    if (get("source_format")) body.source_format = get("source_format");
    const box = document.getElementById("convert-progress");
    const button = convert.querySelector("button[type=submit]");
    button.disabled = true;
    box.hidden = false;
    box.dataset.state = "running";
    const msg = box.querySelector('[data-field="message"]');
    msg.textContent = "converting…";
    try {
      await K.connected();
      const r = await K.api("POST", "/api/v1/images/convert", body);
      const job = await K.watchJob(r.data.job_id, (pct, m) => {
        if (pct !== null) box.querySelector("progress").value = pct;
        if (m) msg.textContent = m;
      });
      box.dataset.state = job.state;
      if (job.state !== "succeeded") throw new Error(job.error || "convert " + job.state);
      box.querySelector("progress").value = 100;
      msg.textContent = "converted to " + body.destination;
      K.toast("converted to " + body.destination, "ok");
    } catch (err) {
      msg.textContent = err.message;
      K.toast(err.message, "error");
    } finally { button.disabled = false; }
  });
};

PAGES.account = () => {
  const form = document.getElementById("password-change");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    if (f.get("new_password") !== f.get("again")) {
      K.toast("the two new passwords differ", "error");
      return;
    }
    try {
      const r = await K.api("POST", "/api/v1/me/password",
                            { old_password: f.get("old_password"), new_password: f.get("new_password") });
      K.toast(r.data.message, "ok");
      setTimeout(() => { location.href = "/login"; }, 1500);
    } catch (err) { K.toast(err.message, "error"); }
  });
};

PAGES.users = () => {
  const form = document.getElementById("user-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    try {
      await K.api("POST", "/api/v1/users", { name: f.get("name"), role: f.get("role"), password: f.get("password") });
      location.reload();
    } catch (err) { K.toast(err.message, "error"); }
  });
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-user-action]");
    if (!b) return;
    const user = b.dataset.user;
    try {
      if (b.dataset.userAction === "delete") {
        if (!confirm("Delete user '" + user + "' with their tokens and sessions?")) return;
        await K.api("DELETE", "/api/v1/users/" + encodeURIComponent(user));
        location.reload();
      } else {
        const r = await K.api("POST", "/api/v1/users/" + encodeURIComponent(user) + "/tokens");
        const out = document.getElementById("token-out");
        out.hidden = false;
        out.textContent = "New API token for " + user + " (shown once): " + r.data.token;
      }
    } catch (err) { K.toast(err.message, "error"); }
  });
};

document.addEventListener("DOMContentLoaded", () => {
  /* A VM page of a VM on another host: its tabs and links stay on that host. */
  const vmHost = document.body.dataset.host;
  if (vmHost) {
    document.querySelectorAll('a[href^="/vms/"]').forEach((a) => {
      const href = a.getAttribute("href");
      if (!/[?&]host=/.test(href)) a.setAttribute("href", href + (href.includes("?") ? "&" : "?") + "host=" + encodeURIComponent(vmHost));
    });
  }
  const init = PAGES[document.body.dataset.page];
  if (init) init();
});
