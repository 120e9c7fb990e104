// The annotation page: shows the current cluster page by page, lets the expert tick members, sends decisions.
// Plain DOM code, no framework and no network beyond this server. A big cluster never comes whole: the
// server sends one page of members (GET /api/cluster/<id>?page=N); the ticks of the whole cluster are kept
// here as "all except ..." or "none except ...", and sent as `unticked` or `ticked`, whichever is shorter.
"use strict";

const state = {
  cluster: null, page: 1, last: null, busy: false, sha: null,
  sel: { all: false, except: new Set() },  // ticked(uid) = all XOR except.has(uid)
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.appendChild(c);
  return e;
}

function say(text, kind = "info") {
  const m = $("message");
  m.textContent = text;
  m.className = "message " + kind;
}

async function call(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(url, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: resp.statusText }; }
  if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
  return data;
}

const TYPE_SHORT = { POSITIVE: "P", NEGATIVE: "N", DUPLICATE: "D", SIMILAR: "S" };
const fmt = (n) => n.toLocaleString("en-US");

function isTicked(uid) { return state.sel.all !== state.sel.except.has(uid); }
function tickedCount() {
  const c = state.cluster;
  return !c ? 0 : (state.sel.all ? c.size - state.sel.except.size : state.sel.except.size);
}
function setTick(uid, on) { if (on === state.sel.all) state.sel.except.delete(uid); else state.sel.except.add(uid); }
function clusterTitle(c) { return c.kind === "proposal" ? `Proposal ${-c.id - 1}` : `Cluster ${c.id}`; }

function render(s) {
  const p = s.progress;
  $("progress-text").textContent = `${p.done} done · ${p.left} left`;
  $("progress-fill").style.width = p.total ? (100 * p.done / p.total).toFixed(1) + "%" : "100%";
  $("annotator").textContent = s.annotator ? "annotator: " + s.annotator : "";
  state.last = s.last_decision;
  state.sha = s.clusters_sha256;
  state.total = p.total;
  $("undo").disabled = !s.last_decision;
  if (s.notes && s.notes.length) {
    $("notes").hidden = false;
    $("notes").textContent = s.notes.join(" ");
  }
  show(s.cluster);
}

// Show one page of a cluster; a new cluster starts with nothing ticked.
function show(c) {
  if (!c || !state.cluster || c.id !== state.cluster.id) state.sel = { all: false, except: new Set() };
  state.cluster = c;
  state.page = c ? c.page : 1;
  const grid = $("grid"), head = $("cluster-head"), links = $("links");
  grid.replaceChildren(); head.replaceChildren(); links.replaceChildren();
  $("finished").hidden = !!c;
  $("pager").hidden = !c || c.pages <= 1;
  for (const b of document.querySelectorAll("button.decide, .tickbar button")) b.disabled = !c || !!(c && c.decision);
  if (!c) { $("tick-count").textContent = ""; return; }

  head.appendChild(el("h2", { text: clusterTitle(c) }));
  const newPairs = `${fmt(c.new_pairs)} new pair${c.new_pairs === 1 ? "" : "s"}`;
  head.appendChild(el("span", { class: "facts",
    text: `${fmt(c.size)} images · ${newPairs} · proposal ${fmt(c.position)} of ${fmt(state.total || c.position)}` +
      (c.kind === "proposal" ? ` · from the map (id ${c.id})` : "") }));
  if (c.note) head.appendChild(el("span", { class: "note", text: c.note }));
  if (c.decision) {
    head.appendChild(el("span", { class: "decided", text: `already decided: ${c.decision.decision} (undo it to change)` }));
  }
  if (location.hash) head.appendChild(el("a", { href: "#", class: "back", text: "back to the queue" }));
  $("page-info").textContent = `page ${c.page} of ${fmt(c.pages)} · members ${fmt((c.page - 1) * c.page_size + 1)}–` +
    `${fmt(Math.min(c.page * c.page_size, c.size))} of ${fmt(c.size)}`;
  $("prev-page").disabled = c.page <= 1;
  $("next-page").disabled = c.page >= c.pages;
  $("select-all").textContent = `select all ${fmt(c.size)}`;

  // known partners of each member shown (links that touch this page)
  const partners = new Map();
  for (const l of c.links) {
    for (const [x, y] of [[l.a, l.b], [l.b, l.a]]) {
      if (!partners.has(x)) partners.set(x, []);
      partners.get(x).push({ n: y, type: l.type, source: l.source });
    }
  }
  for (const m of c.members) grid.appendChild(card(m, partners.get(m.n) || []));
  showLinks(c, links);
  showTicks();
}

function card(m, partners) {
  const box = el("input", { type: "checkbox", id: "tick-" + m.n, "data-uid": m.uid, "aria-label": "tick member " + m.n });
  box.checked = isTicked(m.uid);
  box.addEventListener("change", () => { setTick(m.uid, box.checked); showTicks(); });
  // an image known not to decode shows its reason; one found broken on loading says what it can
  const img = m.unreadable ? el("div", { class: "broken", text: "image unreadable: " + m.unreadable, title: m.unreadable })
    : el("img", { src: `/image/${encodeURIComponent(m.uid)}?size=256`, alt: m.uid, loading: "lazy" });
  img.addEventListener("error", () => { img.replaceWith(el("div", { class: "broken", text: "image unreadable" })); });
  if (!m.unreadable) img.addEventListener("click", () => zoom(m));
  const caption = el("div", { class: "caption" });
  for (const [label, value] of m.caption) caption.appendChild(el("div", { class: "f-" + label, text: value, title: label }));
  if (!m.caption.length) caption.appendChild(el("div", { class: "f-uid", text: m.uid }));
  const badges = el("div", { class: "badges" });
  for (const q of partners) {
    badges.appendChild(el("span", {
      class: `badge t-${q.type.toLowerCase()} ${q.source === "annotated" ? "pending" : ""}`,
      title: `${q.type} with #${q.n} (${q.source})`,
      text: `${TYPE_SHORT[q.type] || q.type} #${q.n}`,
    }));
  }
  const label = el("label", { class: "tick", for: "tick-" + m.n }, [box, el("span", { class: "num", text: String(m.n) })]);
  return el("article", { class: "card", id: "card-" + m.n, "data-uid": m.uid, title: m.uid },
    [el("div", { class: "thumb" }, [img]), label, caption, badges]);
}

function showLinks(c, links) {
  if (!c.links.length) {
    links.appendChild(el("p", { class: "none", text: c.pages > 1 ? "No known connections on this page yet."
      : "No known connections among these images yet." }));
    return;
  }
  links.appendChild(el("h3", { text: c.pages > 1 ? "Already connected (members of this page)" : "Already connected in this cluster" }));
  const ul = el("ul");
  for (const l of c.links) {
    ul.appendChild(el("li", {}, [
      el("span", { class: `badge t-${l.type.toLowerCase()} ${l.source === "annotated" ? "pending" : ""}`, text: l.type }),
      el("span", { text: ` #${l.a} — #${l.b}` }),
      el("span", { class: "src", text: l.source === "annotated" ? " (annotated, not yet accepted)" : "" }),
    ]));
  }
  links.appendChild(ul);
}

// the ticks of the visible page, and the count over the whole cluster
function showTicks() {
  for (const card of document.querySelectorAll(".card")) {
    const on = isTicked(card.dataset.uid);
    card.classList.toggle("ticked", on);
    const box = card.querySelector("input");
    if (box) box.checked = on;
  }
  const c = state.cluster;
  $("tick-count").textContent = c ? `${fmt(tickedCount())} of ${fmt(c.size)} ticked` : "";
}

function toggleNumber(i) {  // i-th member of the visible page (1..10)
  const m = state.cluster && state.cluster.members[i - 1];
  if (!m) return;
  setTick(m.uid, !isTicked(m.uid));
  showTicks();
}

function togglePage() {  // all of this page ticked -> untick them, else tick them
  if (!state.cluster) return;
  const ms = state.cluster.members;
  const on = !ms.every((m) => isTicked(m.uid));
  for (const m of ms) setTick(m.uid, on);
  showTicks();
}

function selectCluster(on) {
  if (!state.cluster) return;
  state.sel = { all: on, except: new Set() };
  showTicks();
}

async function goPage(page) {
  const c = state.cluster;
  if (!c || page < 1 || page > c.pages || page === c.page || state.busy) return;
  state.busy = true;
  try {
    show(await call("GET", `/api/cluster/${c.id}?page=${page}`));
    window.scrollTo(0, 0);
  } catch (e) {
    say(e.message, "error");
  } finally {
    state.busy = false;
  }
}

function zoom(m) {
  const z = $("zoom");
  z.querySelector("img").src = `/image/${encodeURIComponent(m.uid)}?size=1024`;
  z.querySelector("p").textContent = `#${m.n} · ` + Object.entries(m.meta).map(([k, v]) => `${k}: ${v}`).join(" · ");
  z.hidden = false;
}

function decisionBody(name) {
  const body = { cluster: state.cluster.id, decision: name, clusters_sha256: state.sha };
  if (state.sel.all) body.unticked = [...state.sel.except];
  else body.ticked = [...state.sel.except];
  return body;
}

async function decide(name) {
  if (state.busy || !state.cluster) return;
  state.busy = true;
  const label = document.querySelector(`button[data-decision="${name}"]`).textContent.replace(/^\s*\S+\s*/, "");
  try {
    const r = await call("POST", "/api/decision", decisionBody(name));
    if (location.hash) history.replaceState(null, "", location.pathname);
    render(r.state);
    say(`Saved “${label}” for cluster ${r.state.last_decision.cluster}: ${fmt(r.n_edges)} connection${r.n_edges === 1 ? "" : "s"}.`, "ok");
  } catch (e) {
    say(e.message, "error");
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (state.busy || !state.last) return;
  state.busy = true;
  try {
    const r = await call("POST", "/api/undo", { decision: state.last.id });
    if (location.hash) history.replaceState(null, "", location.pathname);
    render(r.state);
    say("Undone: the cluster is back for review." + (r.note ? " " + r.note : ""), "ok");
  } catch (e) {
    say(e.message, "error");
  } finally {
    state.busy = false;
  }
}

// "#propose=<url-encoded JSON list of uids>" (the map's lasso): ask, then queue it as a proposal and open it.
async function propose(raw) {
  let uids;
  try {
    uids = JSON.parse(decodeURIComponent(raw));
    if (!Array.isArray(uids) || !uids.every((u) => typeof u === "string")) throw new Error("not a list of uids");
  } catch (e) {
    say("The link's proposal is not a JSON list of uids: " + e.message, "error");
    return null;
  }
  if (!window.confirm(`Judge these ${fmt(uids.length)} images, selected on the map, as a new proposal?`)) {
    history.replaceState(null, "", location.pathname);
    return null;
  }
  try {
    const r = await call("POST", "/api/proposal", { uids, note: "selected on the map" });
    history.replaceState(null, "", `${location.pathname}#cluster=${r.cluster}`);
    say(r.new ? `Proposal ${-r.cluster - 1} queued (${fmt(r.view.size)} images).` : "This selection was proposed before: opened it.", "ok");
    return r.view;
  } catch (e) {
    say("Cannot make the proposal: " + e.message, "error");
    return null;
  }
}

// "#cluster=ID" opens one cluster (e.g. from the map); otherwise the next one of the queue.
async function load() {
  let s;
  try {
    s = await call("GET", "/api/state");
  } catch (e) {
    say("Cannot load the state: " + e.message, "error");
    return;
  }
  const p = location.hash.match(/^#propose=(.+)$/);
  if (p) {
    const view = await propose(p[1]);
    if (view) { s = await call("GET", "/api/state"); s.cluster = view; }
  }
  const m = location.hash.match(/^#cluster=(-?\d+)$/);
  if (m && !p) {
    try {
      s.cluster = await call("GET", "/api/cluster/" + m[1]);
    } catch (e) {
      say(`Cluster ${m[1]}: ${e.message}`, "error");
    }
  }
  render(s);
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!$("zoom").hidden) { if (ev.key === "Escape" || ev.key === " ") $("zoom").hidden = true; return; }
  if (ev.key === "ArrowRight" || ev.key === "PageDown") { ev.preventDefault(); goPage(state.page + 1); return; }
  if (ev.key === "ArrowLeft" || ev.key === "PageUp") { ev.preventDefault(); goPage(state.page - 1); return; }
  if (ev.key === "A") { selectCluster(tickedCount() < (state.cluster ? state.cluster.size : 0)); return; }
  const k = ev.key.toLowerCase();
  if (/^[0-9]$/.test(k)) { toggleNumber(k === "0" ? 10 : Number(k)); ev.preventDefault(); return; }
  if (k === "a") { togglePage(); return; }
  if (k === "u") { undo(); return; }
  const b = document.querySelector(`button.decide[data-key="${k}"]`);
  if (b && !b.disabled) { ev.preventDefault(); decide(b.dataset.decision); }
});

for (const b of document.querySelectorAll("button.decide")) b.addEventListener("click", () => decide(b.dataset.decision));
$("undo").addEventListener("click", undo);
$("tick-all").addEventListener("click", togglePage);
$("select-all").addEventListener("click", () => selectCluster(true));
$("select-none").addEventListener("click", () => selectCluster(false));
$("prev-page").addEventListener("click", () => goPage(state.page - 1));
$("next-page").addEventListener("click", () => goPage(state.page + 1));
$("zoom").addEventListener("click", () => { $("zoom").hidden = true; });
window.addEventListener("hashchange", load);
load();
