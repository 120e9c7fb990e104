"""`python -m cluster export`: the clusters and the expert's decisions where museums work (CSV and IIIF).

The annotation log (`annotations.jsonl`) is the tool's own format; a museum's collection system, its
spreadsheets and its IIIF viewers read neither it nor clusters.csv. This module turns them into

- `cluster_members.csv`: one row per (cluster, member) of the clusters file and of the map's proposals
  (`proposals.jsonl`), with the cluster's status from the decisions in force (an undo cancels its decision),
  whether the member was ticked, who decided and when, and every column of images.csv;
- `decisions.csv`: one row per decision in force (images added from a search included);
- `decision_connections.csv`: one row per connection those decisions assert (the rows `cluster accept` would
  write, with the decision and the annotator that asked for each);
- `iiif/`: one IIIF Presentation 3.0 Manifest per confirmed pattern group (the ticked members of a "confirm"
  or "confirm, reject the rest" decision, the images added to it from a search, each group of a "split") and
  one Collection listing them (`collection.json`);
- `export.json`: what was exported from what (paths and sha256 of the inputs, counts), no time of day, so
  that the same inputs give the same bytes.

Everything here is pure (rows and JSON documents from parsed inputs) except `load_export` (reads the inputs)
and `write_export` (builds the folder in a scratch folder beside it and swaps it in whole, `data.atomic`:
a kill leaves the older export or the new one, never half of one). The CSV files are UTF-8 with a byte-order
mark, so that Excel shows accented titles right.

A cluster's status is that of the latest decision in force whose member set is exactly the cluster's (as the
annotation page marks a cluster done): a clustering run again that proposes the same group keeps its verdict.
"""

from __future__ import annotations

import csv
import json
import mimetypes
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from cluster.agreement import by_cluster, differences, verdicts
from cluster.annotations import (
    ADD,
    DECISION,
    PROPOSALS_FILE,
    TornLineWarning,
    members_key,
    read_log,
    read_proposals,
)
from cluster.clusters_file import file_sha256, read_clusters
from cluster.review import SPLIT
from data.atomic import atomic_dir
from data.collection import ANNOTATIONS_FILE, Collection, ImageRecord, load_collection
from data.metadata import column, meta_value

FORMATS = ("csv", "iiif")
MEMBERS_FILE = "cluster_members.csv"
DECISIONS_FILE = "decisions.csv"
CONNECTIONS_FILE = "decision_connections.csv"
IIIF_DIR = "iiif"
COLLECTION_FILE = "collection.json"
SUMMARY_FILE = "export.json"
OUR_FILES = (MEMBERS_FILE, DECISIONS_FILE, CONNECTIONS_FILE, IIIF_DIR, SUMMARY_FILE)

# decision name -> status in cluster_members.csv
STATUS = {"confirm": "confirmed", "confirm_reject": "confirm-and-reject", "similar": "similar",
          "duplicate": "duplicate", "wrong": "wrong", "skip": "skipped", "split": "split"}
NOT_JUDGED = "not judged"
# decisions whose ticked members are one confirmed pattern group (a manifest each)
CONFIRMING = ("confirm", "confirm_reject")

# images.csv columns read for IIIF (case-insensitive; the first present wins)
SERVICE_COLUMNS = ("iiif_service", "iiif_image_service", "iiif_image", "iiif", "image_service")
WIDTH_COLUMNS = ("width", "image_width")
HEIGHT_COLUMNS = ("height", "image_height")
# where a plain image may be found on the web: images.csv's `url` (what `data fetch` downloads), then these
URL_COLUMNS = ("source_url", "image_url")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")  # what a browser (so a IIIF viewer) shows
DEFAULT_SIZE = 1000  # a canvas whose size nothing tells (no local file, no width/height columns)

IIIF_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
SERVICE_VERSIONS = ("auto", "2", "3")


class ExportError(ValueError):
    """Inputs that cannot be exported as asked; the message names the file and what to do."""


@dataclass
class Verdict:
    """The decisions in force on one member set: the latest is the one shown (as on the annotation page)."""

    record: dict
    annotators: list[str]  # who decided it, in the order of their first decision on it
    count: int
    disagree: bool  # the annotators' latest verdicts on this set differ (decision, ticked members or groups)


@dataclass
class ExportData:
    """The parsed inputs of an export."""

    collection: Collection
    clusters_path: Path
    clusters_sha256: str
    annotations_path: Path
    clusters: dict[int, list[str]]  # clusters.csv's (OPTICS order), then proposals under their negative ids
    proposals: set[int]
    active: list[dict]  # decisions in force, file order (additions included)
    undone: int
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verdicts = _verdicts(self.active)
        self.added = _additions(self.active, self.clusters, self.clusters_sha256)

    def verdict(self, cid: int) -> Verdict | None:
        return self.verdicts.get(members_key(self.clusters[cid]))


def _verdicts(active: Sequence[dict]) -> dict[bytes, Verdict]:
    """Member set -> its decisions in force (additions are no verdict on a cluster), with the disagreement rule of
    the page and of `cluster accept` (`cluster.agreement`)."""
    out = {}
    for key, recs in by_cluster(active).items():
        vs = verdicts(recs)  # each annotator's latest
        out[key] = Verdict(record=recs[-1], annotators=[str(v["annotator"]) for v in vs if v.get("annotator")],
                           count=len(recs), disagree=len(vs) > 1 and bool(differences(vs)))
    return out


def _additions(active: Sequence[dict], clusters: dict[int, list[str]], sha: str) -> dict[int, dict[str, dict]]:
    """cid -> uid -> the "add" record that added it: an addition names its cluster by id, which means the same
    images only under the clusters file it was made with (or a proposal's id), as on the annotation page."""
    out: dict[int, dict[str, dict]] = {}
    for rec in active:
        cid = rec.get("cluster")
        if rec.get("decision") != ADD or not isinstance(cid, int) or cid not in clusters or not rec["members"]:
            continue
        if cid < -1 or rec.get("clusters_sha256") in (None, sha):
            out.setdefault(cid, {})[rec["members"][0]] = rec
    return out


def _groups(rec: dict) -> list[list[str]]:
    """A "split" decision's groups, read defensively: lists of uid strings; anything else is no group."""
    groups = rec.get("groups")
    if not isinstance(groups, list):
        return []
    return [list(g) for g in groups if isinstance(g, list) and all(isinstance(u, str) for u in g)]


# -- reading ---------------------------------------------------------------------------------------------------------


def load_export(collection_dir: str | Path, clusters_path: str | Path, *, annotations: str | Path | None = None,
                proposals: str | Path | None = None) -> ExportData:
    """Read the collection, the clusters file, the decision log and the map's proposals; refuse what cannot be
    exported (no decision in force; a clusters file unrelated to the decisions; uids of another collection)."""
    collection = load_collection(collection_dir)
    clusters_path = Path(clusters_path)
    table = read_clusters(clusters_path)
    unknown = [u for u in table.uids if u not in collection]
    if unknown:
        raise ExportError(f"{clusters_path}: {len(unknown)} uid(s) are not in {collection.images_file} (first: "
                          f"{unknown[0]!r}); were the signatures made from another collection? Pass the collection "
                          "they were made from.")
    annotations = Path(annotations) if annotations else collection.root / ANNOTATIONS_FILE
    proposals = Path(proposals) if proposals else annotations.with_name(PROPOSALS_FILE)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TornLineWarning)
        log = read_log(annotations)
        props = read_proposals(proposals)
    notes += [str(w.message) for w in caught if issubclass(w.category, TornLineWarning)]
    order = dict(zip(table.uids, table.order.tolist(), strict=True))
    clusters = {int(c): sorted(m, key=order.__getitem__) for c, m in sorted(table.clusters().items())}
    ids = set()
    for rec in props.records:
        members = list(dict.fromkeys(u for u in rec["uids"] if u in collection))
        if len(members) >= 2:
            clusters[rec["cluster"]] = sorted(members, key=lambda u: order.get(u, len(order)))
            ids.add(rec["cluster"])
    active = log.active_decisions()
    undone = len(log.undone_ids())
    _check_decisions(annotations, log.records, active, undone)
    data = ExportData(collection=collection, clusters_path=clusters_path, clusters_sha256=file_sha256(clusters_path),
                      annotations_path=annotations, clusters=clusters, proposals=ids, active=active, undone=undone,
                      warnings=notes)
    _check_clusters_file(data)
    return data


def _check_decisions(annotations: Path, records: list[dict], active: list[dict], undone: int) -> None:
    """No decision yet, or none left in force: nothing to export, said in one sentence."""
    if not any(r["kind"] == DECISION for r in records):
        why = "the file is missing" if not annotations.exists() else "it holds none"
        raise ExportError(f"{annotations}: no decisions yet ({why}); judge clusters with `python -m cluster annotate` "
                          "first, or pass --annotations the log that holds them.")
    if not active:
        raise ExportError(f"{annotations}: no decision in force (all {undone} undone); nothing to export.")


def _check_clusters_file(data: ExportData) -> None:
    """Decisions name the clusters file they were made on (`clusters_sha256`). Refused when none was made on this
    one and none of its clusters has a decided member set (every status would read "not judged"); said when only
    some were."""
    verdicts = [r for r in data.active if r.get("decision") != ADD and isinstance(r.get("cluster"), int)
                and r["cluster"] >= -1 and r.get("clusters_sha256")]
    other = [r for r in verdicts if r["clusters_sha256"] != data.clusters_sha256]
    if not other:
        return
    names = sorted({Path(str(r.get("clusters_file") or "?")).name + f" (sha256 {r['clusters_sha256'][:12]}...)"
                    for r in other})
    matched = sum(1 for cid in data.clusters if data.verdict(cid) is not None)
    what = (f"{data.annotations_path}: {len(other)} of its {len(verdicts)} decision(s) on clusters were made on "
            f"another clusters file ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) than "
            f"{data.clusters_path} (sha256 {data.clusters_sha256[:12]}...)")
    if matched == 0 and len(other) == len(verdicts):
        raise ExportError(f"{what}, and none of its clusters has the members of a decided one: every status would "
                          "read 'not judged'. Pass --clusters the file the decisions were made on.")
    data.warnings.append(f"{what}; they count for a cluster only where it has exactly the decided members "
                         "(all of them are in decisions.csv, decision_connections.csv and the IIIF manifests).")


# -- CSV rows --------------------------------------------------------------------------------------------------------


def _meta_header(collection: Collection, taken: Sequence[str]) -> tuple[list[str], list[str]]:
    """images.csv's columns (header names, and the keys rows keep them under), renamed where they clash with ours."""
    fmt = collection.images_format
    keys = list(fmt.keys) if fmt else ["uid", "path", "url"]
    names = list(fmt.header) if fmt else keys
    out = [f"{n.strip()} (images.csv)" if n.strip() in taken else n.strip() for n in names]
    return out, keys


def _image_cells(rec: ImageRecord, keys: Sequence[str]) -> list[str]:
    known = {"uid": rec.uid, "path": rec.path or "", "url": rec.url or ""}
    return [known[k] if k in known else rec.meta.get(k, "") for k in keys]


MEMBER_COLUMNS = ["cluster", "kind", "status", "uid", "ticked", "group", "added_from_search", "decision_id",
                  "annotators", "decided_at", "decisions_in_force", "disagreement"]


def _member_flags(uid: str, rec: dict | None) -> tuple[str, str]:
    """(ticked, group) of a member under its cluster's decision: yes/no; the 1-based group of a split."""
    if rec is None:
        return "", ""
    if rec.get("decision") == SPLIT:
        at = next((i for i, g in enumerate(_groups(rec), start=1) if uid in g), None)
        return ("yes", str(at)) if at else ("no", "")
    return ("yes" if uid in set(rec.get("ticked") or ()) else "no"), ""


def member_rows(data: ExportData) -> tuple[list[str], list[list[str]]]:
    """cluster_members.csv: one row per (cluster, member), then the images added to it from a search."""
    meta_names, keys = _meta_header(data.collection, MEMBER_COLUMNS)
    header = MEMBER_COLUMNS + [n for n, k in zip(meta_names, keys, strict=True) if k != "uid"]
    keys = [k for k in keys if k != "uid"]
    rows = []
    for cid, members in data.clusters.items():
        v = data.verdict(cid)
        rec = v.record if v else None
        head = [str(cid), "proposal" if cid in data.proposals else "cluster",
                STATUS.get(rec.get("decision"), str(rec.get("decision"))) if rec else NOT_JUDGED]
        tail = ([rec["id"], "; ".join(v.annotators), rec.get("time") or "", str(v.count), "yes" if v.disagree else ""]
                if v else ["", "", "", "0", ""])
        for uid in members:
            rows.append(head + [uid, *_member_flags(uid, rec), ""] + tail
                        + _image_cells(data.collection.record(uid), keys))
        for uid, add in data.added.get(cid, {}).items():
            if uid in data.collection and uid not in members:
                rows.append(head + [uid, "", "", "yes", add["id"], str(add.get("annotator") or ""),
                                    add.get("time") or "", "", ""] + _image_cells(data.collection.record(uid), keys))
    return header, rows


DECISION_COLUMNS = ["decision_id", "time", "annotator", "cluster", "decision", "status", "members", "ticked",
                    "n_ticked", "groups", "connections", "clusters_file", "clusters_sha256"]


def decision_rows(data: ExportData) -> tuple[list[str], list[list[str]]]:
    """decisions.csv: one row per decision in force, in the order they were made. `ticked` and `groups` are JSON
    lists of uids (a uid may hold any separator)."""
    rows = []
    for rec in data.active:
        groups = _groups(rec)
        rows.append([rec["id"], rec.get("time") or "", str(rec.get("annotator") or ""), str(rec.get("cluster", "")),
                     str(rec.get("decision") or ""), STATUS.get(rec.get("decision"), str(rec.get("decision") or "")),
                     str(len(rec["members"])), json.dumps(rec["ticked"], ensure_ascii=False), str(len(rec["ticked"])),
                     json.dumps(groups, ensure_ascii=False) if groups else "", str(len(rec["edges"])),
                     Path(str(rec.get("clusters_file") or "")).name, str(rec.get("clusters_sha256") or "")])
    return DECISION_COLUMNS, rows


CONNECTION_COLUMNS = ["a", "b", "type", "decision_id", "decision", "annotator", "annotated_at"]


def connection_rows(data: ExportData) -> tuple[list[str], list[list[str]]]:
    """decision_connections.csv: one row per edge of a decision in force (a < b, as the log stores them)."""
    rows = [[a, b, t, rec["id"], str(rec.get("decision") or ""), str(rec.get("annotator") or ""),
             rec.get("time") or ""] for rec in data.active for a, b, t in rec["edges"]]
    return CONNECTION_COLUMNS, rows


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """UTF-8 with a byte-order mark (Excel then reads accents right), comma-separated, quoted where needed."""
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


# -- IIIF ------------------------------------------------------------------------------------------------------------


@dataclass
class Group:
    """A confirmed pattern group: one manifest."""

    name: str  # file stem, unique
    cluster: int
    record: dict
    members: list[str]
    part: int | None = None  # the 1-based group of a split


def confirmed_groups(data: ExportData) -> list[Group]:
    """The ticked members (and search additions) of each confirming decision in force, each group of a split
    (two members or more); one per member set (the latest decision on it, as for the statuses)."""
    out = []
    for v in data.verdicts.values():
        rec = v.record
        cid = rec.get("cluster") if isinstance(rec.get("cluster"), int) else 0
        stem = f"{'proposal' if cid < -1 else 'cluster'}-{abs(cid)}-{rec['id'][:8]}"
        if rec.get("decision") in CONFIRMING:
            members = list(dict.fromkeys([*rec["ticked"], *data.added.get(cid, {})]))
            out.append(Group(stem, cid, rec, [u for u in members if u in data.collection]))
        elif rec.get("decision") == SPLIT:
            for i, g in enumerate(_groups(rec), start=1):
                if len(g) >= 2:
                    out.append(Group(f"{stem}-{i}", cid, rec, [u for u in g if u in data.collection], part=i))
    return sorted([g for g in out if g.members], key=lambda g: (g.record.get("time") or "", g.name))


@dataclass
class IiifOptions:
    base_url: str | None = None  # where OUT_DIR/iiif/ will be served; None: ids relative to that folder
    service_version: str = "auto"
    iiif_dir: Path | None = None  # the final OUT_DIR/iiif (local image paths are written relative to it)


@dataclass
class ImageSource:
    """What a canvas paints, and how (service, url or local)."""

    body: dict
    kind: str


def _lang(text: str, lang: str = "none") -> dict[str, list[str]]:
    return {lang: [text]}


def _entry(label: str, value: str) -> dict:
    return {"label": _lang(label, "en"), "value": _lang(value)}


def service_version(url: str, forced: str = "auto") -> str:
    """"2" or "3": forced, else as the URL suggests (a path segment 2, v2, iiif2 or image2 means Image API 2;
    anything else 3)."""
    if forced in ("2", "3"):
        return forced
    segments = [s.lower() for s in urlsplit(url).path.split("/")]
    return "2" if any(s in ("2", "v2", "iiif2", "image2") for s in segments) else "3"


def _service_body(service: str, size: tuple[int, int], version: str) -> dict:
    """The painting body from an image service. Its profile claims level 0, the least any server offers: a viewer
    reads the real one from the service's info.json."""
    base = re.sub(r"/info\.json$", "", service.strip()).rstrip("/")
    if version == "2":
        svc = {"@id": base, "@type": "ImageService2", "profile": "http://iiif.io/api/image/2/level0.json"}
    else:
        svc = {"id": base, "type": "ImageService3", "profile": "level0"}
    return {"id": f"{base}/full/max/0/default.jpg", "type": "Image", "format": "image/jpeg",
            "width": size[0], "height": size[1], "service": [svc]}


def _is_image_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.path.lower().endswith(IMAGE_SUFFIXES)


def _format(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "image/jpeg"


def image_source(collection: Collection, rec: ImageRecord, size: tuple[int, int], opts: IiifOptions) -> ImageSource:
    """The painting body of an image: its IIIF image service (a column of images.csv), else its image URL, else
    its local file (a path relative to the iiif folder: usable on this machine only)."""
    col = column(rec.meta, SERVICE_COLUMNS)
    service = rec.meta.get(col, "").strip() if col else ""
    if service:
        return ImageSource(_service_body(service, size, service_version(service, opts.service_version)), "service")
    urls = [rec.url or ""] + [rec.meta.get(c, "") for c in filter(None, (column(rec.meta, (n,)) for n in URL_COLUMNS))]
    url = next((u.strip() for u in urls if _is_image_url(u.strip())), None)
    if url:
        return ImageSource({"id": url, "type": "Image", "format": _format(urlsplit(url).path),
                            "width": size[0], "height": size[1]}, "url")
    local = collection.image_path(rec)
    where = os.path.relpath(local, opts.iiif_dir) if opts.iiif_dir else str(local)
    return ImageSource({"id": quote(Path(where).as_posix()), "type": "Image", "format": _format(local.name),
                        "width": size[0], "height": size[1]}, "local")


def image_size(collection: Collection, rec: ImageRecord) -> tuple[int, int] | None:
    """Width and height: images.csv's width/height columns, else the local file's header; None if neither."""
    w, h = column(rec.meta, WIDTH_COLUMNS), column(rec.meta, HEIGHT_COLUMNS)
    try:
        if w and h and int(rec.meta[w]) > 0 and int(rec.meta[h]) > 0:
            return int(rec.meta[w]), int(rec.meta[h])
    except ValueError:
        pass
    path = collection.image_path(rec)
    if not path.is_file():
        return None
    from data.image import ImageReadError, read_header

    try:
        return read_header(path).size
    except ImageReadError:
        return None


def _base(opts: IiifOptions) -> str:
    return opts.base_url.rstrip("/") + "/" if opts.base_url else ""


def _title(rec: ImageRecord) -> str:
    return meta_value(rec.meta, "title")


def _canvas_metadata(rec: ImageRecord) -> list[dict]:
    entries = [_entry("uid", rec.uid)]
    for name, label in (("title", "Title"), ("author", "Author"), ("date", "Date")):
        if value := meta_value(rec.meta, name):
            entries.append(_entry(label, value))
    return entries


def canvas(collection: Collection, uid: str, canvas_id: str, opts: IiifOptions,
           sizes: dict[str, tuple[int, int] | None]) -> tuple[dict, str]:
    """One image as a Canvas holding one painting annotation; returns it and how its image is reached."""
    rec = collection.record(uid)
    if uid not in sizes:
        sizes[uid] = image_size(collection, rec)
    size = sizes[uid] or (DEFAULT_SIZE, DEFAULT_SIZE)
    src = image_source(collection, rec, size, opts)
    page = f"{canvas_id}/page"
    return {
        "id": canvas_id,
        "type": "Canvas",
        "label": _lang(_title(rec) or uid),
        "width": size[0],
        "height": size[1],
        "metadata": _canvas_metadata(rec),
        "items": [{"id": page, "type": "AnnotationPage", "items": [
            {"id": f"{page}/painting", "type": "Annotation", "motivation": "painting", "body": src.body,
             "target": canvas_id}]}],
    }, src.kind


def group_label(collection: Collection, group: Group) -> str:
    """The group's titles (distinct, the first five), else its cluster and size."""
    titles = list(dict.fromkeys(t for t in (_title(collection.record(u)) for u in group.members) if t))
    if not titles:
        what = "proposal" if group.cluster < -1 else "cluster"
        return f"Pattern group of {len(group.members)} images ({what} {abs(group.cluster)})"
    return " / ".join(titles[:5]) + (f" / ... (+{len(titles) - 5})" if len(titles) > 5 else "")


def _when(time: str | None) -> str:
    """`2026-11-28 13:32 UTC` from the log's ISO time (as it is, if it is not one)."""
    m = re.match(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)", time or "")
    return f"{m.group(1)} {m.group(2)} UTC" if m else (time or "an unrecorded date")


def _summary(group: Group, data: ExportData) -> str:
    rec = group.record
    v = data.verdicts.get(members_key(rec["members"]))
    who = ", ".join(v.annotators) if v and v.annotators else str(rec.get("annotator") or "an expert")
    how = {"confirm": "confirmed as one pattern", "confirm_reject": "confirmed as one pattern (the rest rejected)",
           SPLIT: f"confirmed as group {group.part} of a split"}.get(rec.get("decision"), str(rec.get("decision")))
    where = f"proposal {abs(group.cluster)} of the map" if group.cluster < -1 else f"cluster {group.cluster}"
    return (f"{len(group.members)} images {how} by {who} on {_when(rec.get('time'))} "
            f"({where}, decision {rec['id']}).")


def manifest(data: ExportData, group: Group, opts: IiifOptions,
             sizes: dict[str, tuple[int, int] | None]) -> tuple[dict, list[str]]:
    """The IIIF Presentation 3.0 Manifest of one confirmed group, and the kind of image source of each canvas."""
    mid = f"{_base(opts)}{group.name}.json"
    canvases, kinds = [], []
    for i, uid in enumerate(group.members, start=1):
        c, kind = canvas(data.collection, uid, f"{_base(opts)}{group.name}/canvas/{i}", opts, sizes)
        canvases.append(c)
        kinds.append(kind)
    rec = group.record
    v = data.verdicts.get(members_key(rec["members"]))
    meta = [_entry("Decision", STATUS.get(rec.get("decision"), str(rec.get("decision")))),
            _entry("Annotators", ", ".join(v.annotators) if v and v.annotators else str(rec.get("annotator") or "")),
            _entry("Decided at", rec.get("time") or ""), _entry("Decision id", rec["id"]),
            _entry("Cluster", str(group.cluster)), _entry("Images", str(len(group.members)))]
    doc = {"@context": IIIF_CONTEXT, "id": mid, "type": "Manifest",
           "label": _lang(group_label(data.collection, group)), "summary": _lang(_summary(group, data), "en"),
           "metadata": meta, "items": canvases}
    return doc, kinds


def collection_doc(data: ExportData, groups: Sequence[Group], docs: Sequence[dict], opts: IiifOptions) -> dict:
    """The IIIF Collection listing every group's manifest."""
    name = data.collection.root.resolve().name
    return {"@context": IIIF_CONTEXT, "id": f"{_base(opts)}{COLLECTION_FILE}", "type": "Collection",
            "label": _lang(f"Confirmed pattern groups of {name}", "en"),
            "summary": _lang(f"{len(groups)} pattern groups confirmed by experts in the annotation app "
                             f"(from {data.annotations_path.name}).", "en"),
            "items": [{"id": d["id"], "type": "Manifest", "label": d["label"]} for d in docs]}


# -- IIIF structure check (Presentation API 3.0's required properties) -----------------------------------------------


def _is_language_map(value: object) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
                    for k, v in value.items()))


def _need(obj: dict, where: str, kind: str, problems: list[str]) -> None:
    if obj.get("type") != kind:
        problems.append(f"{where}: type {obj.get('type')!r}, expected {kind!r}")
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        problems.append(f"{where}: no id")
    for key in ("label", "summary"):
        if key in obj and not _is_language_map(obj[key]):
            problems.append(f"{where}: {key} is not a language map")


def _check_canvas(c: dict, where: str, problems: list[str]) -> None:
    _need(c, where, "Canvas", problems)
    if not all(isinstance(c.get(k), int) and c[k] > 0 for k in ("width", "height")):
        problems.append(f"{where}: a canvas with an image needs positive integer width and height")
    pages = c.get("items")
    if not isinstance(pages, list) or not pages:
        problems.append(f"{where}: no AnnotationPage in items")
        return
    for p in pages:
        _need(p, f"{where} page", "AnnotationPage", problems)
        for a in p.get("items") or []:
            _need(a, f"{where} annotation", "Annotation", problems)
            if a.get("motivation") != "painting" or a.get("target") != c.get("id"):
                problems.append(f"{where}: the annotation must paint (motivation painting) onto this canvas")
            body = a.get("body") or {}
            _need(body, f"{where} body", "Image", problems)


def iiif_problems(doc: dict) -> list[str]:
    """What a Manifest or Collection lacks of IIIF Presentation 3.0's required structure (empty: nothing):
    @context, id, type, a language-map label, non-empty items; each canvas an id, a size and a painting annotation."""
    problems: list[str] = []
    ctx = doc.get("@context")
    if ctx != IIIF_CONTEXT and not (isinstance(ctx, list) and ctx and ctx[-1] == IIIF_CONTEXT):
        problems.append(f"@context is not {IIIF_CONTEXT}")
    kind = doc.get("type")
    if kind not in ("Manifest", "Collection"):
        problems.append(f"type {kind!r} is neither Manifest nor Collection")
    _need(doc, str(kind), str(kind), problems)
    if not _is_language_map(doc.get("label")):
        problems.append(f"{kind}: label is required as a language map")
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        problems.append(f"{kind}: items must be a non-empty list")
        return problems
    for i, item in enumerate(items):
        if kind == "Manifest":
            _check_canvas(item, f"canvas {i + 1}", problems)
        else:
            _need(item, f"item {i + 1}", "Manifest", problems)
            if not _is_language_map(item.get("label")):
                problems.append(f"item {i + 1}: label is required as a language map")
    return problems


# -- writing ---------------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    counts: dict[str, int]
    files: list[str]
    warnings: list[str]


def check_out_dir(out_dir: Path) -> None:
    """The export replaces its whole folder: refuse one that holds anything else."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: not a folder; pass --out a folder for the export.")
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in OUR_FILES)
    if other:
        raise ExportError(f"{out_dir}: holds other files than an export's ({', '.join(other[:5])}"
                          f"{', ...' if len(other) > 5 else ''}); the export replaces its whole folder, so it writes "
                          f"only into a new folder or an older export's. Pass --out a new folder (e.g. {out_dir / 'export'}).")


def _iiif_files(data: ExportData, opts: IiifOptions, result: ExportResult) -> dict[str, dict]:
    """name -> JSON document of the iiif folder (empty when no group is confirmed)."""
    groups = confirmed_groups(data)
    if not groups:
        result.warnings.append("no confirmed group (confirm, confirm-and-reject or split) among the decisions in "
                               "force: no IIIF manifest written.")
        return {}
    sizes: dict[str, tuple[int, int] | None] = {}
    docs, local = [], {}
    for g in groups:
        doc, k = manifest(data, g, opts, sizes)
        docs.append(doc)
        local.update((u, None) for u, kind in zip(g.members, k, strict=True) if kind == "local")
    _iiif_notes(list(local), _service_column(data.collection), sizes, opts, result)
    files = {f"{g.name}.json": d for g, d in zip(groups, docs, strict=True)}
    files[COLLECTION_FILE] = collection_doc(data, groups, docs, opts)
    result.counts["manifests"] = len(groups)
    return files


def _service_column(collection: Collection) -> str | None:
    """The IIIF service column as images.csv names it, or None when it has none."""
    fmt = collection.images_format
    return column({k: k for k in fmt.keys}, SERVICE_COLUMNS) if fmt else None


def _iiif_notes(local: list[str], column: str | None, sizes: dict[str, tuple[int, int] | None],
                opts: IiifOptions, result: ExportResult) -> None:
    """Warnings about the canvases that only this machine can show, by uid: a column that images.csv lacks is
    not the same fix as one left empty on some rows."""
    if local:
        why = (f"their column {column!r} is empty in images.csv and they have no image URL" if column else
               f"images.csv has no IIIF service column such as {SERVICE_COLUMNS[0]!r}, nor an image URL for them")
        shown = ", ".join(local[:5]) + (", ..." if len(local) > 5 else "")
        result.warnings.append(f"{len(local)} image(s) of the manifests point at local image files ({shown}: {why}): "
                               "those manifests work only on this machine.")
    unsized = sorted(u for u, s in sizes.items() if s is None)
    if unsized:
        result.warnings.append(f"the size of {len(unsized)} image(s) is unknown (no local file, no width/height "
                               f"columns; first: {unsized[0]!r}): their canvases are {DEFAULT_SIZE}x{DEFAULT_SIZE}.")
    if not opts.base_url:
        result.warnings.append("no --base-url: the IIIF ids are relative to the iiif folder; pass --base-url with the "
                               "address where you will serve it, as IIIF viewers need absolute http(s) ids.")


def _summary_doc(data: ExportData, result: ExportResult, formats: Sequence[str], opts: IiifOptions) -> dict:
    return {"collection": str(data.collection.root.resolve()),
            "clusters": {"path": str(data.clusters_path.resolve()), "sha256": data.clusters_sha256},
            "annotations": {"path": str(data.annotations_path.resolve()),
                            "sha256": file_sha256(data.annotations_path)},
            "formats": list(formats), "base_url": opts.base_url, "counts": result.counts}


def write_export(data: ExportData, out_dir: str | Path, *, formats: Sequence[str] = FORMATS,
                 base_url: str | None = None, service_version: str = "auto") -> ExportResult:
    """Build the export folder (see the module docstring) and swap it in whole."""
    out_dir = Path(out_dir).resolve()
    check_out_dir(out_dir)
    opts = IiifOptions(base_url=base_url, service_version=service_version, iiif_dir=out_dir / IIIF_DIR)
    result = ExportResult(counts={}, files=[], warnings=list(data.warnings))
    tables = {}
    if "csv" in formats:
        tables = {MEMBERS_FILE: member_rows(data), DECISIONS_FILE: decision_rows(data),
                  CONNECTIONS_FILE: connection_rows(data)}
        result.counts.update({name: len(rows) for name, (_, rows) in tables.items()})
    iiif = _iiif_files(data, opts, result) if "iiif" in formats else {}
    summary = _summary_doc(data, result, formats, opts)

    def build(folder: Path) -> None:
        for name, (header, rows) in tables.items():
            write_csv(folder / name, header, rows)
        if iiif:
            (folder / IIIF_DIR).mkdir()
            for name, doc in iiif.items():
                (folder / IIIF_DIR / name).write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n",
                                                      encoding="utf-8")
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    atomic_dir(out_dir, build)
    result.files = list(tables) + ([f"{IIIF_DIR}/ ({len(iiif) - 1} manifests + {COLLECTION_FILE})"] if iiif else [])
    return result

