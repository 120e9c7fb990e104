"""The run report: one self-contained HTML page that shows what a training + clustering round did.

It is what a newcomer looks at after `make demo`, and what a team shares after a round on its own
archive: retrieval before vs after fine-tuning (from the run's eval.json), the training curve, the
reachability plot, the 2-D map, the cluster quality against known connections, and a gallery of the
top proposed clusters (largest-new-first, the order the annotation app uses) with thumbnails, each
marked with how many of its pairs are already known and how many are new.

It reads files only (run directory, clusters.csv, quality JSON, map folder, the collection): never
training code. Pictures are embedded as data URIs so the page can be mailed or archived as one file;
the interactive map stays a separate page (linked) because it carries every thumbnail.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.clusters_file import ClusterTable, file_sha256, read_clusters
from cluster.explain import GroupIndex, missed_groups, missed_summary
from cluster.quality import unknown_uids, unknown_uids_message
from cluster.review import known_inside, order_clusters
from data.atomic import atomic_write_text
from data.collection import Collection, load_collection
from data.graph import pattern_groups
from data.image import ImageReadError, jpeg_thumbnail
from data.metadata import meta_value
from data.thumbs import QUALITY, ThumbCache, ThumbCacheError

RETRIEVAL_KEYS = ("mAP", "recall@1", "recall@5", "recall@10", "recall@20", "recall@50", "recall@100",
                  "median_first_rank")


class ReportError(ValueError):
    """An input of the report that cannot be read; the message names the file and what to do."""


def _read_json(path: Path, made_by: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ReportError(f"{path}: not readable JSON ({e}); make it again with `{made_by}`.") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object; make it again with `{made_by}`.")
    return data


@dataclass(frozen=True)
class ReportInputs:
    collection: Path
    clusters: Path
    run_dir: Path | None = None
    quality: Path | None = None
    map_dir: Path | None = None
    reachability: Path | None = None
    top_clusters: int = 12
    max_members: int = 8
    thumb_size: int = 160


def _esc(x) -> str:
    return html.escape(str(x))


def _img_uri(path: Path) -> str | None:
    if not path or not path.exists():
        return None
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _thumb_uri(thumbs: ThumbCache, uid: str) -> str | None:
    """The image's thumbnail from the collection's cache (made into it if missing: the map and the annotation
    page use the same files) as a data URI, or None for an unreadable image (shown as a placeholder). A
    collection whose cache cannot be written (a read-only disk) gets its thumbnails made here, unstored."""
    if uid not in thumbs.collection:
        return None
    try:
        try:
            data = thumbs.get(uid)
        except ThumbCacheError:
            data = jpeg_thumbnail(thumbs.source(uid), thumbs.size, quality=QUALITY).jpeg
    except ImageReadError:
        return None
    return f"data:image/jpeg;base64,{base64.b64encode(data).decode()}"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def retrieval_table(eval_json: dict) -> str:
    """Before/after rows per split from a run's eval.json ({"start": {split: metrics}, "trained": ...})."""
    rows = []
    for split in ("val", "test"):
        start = (eval_json.get("start") or {}).get(split)
        trained = (eval_json.get("trained") or {}).get(split)
        if not start or not trained:
            continue
        exported = "exported (= the start)" if eval_json.get("selected") == "start" else "fine-tuned"
        for name, m in (("untrained (start)", start), (exported, trained)):
            cells = "".join(f"<td>{_fmt(m.get(k))}</td>" for k in RETRIEVAL_KEYS)
            queries = m.get("num_queries")
            queries = int(queries) if isinstance(queries, int | float) else queries
            rows.append(f"<tr><td>{split}</td><td>{name}</td><td>{_fmt(queries)}</td>{cells}</tr>")
    if not rows:
        return "<p>No retrieval figures in the run's eval.json.</p>"
    head = "".join(f"<th>{_esc(k)}</th>" for k in RETRIEVAL_KEYS)
    table = f"<table><tr><th>split</th><th>network</th><th>queries</th>{head}</tr>{''.join(rows)}</table>"
    return selection_note(eval_json) + table + _no_test_note(eval_json)


def _no_test_note(eval_json: dict) -> str:
    """What the test rows' dashes mean when no test image has a partner (the run's last line says it too): without
    it the page gives no figure on images the network never trained on, and does not say why."""
    test = (eval_json.get("trained") or {}).get("test") or {}
    if test.get("num_queries", 1) != 0:
        return ""
    return ("<p>No test queries (no image of split test has a partner), so no test figures: to measure the network "
            "on images it never trained on, hold some pattern groups out as test (the <code>split</code> column of "
            "connections.csv, for groups that <code>splits.json</code> does not hold yet).</p>")


def selection_note(eval_json: dict) -> str:
    """Which network the run exported, and why: the start (epoch 0) when no epoch beat it on val.

    The val mAP that selected it is the prepared dataset's (downscaled training images), while the table
    below measures the start and the exported network on the original files: the two are named, so that
    the start's two different figures do not read as a contradiction (or as a drop at epoch 1).
    """
    by_epoch = eval_json.get("val_mAP_by_epoch") or {}
    epochs = ", ".join(f"{'start' if e == '0' else 'epoch ' + _esc(e)} {_fmt(v)}" for e, v in by_epoch.items())
    seen = (f" (val mAP on the prepared training images, as the selection compared them: {epochs}; the table "
            f"below measures on the original image files, so its val figures differ)") if epochs else ""
    if eval_json.get("selected") == "start":
        return (f"<p class='warn'><b>No epoch beat the starting network on val{seen}: the run exported the "
                f"starting network's weights and signatures unchanged.</b> Training did not help here; try a "
                f"lower learning rate or more connections.</p>")
    if eval_json.get("selected") == "trained" and "best" in eval_json and eval_json["best"] is None:
        return ("<p>No val queries (no image of split val has a partner): nothing could select an epoch, so the "
                "run exported its last epoch's network.</p>")
    if eval_json.get("selected") == "trained" and epochs:
        return f"<p>Exported the best network on val among the start and every epoch{seen}.</p>"
    return ""


def _known_pairs(collection: Collection) -> dict[tuple[str, str], str]:
    return {c.pair: c.type for c in collection.connections if c.a != c.b}


def cluster_gallery(inputs: ReportInputs, collection: Collection,
                    table: ClusterTable | None = None) -> tuple[str, list[dict]]:
    """HTML of the top proposed clusters, and a summary row per cluster (for tests and JSON). `table`: the
    clusters file already read (`build_report` reads it once for its checks), else it is read here."""
    table = table if table is not None else read_clusters(inputs.clusters)
    clusters = table.clusters()
    known = _known_pairs(collection)
    inside = known_inside(clusters, known)  # O(members + links): no cluster's pairs are enumerated
    ids = order_clusters(clusters, known)
    blocks, summary = [], []
    thumbs = ThumbCache.for_collection(collection)
    for rank, cid in enumerate(ids[: inputs.top_clusters], 1):
        members = clusters[cid]
        n_pairs, n_known = _n_pairs(len(members)), inside[cid]
        summary.append({"cluster": cid, "size": len(members), "pairs": n_pairs, "known": n_known,
                        "new": n_pairs - n_known, "shown": min(len(members), inputs.max_members)})
        cards = []
        for uid in members[: inputs.max_members]:
            uri = _thumb_uri(thumbs, uid)
            meta = collection.record(uid).meta if uid in collection else {}
            caption = " · ".join(x for x in (meta_value(meta, "title"), meta_value(meta, "author")) if x) or uid
            img = f'<img src="{uri}" alt="{_esc(uid)}">' if uri else '<div class="missing">unreadable</div>'
            # the whole title, wrapped: what tells two versions apart is often after a comma
            cards.append(f'<figure>{img}<figcaption title="{_esc(uid)}">{_esc(caption)}</figcaption></figure>')
        more = len(members) - inputs.max_members
        extra = (f'<p class="more">showing {inputs.max_members:,} of {len(members):,} members (+{more:,} more: '
                 f'judge them all, page by page, in the annotation app)</p>') if more > 0 else ""
        blocks.append(
            f'<section class="cluster"><h3>#{rank}: cluster {cid} <span>{len(members):,} images · '
            f'{n_pairs:,} pairs: <b class="known">{n_known:,} known</b>, <b class="new">{n_pairs - n_known:,} new'
            f'</b></span></h3><div class="cards">{"".join(cards)}</div>{extra}</section>'
        )
    if not blocks:
        return "<p>OPTICS proposed no cluster (every image is noise at these parameters).</p>", summary
    if len(ids) > len(blocks):
        blocks.append(f'<p class="more">showing the top {len(blocks):,} of {len(ids):,} clusters; the others are '
                      f'in the same order in the annotation app.</p>')
    return "".join(blocks), summary


def missed_section(inputs: ReportInputs, collection: Collection, table: ClusterTable) -> tuple[str, list[dict]]:
    """HTML of the known pattern groups no cluster found (`cluster.explain.missed_groups`: what the clustering
    lost), the biggest first, each member with where it ended up; and the groups (for tests and JSON)."""
    label_of = dict(zip(table.uids, table.labels.tolist(), strict=True))
    missed = missed_groups(GroupIndex.from_map(pattern_groups(collection)), label_of)
    head = f"<p>{_esc(missed_summary(missed))}</p>"
    thumbs = ThumbCache.for_collection(collection)
    blocks = []
    for g in missed[: inputs.top_clusters]:
        cards = []
        for m in g["members"][: inputs.max_members]:
            uri = _thumb_uri(thumbs, m["uid"])
            title = meta_value(collection.record(m["uid"]).meta, "title") if m["uid"] in collection else ""
            where = ("not clustered" if m["cluster"] is None else "noise" if m["cluster"] < 0
                     else f"cluster {m['cluster']}")
            img = f'<img src="{uri}" alt="{_esc(m["uid"])}">' if uri else '<div class="missing">unreadable</div>'
            cards.append(f'<figure>{img}<figcaption title="{_esc(m["uid"])}">{_esc(title or m["uid"])}<span class='
                         f'"where {"noise" if where == "noise" else ""}">{where}</span></figcaption></figure>')
        more = (f'<p class="more">showing {inputs.max_members:,} of {g["size"]:,} members</p>'
                if g["size"] > inputs.max_members else "")
        named = meta_value(collection.record(g["name"]).meta, "title") if g["name"] in collection else ""
        name = f"“{named}” ({g['name']})" if named else g["name"]  # as the annotation page's groupName reads it
        blocks.append(f'<section class="cluster"><h3>group {_esc(name)} <span>{g["size"]:,} images</span></h3>'
                      f'<div class="cards">{"".join(cards)}</div>{more}</section>')
    if len(missed) > len(blocks):
        blocks.append(f'<p class="more">showing {len(blocks):,} of {len(missed):,} missed groups; the annotation '
                      f'app lists them all.</p>')
    return head + "".join(blocks), missed


def _n_pairs(k: int) -> int:
    return k * (k - 1) // 2


def quality_table(quality: dict) -> str:
    keys = [
        ("n_images", "images"), ("n_clusters", "clusters"), ("noise_fraction", "noise fraction"),
        ("median_cluster_size", "median cluster size"), ("precision", "pairwise precision"),
        ("recall", "pairwise recall"), ("f1", "pairwise F1"), ("ari", "ARI"), ("nmi", "NMI"),
        ("proposed_pairs_known", "proposed pairs already known"), ("proposed_pairs_new", "proposed pairs new"),
    ]
    rows = "".join(f"<tr><th>{label}</th><td>{_fmt(quality.get(k))}</td></tr>" for k, label in keys if k in quality)
    notes = quality.get("warnings") if isinstance(quality.get("warnings"), list) else []
    return "".join(f"<p class='warn'>{_esc(w)}</p>" for w in notes) + f"<table class='kv'>{rows}</table>"


def check_clusters(inputs: ReportInputs, collection: Collection, table: ClusterTable) -> None:
    """Clusters of another collection would show every image as "unreadable" and every pair as new: refuse."""
    unknown = unknown_uids(table, collection)
    if unknown:
        raise ReportError(f"{inputs.clusters}: " + unknown_uids_message(
            unknown, collection, "the report would show them as unreadable images and their pairs as new"))


def check_quality(inputs: ReportInputs, quality: dict, table: ClusterTable) -> None:
    """A quality JSON must describe the clusters shown: `cluster evaluate --json` records the file's sha256.

    A file from before that record is checked by its image and cluster counts instead.
    """
    redo = (f"make it for this one: `python -m cluster evaluate {inputs.clusters} --collection {inputs.collection} "
            f"--json {inputs.clusters.with_name('quality.json')}`.")
    recorded = quality.get("clusters_sha256")
    if isinstance(recorded, str):
        sha = file_sha256(inputs.clusters)
        if recorded != sha:
            raise ReportError(
                f"{inputs.quality} describes the clusters file {quality.get('clusters_file') or '(unnamed)'} "
                f"(sha256 {recorded[:12]}...), not {inputs.clusters} (sha256 {sha[:12]}...): it is the quality of "
                f"another clustering (or of an older version of this file); {redo}")
        return
    n_clusters = len(table.clusters())
    if (quality.get("n_images"), quality.get("n_clusters")) != (len(table), n_clusters):
        raise ReportError(
            f"{inputs.quality} describes {quality.get('n_images')} images in {quality.get('n_clusters')} clusters, "
            f"but {inputs.clusters} has {len(table)} images in {n_clusters}: it is the quality of another "
            f"clustering; {redo}")


def _recorded_collection(config: dict) -> str | None:
    """The collection a run was trained on, as its config.json records it (`collection`, else the argv)."""
    if isinstance(config.get("collection"), str):
        return config["collection"]
    argv = config.get("argv")
    if not isinstance(argv, list):
        return None
    for i, arg in enumerate(argv):
        if arg == "--collection" and i + 1 < len(argv):
            return str(argv[i + 1])
        if isinstance(arg, str) and arg.startswith("--collection="):
            return arg.split("=", 1)[1]
    return None


def _same_folder(recorded: str, collection: Path) -> bool:
    """Whether a recorded path names `collection`. A relative one was relative to where training ran, which
    is unknown: it is taken from here, and if nothing is there, compared by folder name."""
    path = Path(recorded).expanduser()
    if path.exists():
        try:
            return path.samefile(collection)
        except OSError:
            return False
    return path.resolve().name == collection.resolve().name


def run_warnings(inputs: ReportInputs) -> list[str]:
    """A run trained on another collection: its retrieval figures are about that one (a warning, not an error:
    a collection may have been moved or copied since)."""
    config_path = inputs.run_dir / "config.json" if inputs.run_dir else None
    if config_path is None or not config_path.exists():
        return []
    recorded = _recorded_collection(_read_json(config_path, "python -m train ..."))
    if recorded is None or _same_folder(recorded, inputs.collection):
        return []
    return [f"{inputs.run_dir}: the run was trained on the collection {recorded} (its config.json), not on "
            f"{inputs.collection}; its retrieval figures and curves are about that collection. Pass the run of this "
            f"collection, or that collection."]


CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f4ef;color:#222}
header{background:#fff;border-bottom:1px solid #ddd;padding:18px 32px}
main{padding:8px 32px 40px;max-width:1280px}
h1{margin:0;font-size:24px} h2{margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;background:#fff;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 9px;text-align:right} th{background:#f0ede6}
td:first-child,td:nth-child(2){text-align:left}
table.kv th{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:16px}
.figs figure{background:#fff;border:1px solid #ddd;margin:0;padding:8px;max-width:620px}
.figs img{max-width:100%}
.cluster{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;padding:8px 14px}
.cluster h3{margin:4px 0 8px;font-size:16px} .cluster h3 span{font-weight:normal;color:#555;margin-left:8px}
.known{color:#2d6a3e} .new{color:#a4461b}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.cards figure{margin:0;width:170px} .cards img{max-width:160px;max-height:160px;display:block}
.cards figcaption{font-size:12px;color:#444;overflow-wrap:anywhere}
.cards .where{display:block;color:#8a5a2b;font-weight:600} .cards .noise{color:#b23b3b}
.warn{background:#fff3e0;border:1px solid #e0a060;padding:6px 10px}
.missing{width:160px;height:100px;background:#ddd;display:flex;align-items:center;justify-content:center}
code{background:#fff;border:1px solid #ddd;padding:2px 6px;border-radius:4px}
"""


def build_report(inputs: ReportInputs, warn: Callable[[str], None] | None = None, *,
                 page_dir: Path | None = None) -> str:  # fmt: skip
    """The report page as an HTML string (pure apart from reading the inputs). `page_dir`: the folder the page
    will be saved in, which its link to the interactive map is relative to (default: the clusters' folder).

    Inputs that do not belong together are refused (`ReportError`: clusters of another collection, a quality
    JSON of another clustering); a run of another collection is a warning, on the page and through `warn`.
    """
    collection = load_collection(inputs.collection)
    table = read_clusters(inputs.clusters)
    check_clusters(inputs, collection, table)
    quality = _read_json(inputs.quality, "python -m cluster evaluate ... --json") \
        if inputs.quality and inputs.quality.exists() else None
    if quality is not None:
        check_quality(inputs, quality, table)
    warnings = run_warnings(inputs)
    for w in warnings:
        if warn is not None:
            warn(w)
    parts = [f"<header><h1>Visual patterns: run report</h1><p>Collection <code>{_esc(inputs.collection)}</code>: "
             f"{len(collection.images)} images, {len(collection.connections)} known connections.</p></header><main>"]
    parts.extend(f"<p class='warn'><b>Warning:</b> {_esc(w)}</p>" for w in warnings)

    if inputs.run_dir:
        eval_path = inputs.run_dir / "eval.json"
        parts.append("<h2>Retrieval before and after fine-tuning</h2>")
        if eval_path.exists():
            ev = _read_json(eval_path, "python -m train ... --resume")
            parts.append("<p>For each image of a split that has known partners, the whole collection is ranked "
                         "by signature similarity; mAP averages precision over all its true partners, recall@k is "
                         "the share of partners found in the top k.</p>")
            parts.append(retrieval_table(ev))
        else:
            parts.append(f"<p>No {_esc(eval_path)}: the run has not finished.</p>")
    figs = []
    for title, path in (
        ("Training curve", inputs.run_dir / "curves.png" if inputs.run_dir else None),
        ("Reachability plot (OPTICS order; valleys are clusters)", inputs.reachability),
        ("Map of the collection (UMAP of the signatures)", inputs.map_dir / "map.png" if inputs.map_dir else None),
    ):
        uri = _img_uri(path) if path else None
        if uri:
            figs.append(f"<figure><figcaption><b>{_esc(title)}</b></figcaption><img src='{uri}' alt=''></figure>")
    if figs:
        parts.append(f"<h2>Figures</h2><div class='figs'>{''.join(figs)}</div>")
    if inputs.map_dir and (inputs.map_dir / "map.html").exists():
        rel = os.path.relpath(Path(inputs.map_dir).resolve() / "map.html",
                              start=Path(page_dir or inputs.clusters.parent).resolve())  # fmt: skip
        parts.append(f"<p>Interactive map (hover for the artwork, click for its cluster): "
                     f"<a href='{_esc(rel)}'>{_esc(rel)}</a></p>")

    if quality is not None:
        parts.append("<h2>Clusters against the known connections</h2>")
        parts.append(quality_table(quality))
    gallery, _ = cluster_gallery(inputs, collection, table)
    parts.append(f"<h2>Top proposed clusters</h2><p>Largest-new-first: the clusters with the most pairs that "
                 f"nobody has connected yet come first, as in the annotation app.</p>{gallery}")
    missed, _ = missed_section(inputs, collection, table)
    parts.append(f"<h2>Known groups the clustering missed</h2><p>Pattern groups of connections.csv that no cluster "
                 f"holds (at least two and half of a group's members in one cluster): what these settings lose."
                 f"</p>{missed}")
    parts.append(
        "<h2>Next: judge the proposals</h2><p>Start the annotation app and confirm or reject clusters in the "
        f"browser:</p><p><code>python -m cluster annotate --collection {_esc(inputs.collection)} "
        f"--clusters {_esc(inputs.clusters)}</code></p><p>then <code>python -m cluster accept --collection "
        f"{_esc(inputs.collection)}</code> and retrain with <code>python -m train ... --resume-from RUN_DIR</code>.</p>"
    )
    parts.append("</main>")
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Run report</title><style>{CSS}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"


def write_report(inputs: ReportInputs, out: Path, warn: Callable[[str], None] | None = None) -> Path:
    """Write the report atomically; returns its path. `warn` receives what the page warns about."""
    atomic_write_text(out, build_report(inputs, warn, page_dir=Path(out).parent))
    return out
