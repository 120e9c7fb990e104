"""Cluster quality against the collection's known connections: pure functions, then a report.

Definitions (the images are the rows of clusters.csv, U; noise = label -1):

- predicted pair: two images of U in the same cluster (never in "the noise": noise is not a cluster);
- true pair: two images of U in the same *pattern group* (`data.graph.pattern_groups`: connected
  components of the POSITIVE graph; a chain of POSITIVE links makes a true pair, direct or not);
- pairwise precision = |predicted & true| / |predicted|, recall = |predicted & true| / |true|, F1 their
  harmonic mean, over all unordered pairs of U. Precision counts a predicted pair of never-annotated
  images as wrong, though it may be a real discovery; `precision_known` restricts the predicted pairs
  to those whose two images both belong to some pattern group (both were looked at);
- ARI and NMI (scikit-learn) between clusters and pattern groups on the images of U that have a group;
  each noise image is its own singleton cluster there, so noise is never one big cluster;
- proposed pairs split into `known` (a direct connection of any type in connections.csv, counted by
  type), `implied` (no direct connection but in one pattern group) and `new` (neither): `new` is what
  an expert would be asked about for the first time.

Every row of clusters.csv must be an image of the collection: a uid that is not in images.csv would be
counted as an image without a group (a wrong precision, and a sign the signatures came from another
collection), so `evaluate` refuses it (`UnknownUidsError`) unless told to leave such rows out, and then
the report lists them (`uids_not_in_collection`). The same rule guards `cluster report` and `cluster map`.

The other way round, clusters of part of a collection (signatures of a subset) are judged on that part
only: recall is over the known pairs whose two images are both in clusters.csv. The report says how much
of the collection that is (`collection_images`, `collection_true_pairs`) and warns (`warnings`) when it
is not all of it, since a recall "over 6 pairs" reads like one over the collection's 22.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cluster.clusters_file import ClusterTable
from data.atomic import atomic_write_text
from data.collection import Collection
from data.graph import pattern_groups


def _pairs(n: np.ndarray | int) -> np.ndarray | int:
    return n * (n - 1) // 2


def pair_confusion(pred: Sequence[int], true: Sequence[int | None]) -> tuple[int, int, int]:
    """(predicted pairs, true pairs, pairs both predicted and true) over all unordered pairs.

    pred: cluster label per item, -1 = noise (pairs with a noise item are never predicted);
    true: group id per item, None = no group (pairs with such an item are never true).
    Counted from the contingency table, so a large cluster costs nothing extra.
    """
    pred = list(pred)
    true = list(true)
    if len(pred) != len(true):
        raise ValueError("pred and true must have the same length.")
    sizes_p = Counter(p for p in pred if p >= 0)
    sizes_t = Counter(t for t in true if t is not None)
    cells = Counter((p, t) for p, t in zip(pred, true, strict=True) if p >= 0 and t is not None)
    n_pred = sum(_pairs(s) for s in sizes_p.values())
    n_true = sum(_pairs(s) for s in sizes_t.values())
    n_both = sum(_pairs(s) for s in cells.values())
    return n_pred, n_true, n_both


def precision_recall_f1(
    n_pred: int, n_true: int, n_both: int
) -> tuple[float | None, float | None, float | None]:
    """None where undefined (no predicted pairs -> no precision; no true pairs -> no recall)."""
    p = n_both / n_pred if n_pred else None
    r = n_both / n_true if n_true else None
    if p is None or r is None:
        f = None
    else:
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def singleton_noise(labels: Sequence[int]) -> np.ndarray:
    """Labels where each noise point (-1) gets its own new label, so no metric sees a 'noise cluster'."""
    lab = np.asarray(labels, dtype=np.int64).copy()
    noise = np.flatnonzero(lab < 0)
    start = int(lab.max()) + 1 if lab.size else 0
    lab[noise] = start + np.arange(noise.size)
    return lab


@dataclass
class QualityReport:
    n_images: int
    n_clusters: int
    noise_fraction: float
    clustered_images: int
    size_histogram: dict[int, int]
    median_cluster_size: float | None
    images_with_group: int
    pattern_groups: int
    predicted_pairs: int
    true_pairs: int
    true_positive_pairs: int
    precision: float | None
    recall: float | None
    f1: float | None
    precision_known: float | None
    ari: float | None
    nmi: float | None
    proposed_pairs_known: int
    proposed_pairs_known_by_type: dict[str, int] = field(default_factory=dict)
    proposed_pairs_implied: int = 0
    proposed_pairs_new: int = 0
    uids_not_in_collection: list[str] = field(default_factory=list)  # rows left out (ignore_unknown)
    collection_images: int = 0  # distinct uids of images.csv
    collection_true_pairs: int = 0  # pairs in one pattern group over the whole collection
    warnings: list[str] = field(default_factory=list)  # what the figures do not cover (see the module docstring)
    clusters_file: str | None = None  # the clusters.csv judged (absolute path) and its sha256, so that a later
    clusters_sha256: str | None = None  # reader (`cluster report`) can tell a quality file of another clustering
    definitions: str = "see cluster/quality.py"


class UnknownUidsError(ValueError):
    """Rows of a clusters file whose uid is not in the collection (the message names them)."""


def unknown_uids(table: ClusterTable, collection: Collection) -> list[str]:
    return [u for u in table.uids if u not in collection]


def restrict(table: ClusterTable, uids: set[str]) -> ClusterTable:
    """The rows of `table` whose uid is in `uids`, in their order; `order` renumbered to stay a permutation."""
    keep = np.array([u in uids for u in table.uids], dtype=bool)
    order = np.argsort(np.argsort(table.order[keep], kind="stable"), kind="stable")
    return ClusterTable(uids=[u for u, k in zip(table.uids, keep.tolist(), strict=True) if k],
                        labels=table.labels[keep], order=order, reachability=table.reachability[keep],
                        core_distance=table.core_distance[keep], params=dict(table.params))


def unknown_uids_message(unknown: Sequence[str], collection: Collection, consequence: str, advice: str = "") -> str:
    """The one message for rows whose uid is not in the collection: how many, the first ones, what to do."""
    first = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return (f"{len(unknown)} uid(s) are not in {collection.images_file} ({first}); {consequence}. Were the "
            "signatures made from another collection (then pass that collection, or re-run `python -m model embed` "
            "and `python -m cluster optics` on this one)?" + (f" {advice}" if advice else ""))


def _check_uids(table: ClusterTable, collection: Collection, ignore_unknown: bool) -> tuple[ClusterTable, list[str]]:
    unknown = unknown_uids(table, collection)
    if not unknown:
        return table, []
    if not ignore_unknown:
        raise UnknownUidsError(unknown_uids_message(
            unknown, collection, "they would be counted as images without a pattern group",
            "To judge the other images only, pass --ignore-unknown."))
    return restrict(table, set(table.uids) - set(unknown)), unknown


def coverage_warnings(n_images: int, n_true: int, collection_images: int, collection_true: int) -> list[str]:
    """What part of the collection the figures are about, when it is not all of it."""
    if n_images >= collection_images and n_true >= collection_true:
        return []
    return [f"covers {n_images} of the collection's {collection_images} images and {n_true} of its "
            f"{collection_true} known pairs (two images in one pattern group); recall, ARI and NMI are over those "
            f"only: the {collection_true - n_true} known pair(s) with an image outside clusters.csv are not counted. "
            "Cluster signatures of the whole collection to judge it all."]


def evaluate(table: ClusterTable, collection: Collection, *, ignore_unknown: bool = False) -> QualityReport:
    """All figures for one clustering (pure: reads nothing, writes nothing).

    Raises `UnknownUidsError` for rows whose uid is not in the collection, or with `ignore_unknown`
    leaves them out of every figure and lists them in the report.
    """
    table, unknown = _check_uids(table, collection, ignore_unknown)
    groups = pattern_groups(collection)
    collection_images = len(set(collection.uids))
    collection_true = sum(_pairs(s) for s in Counter(groups.values()).values())
    uids = table.uids
    labels = table.labels
    index = {u: i for i, u in enumerate(uids)}
    true = [groups.get(u) for u in uids]
    n_pred, n_true, n_both = pair_confusion(labels.tolist(), true)
    precision, recall, f1 = precision_recall_f1(n_pred, n_true, n_both)
    # precision over predicted pairs whose two images both have a group
    has_group = np.array([t is not None for t in true], dtype=bool)
    in_both = Counter(
        int(lab) for lab, g in zip(labels.tolist(), has_group.tolist(), strict=True) if lab >= 0 and g
    )
    n_pred_known = sum(_pairs(s) for s in in_both.values())
    precision_known = n_both / n_pred_known if n_pred_known else None
    # ARI / NMI on the images that have a group; noise as singletons
    sel = np.flatnonzero(has_group)
    ari = nmi = None
    if sel.size >= 2:
        pred_sel = singleton_noise(labels[sel])
        true_sel = [true[i] for i in sel]
        ari = float(adjusted_rand_score(true_sel, pred_sel))
        nmi = float(normalized_mutual_info_score(true_sel, pred_sel))
    # proposed pairs: known directly (by type), implied by a group, new
    direct: dict[tuple[str, str], set[str]] = {}
    for c in collection.connections:
        if c.a == c.b or c.a not in index or c.b not in index:
            continue
        direct.setdefault(c.pair, set()).add(c.type)
    known = 0
    by_type: Counter[str] = Counter()
    known_same_group = 0
    for (a, b), types in direct.items():
        la, lb = labels[index[a]], labels[index[b]]
        if la >= 0 and la == lb:
            known += 1
            for t in types:
                by_type[t] += 1
            if groups.get(a) is not None and groups.get(a) == groups.get(b):
                known_same_group += 1
    implied = n_both - known_same_group
    new = n_pred - known - implied
    sizes = Counter(int(lab) for lab in labels.tolist() if lab >= 0)
    hist = dict(sorted(Counter(sizes.values()).items()))
    n = len(uids)
    return QualityReport(
        n_images=n,
        n_clusters=len(sizes),
        noise_fraction=float(np.mean(labels < 0)) if n else 0.0,
        clustered_images=int(np.sum(labels >= 0)),
        size_histogram=hist,
        median_cluster_size=float(np.median(list(sizes.values()))) if sizes else None,
        images_with_group=int(has_group.sum()),
        pattern_groups=len({t for t in true if t is not None}),
        predicted_pairs=n_pred,
        true_pairs=n_true,
        true_positive_pairs=n_both,
        precision=precision,
        recall=recall,
        f1=f1,
        precision_known=precision_known,
        ari=ari,
        nmi=nmi,
        proposed_pairs_known=known,
        proposed_pairs_known_by_type=dict(sorted(by_type.items())),
        proposed_pairs_implied=implied,
        proposed_pairs_new=new,
        uids_not_in_collection=unknown,
        collection_images=collection_images,
        collection_true_pairs=collection_true,
        warnings=coverage_warnings(n, n_true, collection_images, collection_true),
    )


def _f(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.4f}"


def format_report(r: QualityReport) -> str:
    """A readable table for the terminal."""
    rows = [
        ("images", f"{r.n_images} of {r.collection_images} in the collection" if r.collection_images else
         str(r.n_images)),
        ("clusters (noise is not one)", str(r.n_clusters)),
        ("noise fraction", _f(r.noise_fraction, pct=True)),
        ("median cluster size", "n/a" if r.median_cluster_size is None else f"{r.median_cluster_size:g}"),
        ("cluster sizes (size: count)", ", ".join(f"{k}: {v}" for k, v in r.size_histogram.items()) or "-"),
        ("images in a pattern group", f"{r.images_with_group} in {r.pattern_groups} groups"),
        ("pairs predicted / true / both", f"{r.predicted_pairs} / {r.true_pairs} / {r.true_positive_pairs}"
         + (f" (the collection has {r.collection_true_pairs} true pairs)" if r.collection_true_pairs > r.true_pairs
            else "")),
        ("pairwise precision", _f(r.precision)),
        ("pairwise precision (known images)", _f(r.precision_known)),
        ("pairwise recall", _f(r.recall)),
        ("pairwise F1", _f(r.f1)),
        ("ARI (images with a group)", _f(r.ari)),
        ("NMI (images with a group)", _f(r.nmi)),
        (
            "proposed pairs known",
            f"{r.proposed_pairs_known}"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in r.proposed_pairs_known_by_type.items())})"
                if r.proposed_pairs_known
                else ""
            ),
        ),
        ("proposed pairs implied by a group", str(r.proposed_pairs_implied)),
        ("proposed pairs NEW", str(r.proposed_pairs_new)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def report_dict(r: QualityReport) -> dict:
    d = asdict(r)
    d["size_histogram"] = {str(k): v for k, v in r.size_histogram.items()}
    return d


def write_report(path: str | Path, r: QualityReport) -> None:
    atomic_write_text(path, json.dumps(report_dict(r), indent=2) + "\n")
