"""The 2-D map of a collection: UMAP of the signatures, a static PNG and an offline interactive page.

`make_map` writes into MAP_DIR:
- `coords.csv`: uid,x,y,cluster,group (group = pattern group name or empty);
- `thumbs/<uid>.jpg`: thumbnails (longest side `thumb_size`), referenced relatively by the page;
- `map.png`: points coloured by cluster (noise grey), images of known pattern groups outlined in black
  and their POSITIVE links drawn as thin lines;
- `map.html`: one self-contained file (data, script and style inline; no network): drag to pan, wheel
  to zoom, hover for the thumbnail and metadata, click for the whole cluster with its members.

An image that cannot be read is reported by uid (returned in `MapResult.unreadable`) and shown without a
thumbnail; it is never replaced by a blank picture. Signatures of another collection (uids that are not in
images.csv) are refused before any work, like `cluster evaluate` refuses such clusters.

The folder is written whole (`data.atomic.atomic_dir`): built in a scratch folder beside it and swapped in,
so a map killed while it overwrites an older one leaves the older map or the new one, never coords of one
run beside the picture of another, and a map that fails leaves no folder. Because the whole folder is
replaced, an existing MAP_DIR must hold nothing but a map's files (`MAP_FILES`).
"""

from __future__ import annotations

import csv
import html
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cluster.clusters_file import read_clusters
from cluster.plots import cluster_colours, map_plot
from data.atomic import atomic_dir, atomic_write, atomic_write_bytes, atomic_write_text
from data.collection import POSITIVE, Collection, load_collection, safe_file_stem
from data.graph import pattern_groups
from data.image import ImageReadError, jpeg_thumbnail
from data.signatures import load_signatures

META_FIELDS = ("title", "author", "date", "place")
MAP_FILES = frozenset({"coords.csv", "map.png", "map.html", "thumbs"})  # all that a map folder holds
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # what file browsers leave in a folder


def _ours(name: str) -> bool:
    """A map's file, a temp file of a killed writer of one (`.coords.PID@HOST.tmp.csv`) or a file browser's."""
    return name in MAP_FILES or name in _SYSTEM_FILES or (name.startswith(".") and ".tmp" in name)


@dataclass(frozen=True)
class MapConfig:
    seed: int = 0
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    thumb_size: int = 128


@dataclass
class MapResult:
    coords: np.ndarray  # (n, 2)
    uids: list[str]
    labels: np.ndarray
    n_thumbs: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def embed_2d(vectors: np.ndarray, cfg: MapConfig) -> np.ndarray:
    """UMAP to 2-D, seeded (umap-learn is deterministic with a random_state, at the cost of threads).

    Fewer than 4 points cannot be given a UMAP graph; they get their first two PCA coordinates.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = x.shape[0]
    if n < 4:
        xc = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        out = np.zeros((n, 2))
        k = min(2, u.shape[1])
        out[:, :k] = u[:, :k] * s[:k]
        return out
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(cfg.n_neighbors, n - 1),
        min_dist=cfg.min_dist,
        metric=cfg.metric,
        random_state=cfg.seed,
        init="spectral" if n > 10 else "random",
    )
    with warnings.catch_warnings():
        # the seed is what makes the map reproducible; umap-learn warns that it costs its threads, which says
        # nothing a user can act on
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def thumb_name(uid: str) -> str:
    """A file name for a uid: readable when the uid is plain and short, with a hash when characters were
    replaced or it is long (a 256-character uid is allowed; a file name is not), safe in a relative URL."""
    return f"{safe_file_stem(uid, keep='-_')}.jpg"


def make_thumbnails(
    collection: Collection, uids: list[str], out_dir: Path, size: int
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """JPEG thumbnails; returns ({uid: relative path}, [(uid, why unreadable)])."""
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    for uid in uids:
        if uid not in collection:
            bad.append((uid, f"not in {collection.images_file}"))
            continue
        try:
            thumb = jpeg_thumbnail(collection.image_path(uid), size)
        except ImageReadError as e:
            bad.append((uid, str(e)))
            continue
        rel = f"thumbs/{thumb_name(uid)}"
        atomic_write_bytes(out_dir / rel, thumb.jpeg)
        done[uid] = rel
    return done, bad


def _hex(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def write_coords(path: Path, uids, coords, labels, groups: dict[str, str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["uid", "x", "y", "cluster", "group"])
            for u, (x, y), lab in zip(uids, coords.tolist(), labels.tolist(), strict=True):
                w.writerow([u, repr(x), repr(y), lab, groups.get(u, "")])

    atomic_write(path, write)


def make_map(
    signatures_path: str | Path,
    collection_dir: str | Path,
    out_dir: str | Path,
    *,
    clusters_path: str | Path | None = None,
    cfg: MapConfig = MapConfig(),
) -> MapResult:
    """Everything `python -m cluster map` writes (see the module docstring)."""
    out_dir = Path(out_dir).resolve()  # `--out .` must name the folder, not "" (atomic_dir renames it)
    check_out_dir(out_dir)
    sig = load_signatures(signatures_path)
    if len(sig) == 0:
        raise ValueError(f"{signatures_path}: no signatures to map.")
    collection = load_collection(collection_dir)
    check_signature_uids(signatures_path, sig.uids, collection)
    uids = sig.uids
    labels = np.full(len(uids), -1, dtype=np.int64)
    if clusters_path is not None:
        table = read_clusters(clusters_path)
        lab_of = dict(zip(table.uids, table.labels.tolist(), strict=True))
        missing = [u for u in uids if u not in lab_of]
        if missing:
            raise ValueError(
                f"{clusters_path}: uid {missing[0]!r} (and {len(missing) - 1} more) of {signatures_path} is not in it; "
                "make clusters.csv from the same signatures file."
            )
        labels = np.array([lab_of[u] for u in uids], dtype=np.int64)
    coords = embed_2d(sig.dense(), cfg)
    groups = pattern_groups(collection)
    index = {u: i for i, u in enumerate(uids)}
    links = sorted(
        {
            (index[c.a], index[c.b]) if index[c.a] < index[c.b] else (index[c.b], index[c.a])
            for c in collection.connections
            if c.type == POSITIVE and c.a in index and c.b in index and c.a != c.b
        }
    )
    grouped = np.array([u in groups for u in uids], dtype=bool)
    done: dict[str, list] = {}

    def build(folder: Path) -> None:
        write_coords(folder / "coords.csv", uids, coords, labels, groups)
        thumbs, bad = make_thumbnails(collection, uids, folder, cfg.thumb_size)
        map_plot(folder / "map.png", coords, labels, grouped, links)
        write_map_html(folder / "map.html", uids, coords, labels, groups, collection, thumbs, bad, links)
        done.update(thumbs=list(thumbs), bad=bad)

    atomic_dir(out_dir, build)
    return MapResult(coords=coords, uids=uids, labels=labels, n_thumbs=len(done["thumbs"]), unreadable=done["bad"])


def check_out_dir(out_dir: Path) -> None:
    """The map replaces its whole folder: refuse one that holds anything else (a clusters.csv, a report)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: not a folder; pass --out a folder for the map.")
    other = sorted(p.name for p in out_dir.iterdir() if not _ours(p.name))
    if other:
        raise ValueError(
            f"{out_dir}: holds other files than a map's ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''}); "
            f"the map replaces its whole folder, so it writes only into a new folder or an older map's. "
            f"Pass --out a new folder (e.g. {out_dir / 'map'})."
        )


def check_signature_uids(signatures_path: str | Path, uids: list[str], collection: Collection) -> None:
    """Signatures of another collection would give a map of points without thumbnails or metadata: refuse."""
    unknown = [u for u in uids if u not in collection]
    if unknown:
        raise ValueError(
            f"{signatures_path}: {len(unknown)} of its {len(uids)} uids are not in {collection.images_file} "
            f"(first: {unknown[0]!r}): the signatures were made from another collection. Pass --collection the "
            f"collection they were made from, or make signatures of this one with `python -m model embed`."
        )


def _meta(collection: Collection, uid: str) -> dict[str, str]:
    if uid not in collection:
        return {}
    meta = collection.record(uid).meta
    return {k: meta[k] for k in META_FIELDS if meta.get(k)}


def write_map_html(
    path: Path,
    uids: list[str],
    coords: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, str],
    collection: Collection,
    thumbs: dict[str, str],
    bad: list[tuple[str, str]],
    links: list[tuple[int, int]],
) -> None:
    """The interactive page: all data inline as JSON, a canvas, plain JavaScript (no library, no network)."""
    colours = [_hex(c) for c in cluster_colours(labels)]
    bad_why = dict(bad)
    points = []
    for i, u in enumerate(uids):
        points.append(
            {
                "u": u,
                "x": round(float(coords[i, 0]), 5),
                "y": round(float(coords[i, 1]), 5),
                "c": int(labels[i]),
                "k": colours[i],
                "g": groups.get(u),
                "t": thumbs.get(u),
                "m": _meta(collection, u),
                "e": bad_why.get(u),
            }
        )
    data = {"points": points, "links": links}
    # every "<" escaped: a uid or title holding "</script>" or "<!--" cannot end or confuse the script element
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    page = _TEMPLATE.replace("__DATA__", blob).replace(
        "__TITLE__", html.escape(f"Map of {collection.root.name}")
    )
    atomic_write_text(path, page)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
html,body{margin:0;height:100%;font:14px system-ui,sans-serif;color:#222;overflow:hidden}
#wrap{display:flex;height:100%}
#main{flex:1;position:relative;min-width:0}
#cv{position:absolute;left:0;top:0;width:100%;height:100%;cursor:grab;background:#fafafa}
#cv.drag{cursor:grabbing}
#side{width:340px;overflow:auto;border-left:1px solid #ccc;padding:8px;box-sizing:border-box}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:6px;max-width:260px;
     box-shadow:0 2px 6px rgba(0,0,0,.2);display:none;z-index:2}
#tip img{max-width:128px;max-height:128px;display:block;margin-bottom:4px}
.m{display:flex;gap:8px;margin:6px 0;align-items:flex-start}
.m img{width:72px;height:72px;object-fit:contain;background:#eee;flex:none}
.m .noimg{width:72px;height:72px;background:#eee;flex:none;font-size:11px;color:#a00;display:flex;align-items:center;
          justify-content:center;text-align:center}
.small{color:#666;font-size:12px}
h3{margin:4px 0 8px}
</style></head>
<body><div id="wrap"><div id="main"><canvas id="cv"></canvas></div><div id="side">
<h3>__TITLE__</h3>
<p class="small">Drag to pan, wheel to zoom, hover for an image, click for its cluster. Grey = noise;
black ring = in a known pattern group. <button id="reset">reset view</button></p>
<div id="sel"></div></div></div><div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const P = D.points, cv = document.getElementById("cv"), ctx = cv.getContext("2d");
const tip = document.getElementById("tip"), sel = document.getElementById("sel");
let W = 0, H = 0, scale = 1, ox = 0, oy = 0, selected = null, hover = -1;
const byCluster = new Map();
P.forEach((p, i) => { if (p.c >= 0) { if (!byCluster.has(p.c)) byCluster.set(p.c, []); byCluster.get(p.c).push(i); } });
function fit() {
  const xs = P.map(p => p.x), ys = P.map(p => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  scale = 0.9 * Math.min(W / Math.max(x1 - x0, 1e-9), H / Math.max(y1 - y0, 1e-9));
  ox = W / 2 - scale * (x0 + x1) / 2; oy = H / 2 + scale * (y0 + y1) / 2;
}
function sx(p) { return ox + scale * p.x; }
function sy(p) { return oy - scale * p.y; }
function resize() {
  const r = document.getElementById("main").getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  W = r.width; H = r.height; cv.width = W * dpr; cv.height = H * dpr; ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
}
function draw() {
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "rgba(0,0,0,0.25)"; ctx.lineWidth = 0.6; ctx.beginPath();
  for (const [a, b] of D.links) { ctx.moveTo(sx(P[a]), sy(P[a])); ctx.lineTo(sx(P[b]), sy(P[b])); }
  ctx.stroke();
  const order = P.map((p, i) => i).sort((a, b) => (P[a].c >= 0) - (P[b].c >= 0));
  for (const i of order) {
    const p = P[i], r = p.c >= 0 ? 4 : 2.5;
    const dim = selected !== null && p.c !== selected.c;
    ctx.globalAlpha = dim ? 0.2 : 1;
    ctx.fillStyle = p.k; ctx.beginPath(); ctx.arc(sx(p), sy(p), r, 0, 7); ctx.fill();
    if (p.g) { ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.beginPath(); ctx.arc(sx(p), sy(p), r + 1.5, 0, 7); ctx.stroke(); }
  }
  ctx.globalAlpha = 1;
  if (selected !== null) {  // the open cluster: a red ring on each member, on top of everything
    ctx.strokeStyle = "#c00"; ctx.lineWidth = 2;
    for (const p of P) if (p.c === selected.c) { ctx.beginPath(); ctx.arc(sx(p), sy(p), 8, 0, 7); ctx.stroke(); }
  }
  ctx.globalAlpha = 1;
  if (hover >= 0) { const p = P[hover]; ctx.strokeStyle = "#d00"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(sx(p), sy(p), 7, 0, 7); ctx.stroke(); }
}
function nearest(mx, my) {
  let best = -1, bd = 100;  // within 10 px
  P.forEach((p, i) => { const dx = sx(p) - mx, dy = sy(p) - my, d = dx * dx + dy * dy; if (d < bd) { bd = d; best = i; } });
  return best;
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text) e.textContent = text; if (cls) e.className = cls; return e; }
function describe(p, box) {
  box.appendChild(el("b", p.m.title || p.u));
  box.appendChild(el("div", [p.m.author, p.m.date, p.m.place].filter(Boolean).join(" \u00b7 "), "small"));
  box.appendChild(el("div", "uid " + p.u + (p.c >= 0 ? " \u00b7 cluster " + p.c : " \u00b7 noise") +
    (p.g ? " \u00b7 group " + p.g : ""), "small"));
  if (p.e) box.appendChild(el("div", "image unreadable: " + p.e, "small"));
}
function thumb(p) {
  if (p.t) { const im = el("img"); im.src = p.t; im.alt = p.u; return im; }
  return el("div", "no image", "noimg");
}
function showTip(i, ev) {
  if (i < 0) { tip.style.display = "none"; return; }
  const p = P[i]; tip.replaceChildren();
  if (p.t) tip.appendChild(thumb(p));
  describe(p, tip);
  tip.style.display = "block";
  tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 270) + "px";
  tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - 200) + "px";
}
function openCluster(i) {
  sel.replaceChildren();
  if (i < 0) { selected = null; draw(); return; }
  const p = P[i]; selected = p.c >= 0 ? { c: p.c } : null;
  const members = p.c >= 0 ? byCluster.get(p.c) : [i];
  sel.appendChild(el("h3", p.c >= 0 ? "Cluster " + p.c + " (" + members.length + " images)" : "Noise point"));
  for (const j of members) { const row = el("div", null, "m"), box = el("div"); row.appendChild(thumb(P[j])); describe(P[j], box); row.appendChild(box); sel.appendChild(row); }
  draw();
}
let dragging = false, moved = false, lx = 0, ly = 0;
cv.addEventListener("mousedown", e => { dragging = true; moved = false; lx = e.clientX; ly = e.clientY; cv.classList.add("drag"); });
window.addEventListener("mouseup", e => {
  if (dragging && !moved) { const r = cv.getBoundingClientRect(); openCluster(nearest(e.clientX - r.left, e.clientY - r.top)); }
  dragging = false; cv.classList.remove("drag");
});
window.addEventListener("mousemove", e => {
  const r = cv.getBoundingClientRect();
  if (dragging) {
    const dx = e.clientX - lx, dy = e.clientY - ly;
    if (Math.abs(dx) + Math.abs(dy) > 2) moved = true;
    ox += dx; oy += dy; lx = e.clientX; ly = e.clientY; tip.style.display = "none"; draw(); return;
  }
  if (e.target !== cv) { if (hover >= 0) { hover = -1; tip.style.display = "none"; draw(); } return; }
  const i = nearest(e.clientX - r.left, e.clientY - r.top);
  if (i !== hover) { hover = i; draw(); }
  showTip(i, e);
});
cv.addEventListener("wheel", e => {
  e.preventDefault();
  const r = cv.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
  const f = Math.exp(-e.deltaY * 0.0015);
  ox = mx - (mx - ox) * f; oy = my - (my - oy) * f; scale *= f; draw();
}, { passive: false });
document.getElementById("reset").addEventListener("click", () => { fit(); draw(); });
window.addEventListener("keydown", e => { if (e.key === "Escape") openCluster(-1); });
window.addEventListener("resize", () => { resize(); draw(); });
resize(); fit(); draw();
</script></body></html>
"""
