"""One small, complete workspace of every stage's files, for the fault-injection suite.

A museum-like collection (PNG images, an images.csv with a metadata column, a connections.csv with two
columns the tool does not know), signatures in which the pattern groups are close, the clusters
`cluster optics` makes of them, one expert decision in annotations.jsonl, a finished-run folder with an
eval.json, a map folder. Built once per test session (in-process, no JAX compile) and copied per test,
so every fault starts from the same pristine files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.train.conftest import build_tiny_collection

# The museum's own columns: every writer must keep them, with their values and their order.
USER_COLUMNS = ("comment", "reviewer")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def coll(self) -> Path:
        return self.root / "coll"

    @property
    def sig(self) -> Path:
        return self.root / "sig.npz"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters.csv"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def map(self) -> Path:
        return self.root / "map"

    @property
    def annotations(self) -> Path:
        return self.coll / "annotations.jsonl"

    def uids(self) -> list[str]:
        with open(self.coll / "images.csv", newline="", encoding="utf-8") as fh:
            return [r["uid"] for r in csv.DictReader(fh)]

    def copy(self, dest: Path) -> Workspace:
        shutil.copytree(self.root, dest, symlinks=True)
        return Workspace(dest)


def _add_user_columns(connections: Path) -> None:
    with open(connections, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    # the museum's columns sit in the middle, not at the end: order must survive too
    out = [header[:2] + [USER_COLUMNS[0]] + header[2:] + [USER_COLUMNS[1]]]
    for i, r in enumerate(rows[1:]):
        r = r + [""] * (len(header) - len(r))
        out.append(r[:2] + [f"checked in archive, box {i}"] + r[2:] + ["M. Rossi"])
    with open(connections, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(out)


def _signatures(ws: Workspace) -> None:
    """Unit vectors in which the members of each pattern group sit close together (cosine ~0.02)."""
    from data.signatures import Signatures, save_signatures

    uids = ws.uids()
    rng = np.random.default_rng(0)
    centres: dict[str, np.ndarray] = {}
    vecs = []
    for u in uids:
        group = u.split("_")[0]  # "train03_012" -> "train03"; distractors each get their own centre
        if group.startswith("distractor"):
            group = u
        c = centres.setdefault(group, rng.normal(size=32))
        v = c / np.linalg.norm(c) + rng.normal(scale=0.05, size=32)
        vecs.append(v / np.linalg.norm(v))
    save_signatures(ws.sig, Signatures(uids, np.asarray(vecs, np.float32), meta={"arch": "test"}))


def _clusters(ws: Workspace) -> None:
    from cluster.clustering import cluster_signatures
    from cluster.clusters_file import write_clusters
    from cluster.config import OpticsConfig

    cfg = OpticsConfig(min_samples=2, max_eps=0.3, metric="cosine")
    table, _ = cluster_signatures(str(ws.sig), cfg, method="optics", pca=None)
    write_clusters(ws.clusters, table)
    assert len(set(table.labels.tolist()) - {-1}) >= 4, "the fault workspace needs a few clusters"


def _decision(ws: Workspace) -> None:
    from cluster.annotate.store import AnnotationStore
    from cluster.clusters_file import file_sha256, read_clusters

    table = read_clusters(ws.clusters)
    clusters = table.clusters()
    cid = min(clusters)
    members = clusters[cid]
    store = AnnotationStore(ws.coll)
    edges = [[a, b, "POSITIVE"] for i, a in enumerate(members) for b in members[i + 1:]]
    store.decide(cluster=cid, decision="confirm", members=members, ticked=members, edges=edges,
                 clusters_file=str(ws.clusters), clusters_sha256=file_sha256(ws.clusters), annotator="tester")


def _run_folder(ws: Workspace) -> None:
    """What a finished `python -m train` leaves that later stages read: eval.json and curves.png."""
    ws.run.mkdir()
    split = {"mAP": 0.5, "recall@1": 0.4, "recall@10": 0.8, "num_queries": 6}
    (ws.run / "eval.json").write_text(json.dumps({"start": {"val": split, "test": split},
                                                  "trained": {"val": split, "test": split}}), encoding="utf-8")
    Image.new("RGB", (40, 20), (255, 255, 255)).save(ws.run / "curves.png")


def build_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    build_tiny_collection(ws.coll, groups=(4, 2, 2), members=3, distractors=4, size=32)
    _add_user_columns(ws.coll / "connections.csv")
    _signatures(ws)
    _clusters(ws)
    _decision(ws)
    _run_folder(ws)
    return ws


def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under `paths` (folders walked), keyed by path: to prove inputs untouched."""
    out: dict[str, str] = {}
    for p in paths:
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out
