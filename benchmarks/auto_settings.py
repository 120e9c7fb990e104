"""Centring and thresholds from the data against the fixed defaults, judged by the collection's pattern groups.

    python benchmarks/auto_settings.py --signatures RUN/signatures.npz --collection DIR

For raw and centred signatures: OPTICS (xi) with max_eps 0.13 (the thesis's), auto and inf; DBSCAN with eps 0.08
and auto; HDBSCAN. Each clustering is what `cluster optics` writes (`cluster.clustering.cluster_signatures`) and is
judged as `cluster evaluate` judges it (`cluster.quality.evaluate`: ARI, pairwise precision / recall / F1, noise,
clusters). One JSON line per setting, then a human line each. The figures are in docs/clustering.md ("Settings
from the data"). Importable without grain/tfds/umap/flask.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.clustering import cluster_signatures  # noqa: E402
from cluster.config import COMMAND_DEFAULTS  # noqa: E402
from cluster.quality import evaluate  # noqa: E402
from data.collection import load_collection  # noqa: E402

SETTINGS = (("optics", "max_eps", 0.13), ("optics", "max_eps", "auto"), ("optics", "max_eps", math.inf),
            ("dbscan", "eps", 0.08), ("dbscan", "eps", "auto"), ("hdbscan", None, None))  # fmt: skip


def run(signatures: Path, collection, method: str, name: str | None, value, centre: bool) -> dict:
    """One clustering and its figures."""
    cfg = COMMAND_DEFAULTS
    if name is not None and value != "auto":
        cfg = replace(cfg, **{name: value})
    table, _ = cluster_signatures(signatures, cfg, method=method, centre=centre,
                                  max_eps_auto=value == "auto" and name == "max_eps",
                                  eps_auto=value == "auto" and name == "eps")  # fmt: skip
    q = evaluate(table, collection)
    used = table.params.get(name) if name else None
    return {"bench": "auto_settings", "signatures": str(signatures), "method": method, "centre": centre,
            "setting": f"{name} {value}" if name else "", "value_used": used, "ari": q.ari, "precision": q.precision,
            "recall": q.recall, "f1": q.f1, "noise": q.noise_fraction, "clusters": q.n_clusters}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signatures", type=Path, required=True)
    p.add_argument("--collection", type=Path, required=True)
    args = p.parse_args(argv)
    collection = load_collection(args.collection, quiet=True)
    rows = [run(args.signatures, collection, m, n, v, c) for c in (False, True) for m, n, v in SETTINGS]
    for r in rows:
        print(json.dumps(r))
    for r in rows:
        used = f" (= {float(r['value_used']):.4g})" if r["value_used"] not in (None, "inf") else ""
        print(f"{r['method']:8s} {'centred' if r['centre'] else 'raw':8s} {r['setting'] + used:24s} "
              f"ARI {r['ari']:.3f}  F1 {r['f1'] or 0:.3f}  noise {r['noise']:.0%}  {r['clusters']} clusters")


if __name__ == "__main__":
    main()
