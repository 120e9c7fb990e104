// The annotation page: shows the current cluster, lets the expert tick members, sends decisions.
// Plain DOM code, no framework and no network beyond this server.
"use strict";

const state = { cluster: null, ticked: new Set(), last: null, busy: false, sha: null };
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

function render(s) {
  const p = s.progress;
  $("progress-text").textContent = `${p.done} done · ${p.left} left`;
  $("progress-fill").style.width = p.total ? (100 * p.done / p.total).toFixed(1) + "%" : "100%";
  $("annotator").textContent = s.annotator ? "annotator: " + s.annotator : "";
  state.last = s.last_decision;
  state.sha = s.clusters_sha256;
  $("undo").disabled = !s.last_decision;
  if (s.notes && s.notes.length) {
    $("notes").hidden = false;
    $("notes").textContent = s.notes.join(" ");
  }
  const c = s.cluster;
  state.cluster = c;
  state.ticked = new Set();
  const grid = $("grid"), head = $("cluster-head"), links = $("links");
  grid.replaceChildren(); head.replaceChildren(); links.replaceChildren();
  $("finished").hidden = !!c;
  for (const b of document.querySelectorAll("button.decide, #tick-all")) b.disabled = !c || !!(c && c.decision);
  if (!c) return;

  head.appendChild(el("h2", { text: `Cluster ${c.id}` }));
  head.appendChild(el("span", { class: "facts",
    text: `${c.size} images · ${c.new_pairs} new pair${c.new_pairs === 1 ? "" : "s"} · proposal ${c.position} of ${p.total}` }));
  if (c.decision) {
    head.appendChild(el("span", { class: "decided", text: `already decided: ${c.decision.decision} (undo it to change)` }));
  }
  if (location.hash) {
    const back = el("a", { href: "#", class: "back", text: "back to the queue" });
    head.appendChild(back);
  }

  // known partners of each member inside this cluster
  const partners = new Map();
  for (const l of c.links) {
    for (const [x, y] of [[l.a, l.b], [l.b, l.a]]) {
      if (!partners.has(x)) partners.set(x, []);
      partners.get(x).push({ n: y, type: l.type, source: l.source });
    }
  }

  for (const m of c.members) {
    const box = el("input", { type: "checkbox", id: "tick-" + m.n, "data-uid": m.uid, "aria-label": "tick member " + m.n });
    box.addEventListener("change", () => toggle(m.uid, box.checked));
    const img = el("img", { src: `/image/${encodeURIComponent(m.uid)}?size=256`, alt: m.uid, loading: "lazy" });
    img.addEventListener("error", () => { img.replaceWith(el("div", { class: "broken", text: "image unreadable" })); });
    img.addEventListener("click", () => zoom(m));
    const caption = el("div", { class: "caption" });
    for (const [label, value] of m.caption) caption.appendChild(el("div", { class: "f-" + label, text: value, title: label }));
    if (!m.caption.length) caption.appendChild(el("div", { class: "f-uid", text: m.uid }));
    const badges = el("div", { class: "badges" });
    for (const q of partners.get(m.n) || []) {
      badges.appendChild(el("span", {
        class: `badge t-${q.type.toLowerCase()} ${q.source === "annotated" ? "pending" : ""}`,
        title: `${q.type} with #${q.n} (${q.source})`,
        text: `${TYPE_SHORT[q.type] || q.type} #${q.n}`,
      }));
    }
    const label = el("label", { class: "tick", for: "tick-" + m.n }, [box, el("span", { class: "num", text: String(m.n) })]);
    const card = el("article", { class: "card", id: "card-" + m.n, "data-uid": m.uid, title: m.uid },
      [el("div", { class: "thumb" }, [img]), label, caption, badges]);
    grid.appendChild(card);
  }

  if (c.links.length) {
    links.appendChild(el("h3", { text: "Already connected in this cluster" }));
    const ul = el("ul");
    for (const l of c.links) {
      ul.appendChild(el("li", {}, [
        el("span", { class: `badge t-${l.type.toLowerCase()} ${l.source === "annotated" ? "pending" : ""}`, text: l.type }),
        el("span", { text: ` #${l.a} — #${l.b}` }),
        el("span", { class: "src", text: l.source === "annotated" ? " (annotated, not yet accepted)" : "" }),
      ]));
    }
    links.appendChild(ul);
  } else {
    links.appendChild(el("p", { class: "none", text: "No known connections among these images yet." }));
  }
}

function toggle(uid, on) {
  if (on) state.ticked.add(uid); else state.ticked.delete(uid);
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("ticked", state.ticked.has(card.dataset.uid));
  }
}

function toggleNumber(n) {
  const box = $("tick-" + n);
  if (!box) return;
  box.checked = !box.checked;
  toggle(box.dataset.uid, box.checked);
}

function toggleAll() {
  if (!state.cluster) return;
  const all = state.ticked.size < state.cluster.members.length;
  for (const m of state.cluster.members) {
    $("tick-" + m.n).checked = all;
    toggle(m.uid, all);
  }
}

function zoom(m) {
  const z = $("zoom");
  z.querySelector("img").src = `/image/${encodeURIComponent(m.uid)}?size=1024`;
  z.querySelector("p").textContent = `#${m.n} · ` + Object.entries(m.meta).map(([k, v]) => `${k}: ${v}`).join(" · ");
  z.hidden = false;
}

async function decide(name) {
  if (state.busy || !state.cluster) return;
  state.busy = true;
  const label = document.querySelector(`button[data-decision="${name}"]`).textContent.replace(/^\s*\S+\s*/, "");
  try {
    const r = await call("POST", "/api/decision",
      { cluster: state.cluster.id, decision: name, ticked: [...state.ticked], clusters_sha256: state.sha });
    if (location.hash) history.replaceState(null, "", location.pathname);
    render(r.state);
    say(`Saved “${label}” for cluster ${r.state.last_decision.cluster}: ${r.edges.length} connection${r.edges.length === 1 ? "" : "s"}.`, "ok");
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

// "#cluster=ID" opens one cluster (e.g. from the map); otherwise the next one of the queue.
async function load() {
  let s;
  try {
    s = await call("GET", "/api/state");
  } catch (e) {
    say("Cannot load the state: " + e.message, "error");
    return;
  }
  const m = location.hash.match(/^#cluster=(\d+)$/);
  if (m) {
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
  const k = ev.key.toLowerCase();
  if (/^[0-9]$/.test(k)) { toggleNumber(k === "0" ? 10 : Number(k)); ev.preventDefault(); return; }
  if (k === "a") { toggleAll(); return; }
  if (k === "u") { undo(); return; }
  const b = document.querySelector(`button.decide[data-key="${k}"]`);
  if (b && !b.disabled) { ev.preventDefault(); decide(b.dataset.decision); }
});

for (const b of document.querySelectorAll("button.decide")) b.addEventListener("click", () => decide(b.dataset.decision));
$("undo").addEventListener("click", undo);
$("tick-all").addEventListener("click", toggleAll);
$("zoom").addEventListener("click", () => { $("zoom").hidden = true; });
window.addEventListener("hashchange", load);
load();
