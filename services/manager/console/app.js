// The console: hash-routed views over /api/v1, refreshed live every few seconds, for a
// signed-in user (the session token lives in this tab's sessionStorage). The manager answers
// a user bound to a tenant with that tenant's rows only; the SQL door is root's.
"use strict";
const REFRESH_MS = 3000;
const $view = document.getElementById("view");
const $status = document.getElementById("status");
const $who = document.getElementById("who");

const session = {
  get token() { return sessionStorage.getItem("damselfly.token"); },
  get user() { return JSON.parse(sessionStorage.getItem("damselfly.user") || "null"); },
  save(body) {
    sessionStorage.setItem("damselfly.token", body.token);
    sessionStorage.setItem("damselfly.user", JSON.stringify(body.user));
  },
  clear() { sessionStorage.removeItem("damselfly.token"); sessionStorage.removeItem("damselfly.user"); },
};
class SignedOut extends Error {}

async function request(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (session.token) headers.Authorization = "Bearer " + session.token;
  const resp = await fetch("/api/v1" + path, { ...options, headers });
  if (resp.status === 401 && session.token) { session.clear(); throw new SignedOut(); }
  return resp;
}
async function api(path) {
  const resp = await request(path);
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${(await resp.json()).detail || ""}`);
  return resp.json();
}
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}
function cell(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  const s = String(v);
  // times to the second (UTC); the tooltip keeps the full value
  return /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/.test(s) ? s.slice(0, 19).replace("T", " ") : s;
}
// A table of records; `columns` picks and orders them; `href(row)` makes rows links.
function records(rows, columns, href) {
  if (!rows.length) return h("div", { class: "empty" }, "nothing yet");
  const t = h("table");
  const box = h("div", { class: "scroll" }, t);
  const head = t.createTHead().insertRow();
  for (const c of columns) head.appendChild(h("th", {}, c));
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    if (href) { tr.className = "link"; tr.addEventListener("click", () => { location.hash = href(r); }); }
    for (const c of columns) { const td = tr.insertCell(); td.textContent = cell(r[c]); td.title = String(r[c] ?? ""); }
  }
  return box;
}
// One record as name/value pairs, laid out in columns.
function details(record) {
  return h("dl", { class: "details" }, ...Object.entries(record).flatMap(([k, v]) =>
    [h("dt", {}, k.replaceAll("_", " ")), h("dd", { title: cell(v) }, cell(v))]));
}
function cards(values) {
  return h("div", { class: "cards" }, ...Object.entries(values).map(([k, v]) =>
    h("div", { class: "card", "data-key": k }, h("div", { class: "n" }, cell(v)),
      h("div", { class: "k" }, k.replaceAll("_", " ")))));
}
function section(title, id) {
  return [h("h2", {}, title), h("div", { id })];
}
function fill(id, node) { document.getElementById(id)?.replaceChildren(node); }
function searchBox(placeholder, onchange) {
  const input = h("input", { type: "search", placeholder });
  let timer;
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(onchange, 250); });
  return input;
}
function panelBox(p) {
  const body = h("div", { class: "chart" });
  const box = h("section", { class: "panel", "data-panel": p.name, "data-chart": p.chart },
    h("h3", {}, p.title), h("p", {}, p.description || ""), body);
  return { box, async refresh() {
    const data = await api("/dashboards/" + encodeURIComponent(p.name));
    box.dataset.rows = Charts.draw(body, data);
  } };
}
const enc = encodeURIComponent;

const views = {
  overview() {
    $view.replaceChildren(...section("Totals", "totals"), ...section("Clusters", "clusters"),
      ...section("Schedulers", "schedulers"), ...section("Jobs", "jobstates"),
      h("h2", {}, "Traffic"), h("div", { class: "grid", id: "ovpanels" }),
      ...section("Projections", "projections"));
    const boxes = [];
    let panels;
    return async () => {
      const o = await api("/overview");
      fill("totals", cards(o.totals));
      fill("clusters", records(o.clusters, ["cluster", "seed_peers", "hosts", "active_peers", "peers",
        "tasks", "decisions", "last_decision_at"]));
      fill("schedulers", records(o.schedulers, ["cluster", "scheduler", "partitions"]));
      fill("jobstates", records(o.jobs, ["state", "jobs"]));
      if (!panels) {
        panels = (await api("/dashboards")).filter(p => ["p2p_vs_origin", "active_peers"].includes(p.name));
        for (const p of panels) { const b = panelBox(p); boxes.push(b); document.getElementById("ovpanels").append(b.box); }
      }
      await Promise.all(boxes.map(b => b.refresh()));
      fill("projections", records(await api("/projections"), ["projection", "stream", "last_seq",
        "stream_last_seq", "lag"]));
    };
  },
  tasks() {
    const q = searchBox("search tasks by id or URL", () => refresh());
    $view.replaceChildren(h("h2", {}, "Tasks"), q, h("div", { id: "list" }));
    const refresh = async () => fill("list", records(await api("/tasks?q=" + enc(q.value)),
      ["task_id", "url", "state", "content_length", "piece_count", "peers", "succeeded_peers",
       "failed_peers", "updated_at"], r => "#/tasks/" + enc(r.task_id)));
    return refresh;
  },
  task(id) {
    $view.replaceChildren(h("h2", {}, "Task " + id), h("div", { id: "task" }),
      ...section("Peers", "peers"), ...section("Scheduling decisions", "decisions"));
    return async () => {
      const t = await api("/tasks/" + enc(id));
      fill("task", details(t.task));
      fill("peers", records(t.peers, ["peer_id", "host_id", "state", "pieces", "bytes_from_origin",
        "bytes_from_peers", "failed_pieces", "reschedules", "duration_ms", "reason"],
        r => `#/tasks/${enc(id)}/peers/${enc(r.peer_id)}`));
      fill("decisions", records(t.decisions, ["decided_at", "addressee", "kind", "parents",
        "latency_ms", "reason"]));
    };
  },
  peer(task, id) {
    $view.replaceChildren(h("h2", {}, "Peer " + id), h("div", { id: "peer" }),
      ...section("Pieces per minute", "minutes"), ...section("Scheduling decisions", "decisions"));
    return async () => {
      const p = await api(`/tasks/${enc(task)}/peers/${enc(id)}`);
      fill("peer", h("div", {}, details(p.peer), h("a", { href: "#/tasks/" + enc(task) }, "← task")));
      fill("minutes", records(p.pieces_per_minute, ["minute", "pieces_from_origin", "bytes_from_origin",
        "pieces_from_peers", "bytes_from_peers", "failed_pieces", "corrupt_pieces", "cost_ms"]));
      fill("decisions", records(p.decisions, ["decided_at", "kind", "parents", "latency_ms", "reason"]));
    };
  },
  peers() {
    const q = searchBox("search peers by peer, host or task id", () => refresh());
    const state = h("select", { onchange: () => refresh() }, ...["", "registered", "running",
      "back_to_source", "succeeded", "failed", "left"].map(s => h("option", { value: s }, s || "any state")));
    $view.replaceChildren(h("h2", {}, "Peers"), q, " ", state, h("div", { id: "list" }));
    const refresh = async () => fill("list", records(
      await api(`/peers?q=${enc(q.value)}&state=${enc(state.value)}`),
      ["peer_id", "task_id", "host_id", "state", "pieces", "bytes_from_origin", "bytes_from_peers",
       "duration_ms", "updated_at"], r => `#/tasks/${enc(r.task_id)}/peers/${enc(r.peer_id)}`));
    return refresh;
  },
  hosts() {
    const q = searchBox("search hosts by id, name or IP", () => refresh());
    $view.replaceChildren(h("h2", {}, "Hosts"), q, h("div", { id: "list" }));
    const refresh = async () => fill("list", records(await api("/hosts?q=" + enc(q.value)),
      ["host_id", "cluster", "seed", "state", "ip", "idc", "location", "uploads_running",
       "upload_limit", "load", "last_keepalive"]));
    return refresh;
  },
  jobs() {
    $view.replaceChildren(h("h2", {}, "Jobs"), jobForm(), h("div", { id: "list" }));
    return async () => fill("list", records(await api("/jobs"), ["job_id", "kind", "state", "url",
      "task_id", "scope", "host_count", "requested_at", "finished_at", "reason"],
      r => "#/jobs/" + enc(r.job_id)));
  },
  job(id) {
    $view.replaceChildren(h("h2", {}, "Job " + id), h("div", { id: "job" }), ...section("Hosts", "hosts"));
    return async () => {
      const j = await api("/jobs/" + enc(id));
      fill("job", details(j.job));
      fill("hosts", records(j.hosts, ["host_id", "task_id", "state", "reason", "updated_at"]));
    };
  },
  sql() {
    const text = h("textarea", { rows: 6, spellcheck: "false" });
    text.value = "SELECT state, count(*) AS peers FROM peers GROUP BY state ORDER BY peers DESC";
    const out = h("div", { id: "result" });
    const run = async () => {
      const resp = await request("/sql", { method: "POST", body: JSON.stringify({ sql: text.value }) });
      const body = await resp.json();
      if (!resp.ok) { out.replaceChildren(h("p", { class: "error" }, body.detail)); return; }
      const note = body.truncated ? h("p", {}, `first ${body.rows.length} rows only`) : "";
      out.replaceChildren(Charts.table(body), note);
    };
    $view.replaceChildren(h("h2", {}, "SQL (read-only, over the live projections)"), text,
      h("div", {}, h("button", { onclick: run }, "Run")), out);
    return async () => {};  // results change only when asked
  },
  dashboards() {
    const grid = h("div", { class: "grid" });
    $view.replaceChildren(h("h2", {}, "Dashboards"), grid);
    let boxes;
    return async () => {
      if (!boxes) {
        boxes = (await api("/dashboards")).map(panelBox);
        grid.append(...boxes.map(b => b.box));
      }
      await Promise.all(boxes.map(b => b.refresh()));
    };
  },
};

// Start a job with Dragonfly's body (POST /api/v1/jobs), then watch it on its own page.
function jobForm() {
  const pick = (name, options) => h("select", { name }, ...options.map(o => h("option", { value: o }, o)));
  const type = pick("type", ["preheat", "sync_peers", "get_task", "delete_task"]);
  const url = h("input", { name: "url", placeholder: "URL (a file, or an image manifest)", size: "60" });
  const kind = pick("kind", ["file", "image"]);
  const scope = pick("scope", ["single_seed_peer", "all_seed_peers", "all_peers"]);
  const platform = h("input", { name: "platform", placeholder: "platform (linux/amd64)", size: "18" });
  const message = h("span", { class: "error" });
  const sync = () => {
    for (const field of [url, kind, scope, platform]) field.disabled = type.value === "sync_peers";
    for (const field of [kind, scope, platform]) field.disabled ||= type.value !== "preheat";
  };
  type.addEventListener("change", sync);
  sync();
  return h("form", { class: "newjob", onsubmit: async (event) => {
    event.preventDefault();
    const args = type.value === "sync_peers" ? {} : type.value === "preheat"
      ? { type: kind.value, url: url.value, scope: scope.value, ...(platform.value ? { platform: platform.value } : {}) }
      : { url: url.value };
    const resp = await request("/jobs", { method: "POST", body: JSON.stringify({ type: type.value, args }) });
    const body = await resp.json();
    if (!resp.ok) { message.textContent = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); return; }
    location.hash = "#/jobs/" + enc(body.job_id);
  } }, type, url, kind, scope, platform, h("button", { type: "submit" }, "Start job"), message);
}

function signIn(reason) {
  const name = h("input", { name: "name", autocomplete: "username", placeholder: "user", required: "" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password",
    placeholder: "password", required: "" });
  const message = h("p", { class: "error" }, reason || "");
  const form = h("form", { class: "signin", onsubmit: async (event) => {
    event.preventDefault();
    const resp = await fetch("/api/v1/users/signin", { method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: name.value, password: password.value }) });
    const body = await resp.json();
    if (!resp.ok) { message.textContent = body.detail; return; }
    session.save(body);
    start();
  } }, h("h2", {}, "Sign in"), name, password, h("button", { type: "submit" }, "Sign in"), message);
  $view.replaceChildren(form);
  name.focus();
}
async function signOut() {
  try { await request("/users/signout", { method: "POST" }); } finally { session.clear(); start(); }
}
function showUser() {
  const user = session.user;
  document.body.classList.toggle("signed-out", !user);
  document.body.classList.toggle("root", user?.role === "root");
  $who.replaceChildren(...(user ? [
    h("span", {}, user.user_id + (user.tenant ? ` · tenant ${user.tenant}` : "") + ` · ${user.role}`),
    " ", h("a", { href: "#", id: "signout", onclick: (e) => { e.preventDefault(); signOut(); } }, "sign out"),
  ] : []));
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a"))
    a.classList.toggle("active", a.getAttribute("href") === "#/" + parts[0]);
  if (parts[0] === "tasks" && parts[3]) return views.peer(parts[1], parts[3]);
  if (parts[0] === "tasks" && parts[1]) return views.task(parts[1]);
  if (parts[0] === "jobs" && parts[1]) return views.job(parts[1]);
  return (views[parts[0]] || views.overview)();
}

let current = null, generation = 0;
async function tick(gen) {
  if (gen !== generation) return;
  try {
    await current();
    $status.className = ""; $status.title = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (err instanceof SignedOut) { generation += 1; showUser(); signIn("your session ended; sign in again"); return; }
    $status.className = "stale"; $status.title = String(err);
    if (!$view.querySelector(".error")) $view.append(h("p", { class: "error" }, String(err)));
  }
  if (gen === generation) setTimeout(() => tick(gen), REFRESH_MS);
}
function start() {
  generation += 1;
  showUser();
  if (!session.token) { signIn(); return; }
  current = route();
  tick(generation);
}
window.addEventListener("hashchange", start);
start();
