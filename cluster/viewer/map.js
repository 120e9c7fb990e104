// The map viewer: WebGL points (regl-scatterplot, vendored in lib/), thumbnails loaded only when shown,
// search, filters, a lasso whose selection becomes a proposal in the annotation app.
// Data: MAPDATA (see cluster/map_data.py). Served by the annotation app, window.MAPAPP names its routes;
// opened from a folder, MAPAPP is null and the page works alone.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
  "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1"];
const NOISE = "#b8b8b8";
const THUMBS_AT = 150;     // images drawn on the map once zoomed in (THUMBS_ZOOM) with at most this many in view
const THUMBS_ZOOM = 0.5;   // camera distance (1 = the whole map) below which images are drawn
const LINKS_AT = 20000;    // known links drawn once at most this many points are in view
const PAGE = 40;           // images per page of a list

function decode(s, T) {
  const bin = atob(s), u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  return new T(u.buffer);
}

const D = MAPDATA.points_;
const N = D.n;
const X = decode(D.x, Float32Array), Y = decode(D.y, Float32Array);
const C = decode(D.cluster, Int32Array), G = decode(D.group, Int32Array), YEAR = decode(D.year, Float32Array);
const HAS = decode(D.thumbs.has, Uint8Array), LINKS = decode(D.links, Int32Array);
const APP = window.MAPAPP || null;
const $ = id => document.getElementById(id);
const canvas = $("cv"), tip = $("tip"), sel = $("sel"), status = $("status");

// ---- columns (metadata), loaded after the first frame -------------------------------------------------
const COLS = D.columns.map(c => c.name);
const FIELDS = D.fields || {};  // title/author/date/place -> column numbers, any name a museum gave them
const cols = [];   // j -> {values, codes}
function loadColumns() {
  let j = 0;
  const next = () => {
    if (j >= COLS.length) { showStatus(); return; }
    const s = document.createElement("script"), k = j++;
    s.src = D.columns[k].file;
    s.onerror = () => { status.textContent = "could not load " + D.columns[k].file; next(); };
    MAPDATA.when(k, c => {  // eslint-disable-line no-loop-func
      const T = c.width === 1 ? Uint8Array : c.width === 2 ? Uint16Array : Uint32Array;
      cols[k] = { values: c.values, codes: decode(c.codes, T) };
      if (k === 0) scheduleOverlay();  // thumbnails need the uids
      showStatus(); next();
    });
    document.head.appendChild(s);
  };
  next();
}
function cell(j, i) { const c = cols[j]; return c ? c.values[c.codes[i]] : undefined; }
function uid(i) { return cell(0, i); }
function meta(name, i) {  // the first of the field's columns with a value for this image (as data/metadata.py reads it)
  for (const j of FIELDS[name] || []) { const v = cell(j, i); if (v) return v; }
  return undefined;
}
function thumbURL(i) {
  if (!HAS[i]) return null;
  const name = D.thumbs.names[i] || (uid(i) === undefined ? null : uid(i) + ".jpg");
  if (name === null) return null;
  return (APP ? APP.thumbs : D.thumbs.base) + encodeURIComponent(name);
}

// ---- the scatter plot -------------------------------------------------------------------------------
const catCluster = new Float32Array(N), catGroup = new Float32Array(N);
for (let i = 0; i < N; i++) {
  catCluster[i] = C[i] >= 0 ? 1 + (C[i] % PALETTE.length) : 0;
  catGroup[i] = G[i] >= 0 ? 1 + (G[i] % PALETTE.length) : 0;
}
const COLOURS = [NOISE, ...PALETTE];
const sp = createScatterplot({
  canvas, width: "auto", height: "auto", backgroundColor: "#fafafa", pointColor: COLOURS, colorBy: "valueA",
  pointSize: N > 200000 ? 2 : N > 20000 ? 3 : 5, pointSizeSelected: 2, pointOutlineWidth: 2,
  pointColorActive: "#d00000", pointColorHover: "#000000", opacityBy: "density",
  lassoColor: "#d00000", actionKeyMap: { lasso: "shift", merge: "cmd" }, deselectOnDblClick: false, deselectOnEscape: true,
});
let colourBy = "cluster";
function pointsData() { return { x: X, y: Y, valueA: colourBy === "group" ? catGroup : catCluster }; }
const ready = sp.draw(pointsData(), { zDataType: "categorical" }).then(() => {
  window.MAP.drawn = performance.now();
  loadColumns();
});

// ---- status line, hover --------------------------------------------------------------------------------
let filtered = null, filteredMaskCache = null;
function filteredMask() {  // 1 for each point the filters show (null: no filter)
  if (!filtered) return null;
  if (!filteredMaskCache) { filteredMaskCache = new Uint8Array(N); for (const i of filtered) filteredMaskCache[i] = 1; }
  return filteredMaskCache;
}
function showStatus() {
  const loaded = cols.filter(Boolean).length;
  status.textContent = `${(filtered ? filtered.length : N).toLocaleString()} of ${N.toLocaleString()} images` +
    (loaded < COLS.length ? ` \u00b7 loading metadata ${loaded}/${COLS.length}` : "");
}
showStatus();
let mouse = [0, 0];
window.addEventListener("mousemove", e => { mouse = [e.clientX, e.clientY]; });
function el(tag, text, cls) { const e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; }
function caption(i) {
  const shown = ["title", "author", "date", "place"].map(k => meta(k, i)).filter(Boolean);
  return shown.length ? shown : [1, 2, 3].filter(j => j < COLS.length).map(j => cell(j, i)).filter(Boolean);
}
function describe(i, box) {
  const parts = caption(i);
  box.appendChild(el("b", parts[0] || uid(i) || "#" + i));
  if (parts.length > 1) box.appendChild(el("div", parts.slice(1).join(" \u00b7 "), "small"));
  box.appendChild(el("div", "uid " + (uid(i) ?? "\u2026") + (C[i] >= 0 ? " \u00b7 cluster " + C[i] : " \u00b7 noise") +
    (G[i] >= 0 ? " \u00b7 group " + D.groups[G[i]] : ""), "small"));
  if (D.unreadable[i]) box.appendChild(el("div", "image unreadable: " + D.unreadable[i], "small err"));
}
function thumb(i) {
  const url = thumbURL(i);
  if (url) {
    const im = el("img"); im.alt = uid(i) || ""; im.loading = "lazy";
    // the cache is reached by a path relative to the map: a map moved away from its collection says so
    im.onerror = () => im.replaceWith(el("div", "image not found: was the map or the collection moved?", "noimg"));
    im.src = url;
    return im;
  }
  return el("div", D.unreadable[i] ? "unreadable" : "no image", "noimg");
}
sp.subscribe("pointOver", i => {
  tip.replaceChildren();
  if (thumbURL(i)) tip.appendChild(thumb(i));
  describe(i, tip);
  tip.style.display = "block";
  tip.style.left = Math.min(mouse[0] + 14, window.innerWidth - 290) + "px";
  tip.style.top = Math.min(mouse[1] + 14, window.innerHeight - 230) + "px";
});
sp.subscribe("pointOut", () => { tip.style.display = "none"; });

// ---- lists (a cluster, a selection, search results), page by page --------------------------------------
function pager(total, page, go) {
  const bar = el("div", null, "pager"), last = Math.max(0, Math.ceil(total / PAGE) - 1);
  const prev = el("button", "\u2190"), nextb = el("button", "\u2192");
  prev.disabled = page <= 0; nextb.disabled = page >= last;
  prev.onclick = () => go(page - 1); nextb.onclick = () => go(page + 1);
  bar.append(prev, el("span", `page ${page + 1} of ${last + 1}`, "small"), nextb);
  return bar;
}
function listInto(box, rows, page, again) {
  box.replaceChildren();
  if (rows.length > PAGE) box.appendChild(pager(rows.length, page, again));
  for (const i of rows.slice(page * PAGE, (page + 1) * PAGE)) {
    const row = el("div", null, "m"), text = el("div");
    row.appendChild(thumb(i)); describe(i, text); row.appendChild(text);
    row.onclick = () => { sp.zoomToPoints([i], { padding: 0.2, transition: true }); sp.select([i]); };
    box.appendChild(row);
  }
}
function members(c) { const out = []; for (let i = 0; i < N; i++) if (C[i] === c) out.push(i); return out; }

// The annotation page's address: the app's own page when it serves the map; opened from the folder, the address
// given at map build time (`cluster map --app-address`), or the one typed in a selection's "app at" box.
function appAddress() { return (localStorage.getItem("map-app-address") || D.app_address).replace(/\/?$/, "/"); }
function judgeLink(i) {
  const hash = `#cluster=${C[i]}` + (uid(i) === undefined ? "" : "&uid=" + encodeURIComponent(uid(i)));
  const a = el("a", `judge cluster ${C[i]} in the annotation page`, "judge");
  if (APP) { a.href = APP.page + hash; return [a]; }
  a.href = appAddress() + hash; a.target = "_blank"; a.rel = "noopener";
  return [a, el("div", `opens ${appAddress()} in a new tab: start the annotation app there first ` +
    "(python -m cluster annotate --collection DIR --clusters the clusters.csv of this map), or serve this map " +
    "from it (--map MAP_DIR)", "small")];
}
function showPoint(i) {
  sel.replaceChildren();
  const head = el("div");
  describe(i, head); sel.appendChild(head);
  if (C[i] < 0) {
    sel.appendChild(el("div", "noise: in no cluster, so there is nothing to judge in the annotation page; select it " +
      "with the images it belongs with (lasso) and judge them as a proposal", "small"));
    return;
  }
  const rows = members(C[i]);
  sel.appendChild(el("h3", `Cluster ${C[i]} (${rows.length} images)`));
  const pick = el("button", "select this cluster"); pick.type = "button";
  pick.onclick = () => sp.select(rows);
  sel.append(pick, ...judgeLink(i));  // judge this cluster there, at the page of this image
  const box = el("div"); sel.appendChild(box);
  const go = p => listInto(box, rows, p, go); go(0);
}

function selectionUids(rows) { return rows.map(uid).filter(u => u !== undefined); }
function download(rows) {
  const lines = ["uid", ...selectionUids(rows).map(u => /[",\n]/.test(u) ? '"' + u.replace(/"/g, '""') + '"' : u)];
  // with a byte-order mark, as every CSV of the tool: Excel then reads accents right
  const a = el("a"); a.href = URL.createObjectURL(new Blob(["\ufeff" + lines.join("\n") + "\n"], { type: "text/csv" }));
  a.download = "selection.csv"; document.body.appendChild(a); a.click(); a.remove();
}
async function propose(rows, note) {
  const uids = selectionUids(rows);
  if (uids.length < rows.length) { note.textContent = "the uids are still loading; try again in a moment"; return; }
  if (APP) {
    const r = await fetch(APP.proposal, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ uids, note: "lasso on the map" }) });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { note.textContent = body.error || ("the annotation app answered " + r.status); return; }
    window.location.href = APP.open(body);
    return;
  }
  const addr = $("app-addr").value.replace(/\/?$/, "/");
  localStorage.setItem("map-app-address", addr);
  const link = addr + "#propose=" + encodeURIComponent(JSON.stringify(uids));
  if (link.length > 1500000) {  // browsers cut links at about 2 MB
    note.textContent = "too many images for a link: open the map through the annotation app " +
      "(cluster annotate --map MAP_DIR), or download the uids";
    return;
  }
  window.open(link, "_blank");
}
function showSelection(rows) {
  sel.replaceChildren();
  sel.appendChild(el("h3", `Selection (${rows.length.toLocaleString()} images)`));
  const row = el("div", null, "row"), note = el("div", null, "small");
  const open = el("button", "judge in the annotation app"); open.type = "button";
  open.onclick = () => propose(rows, note);
  const csv = el("button", "download uids"); csv.type = "button"; csv.onclick = () => download(rows);
  const clear = el("button", "clear"); clear.type = "button"; clear.onclick = () => sp.deselect();
  row.append(open, csv, clear);
  if (!APP) {
    const addr = el("input"); addr.id = "app-addr"; addr.size = 28;
    addr.value = appAddress();
    row.append(el("span", "app at", "small"), addr);
  }
  sel.append(row, note);
  const box = el("div"); sel.appendChild(box);
  const go = p => listInto(box, rows, p, go); go(0);
}
let selected = [], chosen = new Set();  // the selection, and as a set for the overlay's per-frame lookups
sp.subscribe("select", ({ points }) => {
  selected = Array.from(points); chosen = new Set(selected);
  if (selected.length === 1) showPoint(selected[0]); else showSelection(selected);
  sel.scrollIntoView({ block: "start" });  // below a long search result list it would be out of sight
  scheduleOverlay();
});
sp.subscribe("deselect", () => { selected = []; chosen = new Set(); sel.replaceChildren(); scheduleOverlay(); });

// ---- overlays: known links and thumbnails when zoomed in -------------------------------------------------
const linksCv = $("links"), lctx = linksCv.getContext("2d"), thumbsBox = $("thumbs");
let overlayQueued = false;
function scheduleOverlay() {
  if (overlayQueued) return;
  overlayQueued = true;
  requestAnimationFrame(() => { overlayQueued = false; drawOverlay(); });
}
function drawOverlay() {
  const r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  if (linksCv.width !== Math.round(r.width * dpr)) { linksCv.width = Math.round(r.width * dpr); linksCv.height = Math.round(r.height * dpr); }
  lctx.setTransform(dpr, 0, 0, dpr, 0, 0); lctx.clearRect(0, 0, r.width, r.height);
  // the points in view cost a search of the spatial index: only when few enough can be in view to be drawn
  // over (the share of the map in view shrinks as the camera distance squared)
  const dist = sp.get("cameraDistance");
  const inView = N * dist * dist <= 4 * LINKS_AT ? sp.get("pointsInView") : [];
  if (!inView.length) { thumbsBox.replaceChildren(); return; }
  if (inView.length <= LINKS_AT && LINKS.length) {
    const seen = new Uint8Array(N); for (const i of inView) seen[i] = 1;
    const shown = filteredMask();
    lctx.strokeStyle = "rgba(0,0,0,0.3)"; lctx.lineWidth = 0.7; lctx.beginPath();
    for (let k = 0; k < LINKS.length; k += 2) {
      const a = LINKS[k], b = LINKS[k + 1];
      if ((!seen[a] && !seen[b]) || (shown && !(shown[a] && shown[b]))) continue;
      const [ax, ay] = sp.getScreenPosition(a), [bx, by] = sp.getScreenPosition(b);
      lctx.moveTo(ax, ay); lctx.lineTo(bx, by);
    }
    lctx.stroke();
  }
  const zoomed = dist < THUMBS_ZOOM && inView.length <= THUMBS_AT;
  const want = zoomed ? inView.filter(i => thumbURL(i)) : [];
  const have = new Map(Array.from(thumbsBox.children, im => [Number(im.dataset.i), im]));
  for (const [i, im] of have) if (!want.includes(i)) im.remove();
  for (const i of want) {
    let im = have.get(i);
    if (!im) {
      im = el("img"); im.dataset.i = i; im.alt = uid(i) || ""; im.onerror = () => im.remove();  // see thumb()
      im.src = thumbURL(i); thumbsBox.appendChild(im);
    }
    const [x, y] = sp.getScreenPosition(i);
    im.style.left = x + "px"; im.style.top = y + "px";
    im.classList.toggle("chosen", chosen.has(i));
  }
}
let lastView = "";
sp.subscribe("view", () => {
  const now = `${sp.get("cameraTarget")} ${sp.get("cameraDistance")}`;
  if (now !== lastView) { lastView = now; tip.style.display = "none"; }  // the view moved: no stale tip
  scheduleOverlay();
});

// ---- search ------------------------------------------------------------------------------------------
// text as search compares it: lower case, accents dropped ("Dürer" = "durer"), runs of spaces as one
function fold(text) { return text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase().replace(/\s+/g, " ").trim(); }
function matching(j, needle) {  // a flag per distinct value of column j: does it contain needle (folded)?
  const c = cols[j]; if (!c) return null;
  const hit = new Uint8Array(c.values.length), want = fold(needle);
  if (!c.folded) c.folded = c.values.map(v => (v ? fold(v) : ""));  // once per column: later searches are cheap
  c.folded.forEach((v, k) => { if (v && v.includes(want)) hit[k] = 1; });
  return hit;
}
function search(text) {
  const box = $("results"); box.replaceChildren();
  const needle = text.trim().toLowerCase();
  if (!needle) return;
  const which = [0, ...(FIELDS.title || []), ...(FIELDS.author || [])];
  if (which.some(j => !cols[j])) { box.appendChild(el("div", "metadata still loading\u2026", "small")); setTimeout(() => search($("search").value), 500); return; }
  const hits = which.map(j => [cols[j].codes, matching(j, needle)]);
  const rows = [];
  for (let i = 0; i < N; i++) if (hits.some(([codes, h]) => h[codes[i]])) rows.push(i);
  box.appendChild(el("div", `${rows.length.toLocaleString()} found`, "small"));
  const list = el("div"); box.appendChild(list);
  const go = p => listInto(list, rows, p, go); go(0);
  window.MAP.lastSearch = rows;
}
let searchTimer = 0;
$("search").addEventListener("input", e => { clearTimeout(searchTimer); searchTimer = setTimeout(() => search(e.target.value), 250); });

// ---- filters -----------------------------------------------------------------------------------------
function clusterTest(text) {
  const t = text.trim().toLowerCase();
  if (!t) return null;
  if (t === "noise") return c => c < 0;
  if (t === "clustered") return c => c >= 0;
  const want = new Set(t.split(/[\s,]+/).filter(Boolean).map(Number));
  return c => want.has(c);
}
function groupTest(text) {
  const t = text.trim().toLowerCase();
  if (!t) return null;
  if (t === "any") return g => g >= 0;
  const ok = new Set(D.groups.map((g, k) => g.toLowerCase().includes(t) ? k : -1).filter(k => k >= 0));
  return g => ok.has(g);
}
function applyFilters() {
  const tc = clusterTest($("f-cluster").value), tg = groupTest($("f-group").value);
  const from = $("f-from").value === "" ? -Infinity : Number($("f-from").value);
  const to = $("f-to").value === "" ? Infinity : Number($("f-to").value);
  const years = from > -Infinity || to < Infinity, undated = $("f-undated").checked;
  const j = Number($("f-col").value), text = $("f-text").value.trim().toLowerCase();
  const colHit = text && j >= 0 ? matching(j, text) : null;
  if (text && j >= 0 && !colHit) { $("f-count").textContent = "metadata still loading\u2026"; return; }
  if (!tc && !tg && !years && !colHit) { clearFilters(); return; }
  const rows = [];
  for (let i = 0; i < N; i++) {
    if (tc && !tc(C[i])) continue;
    if (tg && !tg(G[i])) continue;
    if (years && !(YEAR[i] >= from && YEAR[i] <= to) && !(undated && Number.isNaN(YEAR[i]))) continue;
    if (colHit && !colHit[cols[j].codes[i]]) continue;
    rows.push(i);
  }
  filtered = rows; filteredMaskCache = null;
  sp.filter(rows);
  if (rows.length) sp.zoomToPoints(rows, { padding: 0.2, transition: true });
  $("f-count").textContent = `${rows.length.toLocaleString()} shown`;
  showStatus();
}
function clearFilters() {
  filtered = null; filteredMaskCache = null; sp.unfilter(); scheduleOverlay();
  for (const id of ["f-cluster", "f-group", "f-from", "f-to", "f-text"]) $(id).value = "";
  $("f-undated").checked = false;
  $("f-count").textContent = ""; showStatus();
}
COLS.forEach((c, j) => { const o = el("option", c); o.value = j; $("f-col").appendChild(o); });
$("f-apply").onclick = applyFilters;
$("f-clear").onclick = clearFilters;
$("filters").addEventListener("keydown", e => { if (e.key === "Enter") applyFilters(); });

// ---- buttons -----------------------------------------------------------------------------------------
$("reset").onclick = () => sp.zoomToOrigin({ transition: true });
$("lasso").onclick = e => {
  const on = sp.get("mouseMode") !== "lasso";
  sp.set({ mouseMode: on ? "lasso" : "panZoom" });
  e.target.setAttribute("aria-pressed", String(on));
};
$("colour").onchange = e => {
  colourBy = e.target.value;
  sp.draw(pointsData(), { zDataType: "categorical", preventFilterReset: true });
};
window.addEventListener("resize", scheduleOverlay);

// for tests and benchmarks: the plot and what it shows
window.MAP = { sp, N, X, Y, C, G, uid, thumbURL, ready, drawn: null, search, applyFilters, get selected() { return selected; } };
