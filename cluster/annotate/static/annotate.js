// The annotation page: shows the current cluster page by page, lets the expert tick members, sends decisions.
// Plain DOM code, no framework and no network beyond this server. A big cluster never comes whole: the
// server sends one page of members (GET /api/cluster/<id>?page=N); the ticks of the whole cluster are kept
// here as "all except ..." or "none except ...", and sent as `unticked` or `ticked`, whichever is shorter.
"use strict";

const state = {
  cluster: null, page: 1, last: null, busy: false, sha: null,
  sel: { all: false, except: new Set() },  // ticked(uid) = all XOR except.has(uid)
  groups: new Map(),  // a split's sub-groups being made: uid -> group number (1, 2, ...)
  cursor: -1,  // the keyboard's focus: index of a card of the visible page (-1: none)
  search: document.body.dataset.search === "1",  // the server was started with --index
  query: null,  // the last search: {uid, box}
  zoomed: null,  // the enlarged picture: {uid, size: [w, h] in its own pixels, once known}
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
function setTick(uid, on) {
  if (state.cluster && state.cluster.decision) return;  // read-only: the decision's own ticks stay shown
  if (on === state.sel.all) state.sel.except.delete(uid); else state.sel.except.add(uid);
}
const clusterName = (id) => (id < -1 ? `Proposal ${-id - 1}` : `Cluster ${id}`);  // a proposal's id is -1 - N
const clusterTitle = (c) => clusterName(c.id);

// a decision as its button names it ("Confirm, reject the rest"), not as the log stores it ("confirm_reject")
function decisionLabel(name) {
  const b = document.querySelector(`button.decide[data-decision="${name}"]`);
  return b ? b.textContent.replace(/^\s*\S+\s*/, "").trim() : name;
}

function render(s) {
  const p = s.progress;
  $("progress-text").textContent = `${p.done} done · ${p.left} left`;
  $("progress-fill").style.width = p.total ? (100 * p.done / p.total).toFixed(1) + "%" : "100%";
  $("annotator").textContent = s.annotator ? "annotator: " + s.annotator : "";
  state.last = s.last_decision;
  state.sha = s.clusters_sha256;
  state.annotator = s.annotator;
  state.independent = !!s.independent;
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
  if (!c || !state.cluster || c.id !== state.cluster.id) {
    state.sel = { all: false, except: new Set() };
    state.groups = new Map();
    $("rest-group").checked = false;  // like the sub-groups, it belongs to the cluster it was ticked on
    closeSearch(); // its results were judged against the cluster that was open (members, "add to this cluster")
  }
  if (!c || !state.cluster || c.id !== state.cluster.id || c.page !== state.page) state.cursor = -1;
  if (c && c.decision) {  // read-only: the ticks and sub-groups of the decision in force, on this page
    state.sel = { all: false, except: new Set(c.decision.ticked_here || []) };
    state.groups = new Map(Object.entries(c.decision.groups_here || {}));
  }
  state.cluster = c;
  state.page = c ? c.page : 1;
  const grid = $("grid"), head = $("cluster-head"), links = $("links");
  grid.replaceChildren(); head.replaceChildren(); links.replaceChildren();
  $("finished").hidden = !!c;
  $("pager").hidden = !c || c.pages <= 1;
  for (const b of document.querySelectorAll("button.decide, .tickbar button, #rest-group")) b.disabled = !c || !!(c && c.decision);
  if (!c) { $("tick-count").textContent = ""; return; }

  head.appendChild(el("h2", { text: clusterTitle(c) }));
  const newPairs = `${fmt(c.new_pairs)} new pair${c.new_pairs === 1 ? "" : "s"}`;
  head.appendChild(el("span", { class: "facts",
    text: `${fmt(c.size)} images · ${newPairs} · proposal ${fmt(c.position)} of ${fmt(state.total || c.position)}` +
      (c.kind === "proposal" ? ` · from the map (id ${c.id})` : "") }));
  if (c.note) head.appendChild(el("span", { class: "note", text: c.note }));
  if (c.decision) {
    head.appendChild(el("span", { class: "decided", text: `already decided: ${decisionLabel(c.decision.decision)} (undo it to change)` }));
  }
  showVerdicts(c, head);
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
  showAdded(c.added || []);
  showLinks(c, links);
  showTicks();
}

function card(m, partners) {
  const box = el("input", { type: "checkbox", id: "tick-" + m.n, "data-uid": m.uid, "aria-label": "tick member " + m.n });
  box.disabled = !!(state.cluster && state.cluster.decision);  // a decided cluster is shown as decided
  box.checked = isTicked(m.uid);
  box.addEventListener("change", () => { setTick(m.uid, box.checked); showTicks(); });
  // an image known not to decode shows its reason; one found broken on loading says what it can
  const img = m.unreadable ? el("div", { class: "broken", text: "image unreadable: " + m.unreadable, title: m.unreadable })
    : el("img", { src: `/image/${encodeURIComponent(m.uid)}?size=256`, alt: m.uid, loading: "lazy" });
  img.addEventListener("error", () => { img.replaceWith(el("div", { class: "broken", text: "image unreadable" })); });
  if (!m.unreadable) img.addEventListener("click", () => zoom(m.uid, `#${m.n} · ` + metaText(m.meta)));
  const caption = el("div", { class: "caption" });
  // every field in full (long ones wrap): what tells two versions apart is often after a comma
  for (const [label, value] of m.caption) caption.appendChild(el("div", { class: "f-" + label, text: value, title: `${label}: ${value}` }));
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
  const like = state.search && !m.unreadable ? likeButton(m.uid) : null;
  const match = state.search && !m.unreadable && state.cluster && state.cluster.size > 1 ? matchButton(m) : null;
  const tools = like || match ? el("div", { class: "card-tools" }, [like, match]) : null;
  return el("article", { class: "card", id: "card-" + m.n, "data-uid": m.uid, title: m.uid },
    [el("div", { class: "thumb" }, [img]), label, caption, badges, explainBox(m), tools]);
}

// -- why this image is in the proposal (GET /api/cluster's `explain`, see cluster/annotate/explain_routes.py) --
const fmtD = (x) => (x === null || x === undefined) ? "–" : x < 0.001 && x > 0 ? x.toExponential(1) : x.toFixed(4);

function explainBox(m) {
  const e = m.explain;
  if (!e) return null;
  const box = el("div", { class: "explain" });
  const dist = [];
  if (e.nearest) dist.push(`nearest #${e.nearest.n ?? "?"} at ${fmtD(e.nearest.distance)}`);
  dist.push(`reach ${fmtD(e.reachability)}`, `core ${fmtD(e.core_distance)}`);
  box.appendChild(el("div", { class: "x-dist", text: dist.join(" · "), title: "what joined it to this proposal: the " +
    "cosine distance to its nearest other member (" + (e.nearest ? e.nearest.uid : "signatures not available") +
    "), and its OPTICS reachability and core distance from clusters.csv" }));
  for (const [type, p] of Object.entries(e.partners || {})) box.appendChild(partnerList(type, p));
  if (e.group) {
    box.appendChild(el("div", { class: "x-group", text: `known group ${groupName(e.group)}: ${e.group.in_cluster} of ${e.group.size} here`,
      title: `pattern group ${e.group.name} (connections.csv): ${e.group.size} images, ${e.group.in_cluster} of them in this proposal` }));
  }
  return box;
}

// a known connection type: its count, and on expand (or hover) the partners by number in this cluster or uid, with titles
function partnerList(type, p) {
  const names = p.shown.map((q) => (q.n ? `#${q.n}` : q.uid) + (q.title ? ` — ${q.title}` : ""));
  const more = p.count > p.shown.length ? `… and ${fmt(p.count - p.shown.length)} more` : null;
  const d = el("details", { class: `x-partners t-${type.toLowerCase()}-text`, title: [...names, more].filter(Boolean).join("\n") });
  d.appendChild(el("summary", { text: `${fmt(p.count)} known ${type}` }));
  const ul = el("ul");
  for (const t of names) ul.appendChild(el("li", { text: t }));
  if (more) ul.appendChild(el("li", { class: "muted", text: more }));
  d.appendChild(ul);
  return d;
}

// "matching regions" (the app runs with --index): where this image's stored regions best match each other member
// of the page shown, drawn as boxes on both pictures in the side panel
function matchButton(m) {
  const b = el("button", { type: "button", class: "ghost match", text: "matching regions",
    title: "which regions of this image match the other members (from the search index's stored regions)" });
  b.addEventListener("click", (ev) => { ev.stopPropagation(); showMatches(m); });
  return b;
}

async function showMatches(m) {
  const c = state.cluster;
  if (!c) return;
  $("search").hidden = false;
  document.body.classList.add("searching");
  state.query = null;
  $("search-title").textContent = `Where #${m.n} matches the others`;
  $("search-query").replaceChildren(el("p", { class: "muted", text: "comparing the stored regions…" }));
  $("search-results").replaceChildren();
  try {
    const doc = await call("GET", `/api/match?uid=${encodeURIComponent(m.uid)}&cluster=${c.id}&page=${c.page}`);
    $("search-query").replaceChildren(el("p", { text: `#${m.n} (${m.uid}) against the ${doc.pairs.length} other members of ` +
      `this page, best matching pair of regions first; the yellow boxes are the two regions that match best.` }));
    $("search-results").replaceChildren(...doc.pairs.map((p) => matchCard(m, doc, p)));
  } catch (e) {
    $("search-query").replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

function matchCard(m, doc, p) {
  const thumb = (u) => `/image/${encodeURIComponent(u)}?size=256`;
  const pics = el("div", { class: "pair" }, [picture(m.uid, thumb(m.uid), p.box, doc.size),
    picture(p.uid, thumb(p.uid), p.other_box, p.other_size)]);
  return el("article", { class: "hit match-pair", "data-uid": p.uid }, [pics, el("div", { class: "caption" }, [
    el("div", { class: "f-score", text: `#${m.n} ↔ #${p.n} · regions cosine ${p.regions.toFixed(3)} · whole images ${p.whole.toFixed(3)}` }),
  ])]);
}

// -- known pattern groups the clustering did not find (GET /api/missed), listed once under the page --
async function loadMissed() {
  let doc;
  try { doc = await call("GET", "/api/missed"); } catch (e) { return; }
  const box = $("missed");
  box.replaceChildren();
  box.hidden = false;
  const d = el("details", { open: "" });
  d.appendChild(el("summary", { text: `Known groups the clustering missed (${fmt(doc.total)})` }));
  d.appendChild(el("p", { class: "muted", text: doc.summary }));
  for (const g of doc.groups) d.appendChild(missedGroup(g));
  if (doc.total > doc.groups.length) {
    d.appendChild(el("p", { class: "muted", text: `… and ${fmt(doc.total - doc.groups.length)} smaller groups (GET /api/missed?limit=1000 lists up to 1,000)` }));
  }
  box.appendChild(d);
}

function missedGroup(g) {
  const ul = el("ul");
  for (const m of g.members.slice(0, 40)) {
    const where = m.cluster === null || m.cluster === undefined ? el("span", { class: "muted", text: "not clustered" })
      : m.cluster < 0 ? el("span", { class: "noise", text: "noise" })
      : el("a", { href: `#cluster=${m.cluster}&uid=${encodeURIComponent(m.uid)}`, text: `cluster ${m.cluster}` });
    const img = el("img", { src: `/image/${encodeURIComponent(m.uid)}?size=256`, alt: m.uid, loading: "lazy" });
    img.addEventListener("click", () => zoom(m.uid, [m.uid, m.title].filter(Boolean).join(" · ")));
    ul.appendChild(el("li", { "data-uid": m.uid, title: m.uid + (m.title ? " — " + m.title : "") }, [
      img, el("span", { class: "m-title", text: m.title || m.uid }), where]));
  }
  const more = g.members.length > 40 ? el("p", { class: "muted", text: `… and ${g.members.length - 40} more` }) : null;
  return el("section", { class: "missed-group", "data-group": g.name }, [
    el("h4", { text: `${groupName(g)} · ${fmt(g.size)} images` }), ul, more]);
}

// a known pattern group as a person reads it: the title of the member that names it, then that uid
function groupName(g) {
  return g.title ? `“${g.title}” (${g.name})` : g.name;
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
  $("tick-count").textContent = !c ? "" : c.decision
    ? `${fmt(c.decision.ticked)} of ${fmt(c.size)} ticked (decided)` : `${fmt(tickedCount())} of ${fmt(c.size)} ticked`;
  showGroups();
}

// -- several annotators: the verdicts on this cluster, and the clusters decided differently ----------------------
function showVerdicts(c, head) {
  const vs = c.verdicts || [];
  if (!vs.length) return;
  head.appendChild(el("span", { class: "verdicts", text: "decided by " + vs.map((v) => `${v.annotator}: ${decisionLabel(v.decision)}`).join(" · ") }));
}

async function showDisagreements() {
  const box = $("disagreements");
  if (!box.hidden) { box.hidden = true; return; }
  let doc;
  try { doc = await call("GET", "/api/disagreements"); } catch (e) { say(e.message, "error"); return; }
  const list = el("ul");
  for (const d of doc.disagreements) {
    const who = d.annotators.map((a) => `${a.annotator}: ${decisionLabel(a.decision)}` + (a.groups ? ` (${a.groups.length} groups)` : ` (${a.ticked} ticked)`)).join(" · ");
    list.appendChild(el("li", { "data-cluster": String(d.cluster) }, [
      d.in_queue ? el("a", { href: `#cluster=${d.cluster}`, text: `cluster ${d.cluster}` }) : el("span", { text: `cluster ${d.cluster} (another clusters file)` }),
      el("span", { text: ` · ${fmt(d.size)} images · ${who}` }),
      el("div", { class: "muted", text: d.differs.join("; ") })]));
  }
  box.replaceChildren(el("h3", { text: `Disagreements (${doc.disagreements.length}) · annotators: ${doc.annotators.join(", ") || "none"}` }),
    doc.disagreements.length ? list : el("p", { class: "muted", text: "No cluster was decided differently by two annotators." }));
  box.hidden = false;
}

// -- a split: members sorted into sub-groups, each a pattern of its own ------------------------------------------
function showGroups() {
  for (const card of document.querySelectorAll(".card")) {
    const g = state.groups.get(card.dataset.uid);
    let chip = card.querySelector(".group-chip");
    if (!g) { if (chip) chip.remove(); continue; }
    if (!chip) {
      chip = el("button", { type: "button", class: "group-chip", title: "sub-group of this member (click: take it out)" });
      const uid = card.dataset.uid;
      chip.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (state.cluster && state.cluster.decision) return;  // a decided split is shown, not edited
        state.groups.delete(uid);
        showTicks();
      });
      card.appendChild(chip);
    }
    chip.textContent = "group " + g;
    chip.dataset.group = String(g);
    chip.className = `group-chip g-${((g - 1) % 6) + 1}`;
  }
  const n = new Set(state.groups.values()).size;
  $("group-count").textContent = n ? `${fmt(state.groups.size)} in ${n} sub-group${n === 1 ? "" : "s"}` : "";
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("cursor", card.id === cursorCardId());
}

function groupTicked() {  // the ticked members become a new sub-group (and are unticked)
  const c = state.cluster;
  if (!c || c.decision) return;
  if (state.sel.all) {
    say("A sub-group is made of members ticked one by one or page by page (not “select all”): make groups of the " +
      "few, then tick “the rest is a group”.", "error");
    return;
  }
  if (!state.sel.except.size) { say("Tick the members of the new sub-group first.", "error"); return; }
  const g = Math.max(0, ...state.groups.values()) + 1;
  for (const uid of state.sel.except) state.groups.set(uid, g);
  say(`Sub-group ${g}: ${fmt(state.sel.except.size)} member(s). Split the cluster with p when every group is made.`, "ok");
  state.sel = { all: false, except: new Set() };
  showTicks();
}

function splitBody(body) {
  const byGroup = new Map();
  for (const [uid, g] of state.groups) { if (!byGroup.has(g)) byGroup.set(g, []); byGroup.get(g).push(uid); }
  body.groups = [...byGroup.keys()].sort((a, b) => a - b).map((g) => byGroup.get(g));
  body.rest_group = $("rest-group").checked;
  return body;
}

// -- the keyboard's focus cursor: j / k (or ↓ / ↑) move it over the cards, space ticks the card it is on --------
function cursorCardId() {
  const m = state.cluster && state.cluster.members[state.cursor];
  return m ? "card-" + m.n : null;
}

async function moveCursor(d) {
  const c = state.cluster;
  if (!c || !c.members.length) return;
  let i = state.cursor < 0 ? (d > 0 ? 0 : c.members.length - 1) : state.cursor + d;
  if (i >= c.members.length && c.page < c.pages) { await goPage(c.page + 1); i = 0; }
  else if (i < 0 && c.page > 1) { await goPage(c.page - 1); i = state.cluster.members.length - 1; }
  state.cursor = Math.max(0, Math.min(i, state.cluster.members.length - 1));
  showTicks();
  const card = $(cursorCardId());
  if (card) card.scrollIntoView({ block: "nearest" });
}

function tickCursor() {
  const m = state.cluster && state.cluster.members[state.cursor];
  if (!m) return;
  setTick(m.uid, !isTicked(m.uid));
  showTicks();
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
  if (!state.cluster || state.cluster.decision) return;
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

const metaText = (meta) => Object.entries(meta || {}).filter(([, v]) => v).map(([k, v]) => `${k}: ${v}`).join(" · ");

// The enlarged picture; with search on, a box dragged on it searches that detail (see the drag code below).
function zoom(uid, text) {
  const z = $("zoom");
  state.zoomed = { uid, size: null };
  z.querySelector("img").src = `/image/${encodeURIComponent(uid)}?size=1024`;
  z.querySelector("p").textContent = text;
  $("drawn").hidden = true;
  z.hidden = false;
  if (state.search) {
    call("GET", `/api/search/size?uid=${encodeURIComponent(uid)}`)
      .then((r) => { if (state.zoomed && state.zoomed.uid === uid) state.zoomed.size = r.size; })
      .catch((e) => say(e.message, "error"));
  }
}

function closeSearch() { $("search").hidden = true; document.body.classList.remove("searching"); }
function closeZoom() { $("zoom").hidden = true; state.zoomed = null; drag = null; }

function decisionBody(name) {
  const body = { cluster: state.cluster.id, decision: name, clusters_sha256: state.sha };
  if (state.sel.all) body.unticked = [...state.sel.except];
  else body.ticked = [...state.sel.except];
  return name === "split" ? splitBody(body) : body;
}

async function decide(name) {
  if (state.busy || !state.cluster) return;
  state.busy = true;
  const label = decisionLabel(name);
  try {
    const r = await call("POST", "/api/decision", decisionBody(name));
    if (location.hash) history.replaceState(null, "", location.pathname);
    render(r.state);
    say(`Saved “${label}” for ${clusterName(r.state.last_decision.cluster).toLowerCase()}: ${fmt(r.n_edges)} connection${r.n_edges === 1 ? "" : "s"}.`, "ok");
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
    const wasAdd = state.last.decision === "add", back = clusterName(state.last.cluster);
    const r = await call("POST", "/api/undo", { decision: state.last.id });
    if (location.hash) history.replaceState(null, "", location.pathname);
    render(r.state);
    say((wasAdd ? "Undone: the image added from the search is taken out of the cluster again."
      : `Undone: ${back} is back for review.`) + (r.note ? " " + r.note : ""), "ok");
    if (wasAdd && state.query && !$("search").hidden) search(state.query);
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
  // "#cluster=ID&uid=U" (an image clicked on the map): the page of the cluster that holds U, its card marked
  const m = location.hash.match(/^#cluster=(-?\d+)(?:&uid=(.+))?$/);
  if (m && !p) {
    try {
      s.cluster = await call("GET", "/api/cluster/" + m[1] + (m[2] ? "?uid=" + m[2] : ""));
    } catch (e) {
      say(`Cluster ${m[1]}: ${e.message}`, "error");
    }
  }
  render(s);
  if (m && m[2]) markCard(decodeURIComponent(m[2]));
}

function markCard(uid) {
  const card = [...document.querySelectorAll(".card")].find((c) => c.dataset.uid === uid);
  if (!card) return;
  card.classList.add("focus");
  // scroll only when the card's top is hidden (under the top bar or the bar of buttons): a card of the first rows
  // leaves the cluster's heading, and whether it is decided already, in view
  const top = card.getBoundingClientRect().top;
  const above = document.querySelector("header.top").getBoundingClientRect().bottom;
  const below = document.querySelector("footer.actions").getBoundingClientRect().top;
  if (top < above || top > below - 120) card.scrollIntoView({ block: "center" });
}

// -- search (the server was started with --index) ------------------------------------------------
// "more like this" on a card, on a result or on the enlarged picture searches the whole image; a box dragged
// on the enlarged picture searches that detail. The box is drawn in screen pixels and sent in the image's own
// pixels (its size comes from /api/search/size), which the server crops and embeds.

function likeButton(uid) {
  const b = el("button", { type: "button", class: "ghost like", text: "more like this", title: "search the collection for images like this one" });
  b.addEventListener("click", (ev) => { ev.stopPropagation(); search({ uid }); });
  return b;
}

// A box [x, y, w, h] in an image of size [W, H], drawn in percent over its picture (so at any display size).
function boxDiv(box, size, cls) {
  if (!box || !size || !size[0] || !size[1]) return null;
  const d = el("div", { class: cls });
  const pct = (v, of) => (100 * v / of).toFixed(2) + "%";
  Object.assign(d.style, { left: pct(box[0], size[0]), top: pct(box[1], size[1]), width: pct(box[2], size[0]), height: pct(box[3], size[1]) });
  return d;
}

function picture(uid, thumb, box, size) {
  const img = thumb ? el("img", { src: thumb, alt: uid }) : el("div", { class: "broken", text: "no picture in this collection" });
  return el("div", { class: "pic" }, [img, boxDiv(box, size, "hitbox")]);
}

async function search(q) {
  const c = state.cluster;
  let url = `/api/search?uid=${encodeURIComponent(q.uid)}&k=24`;
  if (q.box) url += `&box=${q.box.join(",")}`;
  if (c) url += `&cluster=${c.id}`;
  state.query = q;
  state.searchCluster = c ? c.id : null;
  $("search").hidden = false;
  document.body.classList.add("searching");
  $("search-title").textContent = q.box ? "Where else does this detail appear?" : "More like this";
  $("search-query").replaceChildren(el("p", { class: "muted", text: "searching…" }));
  $("search-results").replaceChildren();
  try {
    showResults(await call("GET", url));
  } catch (e) {
    $("search-query").replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

function showResults(doc) {
  const q = doc.query;
  const what = q.box ? `detail ${q.box[0]},${q.box[1]} (${q.box[2]} × ${q.box[3]} px) of ${q.uid}` : `the whole of ${q.uid}`;
  $("search-query").replaceChildren(
    picture(q.uid, `/image/${encodeURIComponent(q.uid)}?size=256`, q.box, q.size),
    el("p", { text: `${doc.results.length} results for ${what}` + (state.cluster ? ` · adding to ${clusterTitle(state.cluster)}` : "") }),
    state.cluster ? el("p", { class: "muted", text: state.cluster.decision
      ? "An added image is joined to the members this cluster's decision grouped."
      : "An added image is joined to the members ticked when you add it (to every member when none is): tick the ones that share the pattern first." }) : null,
    ...q.notes.map((n) => el("p", { class: "muted", text: n })));
  $("search-results").replaceChildren(...doc.results.map((h, i) => hitCard(h, i + 1, q)));
}

function hitCard(h, rank, q) {
  const pic = picture(h.uid, h.thumb, h.box, h.size);
  if (h.thumb) {
    pic.querySelector("img").addEventListener("click", () => zoom(h.uid, [h.uid, h.title, h.author, h.date].filter(Boolean).join(" · ")));
  }
  const text = el("div", { class: "caption" }, [
    el("div", { class: "f-score", title: "score: how far the match stands above this index's unrelated images, in standard deviations (the ranking; compare within one query); cosine: the matched vector's own similarity",
      text: `#${rank} · score ${h.score.toFixed(3)} (cosine ${h.similarity.toFixed(3)})` + (h.box ? " · a detail matched" : " · whole image") }),
    h.title ? el("div", { class: "f-title", text: h.title }) : null,
    h.author ? el("div", { class: "f-author", text: h.author }) : null,
    el("div", { class: "f-date", text: [h.date, h.uid].filter(Boolean).join(" · ") }),
  ]);
  const add = el("button", { type: "button", class: "add" });
  const why = !state.cluster ? "no cluster is open" : h.in_cluster ? "in this cluster" : h.added ? "added ✓"
    : !h.in_collection ? "not in this collection" : state.cluster.decision && state.cluster.decision.decision === "wrong" ? "cluster judged wrong" : null;
  add.textContent = why || "add to this cluster";
  add.disabled = !!why;
  add.addEventListener("click", () => addHit(h, q, add));
  const tools = el("div", { class: "hit-tools" }, [h.in_collection ? likeButton(h.uid) : null, add]);
  return el("article", { class: "hit", "data-uid": h.uid }, [pic, text, tools]);
}

async function addHit(h, q, button) {
  if (state.busy || !state.cluster) return;
  if (state.searchCluster !== state.cluster.id) { // never add to a cluster the results were not made for
    say("These results were found for another cluster; search again from this one.", "error");
    return;
  }
  state.busy = true;
  const body = { ...decisionBody("add"), uid: h.uid, query: { uid: q.uid, box: q.box, score: h.score } };
  delete body.decision;
  try {
    const r = await call("POST", "/api/add", body);
    button.textContent = "added ✓";
    button.disabled = true;
    state.last = r.state.last_decision;
    $("undo").disabled = !state.last;
    if (state.cluster && r.view.id === state.cluster.id) showAdded(r.view.added);
    say(`Added ${h.uid} to ${clusterTitle(state.cluster)}: ${fmt(r.n_edges)} connection${r.n_edges === 1 ? "" : "s"} (undo with u).`, "ok");
  } catch (e) {
    say(e.message, "error");
  } finally {
    state.busy = false;
  }
}

// The images added to this cluster from a search (decisions in force, not yet accepted).
function showAdded(added) {
  const box = $("added");
  box.hidden = !added.length;
  box.replaceChildren();
  if (!added.length) return;
  box.appendChild(el("h3", { text: "Added from a search" }));
  const ul = el("ul");
  for (const a of added) {
    const found = a.query ? ` (found from ${a.query.uid}${a.query.box ? ", a detail" : ""})` : "";
    ul.appendChild(el("li", { "data-uid": a.uid }, [
      el("img", { src: `/image/${encodeURIComponent(a.uid)}?size=256`, alt: a.uid, loading: "lazy" }),
      el("span", { text: a.uid + found }),
    ]));
  }
  box.appendChild(ul);
}

// -- drawing a box on the enlarged picture -------------------------------------------------------
let drag = null;  // {x0, y0, x1, y1} in client pixels while the mouse is down
let dragged = false;  // the last press drew a box (so its click, outside the picture, does not close it)

// Where the picture's pixels are on screen: the <img> box less the bands `object-fit: contain` leaves.
function contentRect(img) {
  const r = img.getBoundingClientRect();
  const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
  const w = img.naturalWidth * s, h = img.naturalHeight * s;
  return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h };
}

function startDrag(ev) {
  if (ev.button !== 0) return;
  ev.preventDefault();
  drag = { x0: ev.clientX, y0: ev.clientY, x1: ev.clientX, y1: ev.clientY };
  dragged = false;
}

function moveDrag(ev) {
  if (!drag) return;
  drag.x1 = ev.clientX; drag.y1 = ev.clientY;
  const d = $("drawn");
  Object.assign(d.style, { left: Math.min(drag.x0, drag.x1) + "px", top: Math.min(drag.y0, drag.y1) + "px",
    width: Math.abs(drag.x1 - drag.x0) + "px", height: Math.abs(drag.y1 - drag.y0) + "px" });
  d.hidden = false;
}

// The dragged box in the image's own pixels (clipped to the picture), or null when too small to mean a detail.
function imageBox(d, rect, size) {
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const x0 = clamp(Math.min(d.x0, d.x1) - rect.left, 0, rect.width), x1 = clamp(Math.max(d.x0, d.x1) - rect.left, 0, rect.width);
  const y0 = clamp(Math.min(d.y0, d.y1) - rect.top, 0, rect.height), y1 = clamp(Math.max(d.y0, d.y1) - rect.top, 0, rect.height);
  if (x1 - x0 < 6 || y1 - y0 < 6) return null;
  const sx = size[0] / rect.width, sy = size[1] / rect.height;
  const x = Math.round(x0 * sx), y = Math.round(y0 * sy);
  return [x, y, Math.max(1, Math.round(x1 * sx) - x), Math.max(1, Math.round(y1 * sy) - y)];
}

function endDrag() {
  if (!drag) return;
  const d = drag;
  drag = null;
  dragged = Math.abs(d.x1 - d.x0) >= 6 || Math.abs(d.y1 - d.y0) >= 6;
  const z = state.zoomed;
  if (!z) return;
  if (!z.size) { say("The picture's size is not known yet; draw the box again.", "error"); return; }
  const box = imageBox(d, contentRect($("zoom").querySelector("img")), z.size);
  if (!box) { $("drawn").hidden = true; return; }
  closeZoom();
  search({ uid: z.uid, box });
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!$("zoom").hidden) { if (ev.key === "Escape" || ev.key === " ") closeZoom(); return; }
  if (ev.key === "Escape" && !$("search").hidden) { closeSearch(); return; }
  if (ev.key === "ArrowRight" || ev.key === "PageDown") { ev.preventDefault(); goPage(state.page + 1); return; }
  if (ev.key === "ArrowLeft" || ev.key === "PageUp") { ev.preventDefault(); goPage(state.page - 1); return; }
  if (ev.key === "A") { selectCluster(tickedCount() < (state.cluster ? state.cluster.size : 0)); return; }
  if (ev.key === "ArrowDown" || ev.key === "j") { ev.preventDefault(); moveCursor(1); return; }
  if (ev.key === "ArrowUp" || ev.key === "k") { ev.preventDefault(); moveCursor(-1); return; }
  if (ev.key === " " && state.cursor >= 0) { ev.preventDefault(); tickCursor(); return; }
  if (ev.key === "g") { groupTicked(); return; }
  const k = ev.key.toLowerCase();
  if (/^[0-9]$/.test(k)) { toggleNumber(k === "0" ? 10 : Number(k)); ev.preventDefault(); return; }
  if (k === "a") { togglePage(); return; }
  if (k === "u") { undo(); return; }
  const b = document.querySelector(`button.decide[data-key="${k}"]`);
  if (b && !b.disabled) { ev.preventDefault(); decide(b.dataset.decision); }
});

for (const b of document.querySelectorAll("button.decide")) b.addEventListener("click", () => decide(b.dataset.decision));
$("undo").addEventListener("click", undo);
// a button of the bar clicked with the mouse gives its focus back: kept, the next space (which ticks the card under
// the cursor) or Enter would press it again: decide the next cluster unseen, undo one more, untick the page
document.querySelector("footer.actions").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (b) b.blur();
});
$("tick-all").addEventListener("click", togglePage);
$("select-all").addEventListener("click", () => selectCluster(true));
$("select-none").addEventListener("click", () => selectCluster(false));
$("new-group").addEventListener("click", groupTicked);
$("show-disagreements").addEventListener("click", showDisagreements);
$("prev-page").addEventListener("click", () => goPage(state.page - 1));
$("next-page").addEventListener("click", () => goPage(state.page + 1));
$("zoom").addEventListener("click", (ev) => { if (ev.target === $("zoom") && !dragged) closeZoom(); dragged = false; });
$("zoom-close").addEventListener("click", closeZoom);
$("search-close").addEventListener("click", closeSearch);
if (state.search) {
  $("zoom-like").addEventListener("click", () => { const u = state.zoomed.uid; closeZoom(); search({ uid: u }); });
  const img = $("zoom").querySelector("img");
  img.addEventListener("mousedown", startDrag);
  $("zoom").addEventListener("mousedown", (ev) => { if (ev.target === $("zoom")) startDrag(ev); }); // from just outside

  window.addEventListener("mousemove", moveDrag);
  window.addEventListener("mouseup", endDrag);
}
window.addEventListener("hashchange", load);
load();
loadMissed();
