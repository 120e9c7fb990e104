"""Ours (cluster.optics, JAX) vs scikit-learn's OPTICS, cosine, on clustered synthetic unit vectors.

    python benchmarks/optics.py [--sizes 1000,5000,20000] [--dims 2048,256] [--sklearn-max-n 5000]

One JSON line per measurement, then a human line with the ratio. Parity (ordering, reachability, core
distances, predecessors, labels) is checked wherever scikit-learn ran; above --sklearn-max-n it is
skipped (said in the output), because scikit-learn's OPTICS is O(n^2) with a Python loop per point.
Timings are wall-clock of one call each; ours is measured after one warm-up call at the same shape
(compilation is reported separately as `ours_first_s`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.optics import OpticsConfig, optics  # noqa: E402


def clustered_unit_vectors(n: int, d: int, seed: int = 0, noise_fraction: float = 0.5) -> np.ndarray:
    """Half the points in small tight groups (cosine distance ~0.05-0.1 within a group), half isolated."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 10), d)) / np.sqrt(d)
    group = rng.integers(0, len(centres), n)
    g = rng.normal(size=(n, d)) / np.sqrt(d)
    x = np.where((rng.random(n) < noise_fraction)[:, None], g, centres[group] + 0.3 * g)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@click.command()
@click.option("--sizes", default="1000,5000,20000", show_default=True)
@click.option("--dims", default="2048,256", show_default=True)
@click.option("--sklearn-max-n", default=5000, show_default=True, help="Skip scikit-learn above this n.")
@click.option("--min-samples", default=2, show_default=True)
@click.option("--max-eps", default=0.13, show_default=True)
@click.option("--precision", default="float64", type=click.Choice(["float64", "float32"]), show_default=True)
def main(sizes: str, dims: str, sklearn_max_n: int, min_samples: int, max_eps: float, precision: str) -> None:
    import jax
    from sklearn.cluster import OPTICS

    machine = (
        f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    for d in (int(v) for v in dims.split(",")):
        for n in (int(v) for v in sizes.split(",")):
            x = clustered_unit_vectors(n, d)
            cfg = OpticsConfig(min_samples=min_samples, max_eps=max_eps, metric="cosine", precision=precision)
            t0 = time.perf_counter()
            ours = optics(x, cfg)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            ours = optics(x, cfg)
            ours_s = time.perf_counter() - t0
            rec = {
                "bench": "optics", "n": n, "d": d, "min_samples": min_samples, "max_eps": max_eps,
                "precision": precision, "engine": ours.engine, "ours_s": round(ours_s, 3),
                "ours_first_s": round(first, 3), "clusters": int(ours.labels.max() + 1),
                "noise_fraction": round(float(np.mean(ours.labels < 0)), 4), "machine": machine,
            }  # fmt: skip
            if n <= sklearn_max_n:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sk = OPTICS(min_samples=min_samples, max_eps=max_eps, metric="cosine").fit(x)
                rec["sklearn_s"] = round(time.perf_counter() - t0, 3)
                rec["ratio"] = round(rec["sklearn_s"] / ours_s, 1)
                rec["parity"] = {
                    "ordering": bool(np.array_equal(sk.ordering_, ours.ordering)),
                    "reachability": bool(np.array_equal(sk.reachability_, ours.reachability)),
                    "core_distances": bool(np.array_equal(sk.core_distances_, ours.core_distances)),
                    "predecessor": bool(np.array_equal(sk.predecessor_, ours.predecessor)),
                    "labels": bool(np.array_equal(sk.labels_, ours.labels)),
                }
                human = (
                    f"n={n} d={d}: ours {ours_s:.2f} s, scikit-learn {rec['sklearn_s']:.1f} s, "
                    f"{rec['ratio']}x faster; parity {'exact' if all(rec['parity'].values()) else rec['parity']}"
                )
            else:
                rec["sklearn_s"] = None
                rec["skipped"] = (
                    f"scikit-learn not run: n > --sklearn-max-n={sklearn_max_n} (O(n^2) Python loop)"
                )
                human = f"n={n} d={d}: ours {ours_s:.2f} s; scikit-learn skipped (n > {sklearn_max_n})"
            print(json.dumps(rec), flush=True)
            print(human, flush=True)


if __name__ == "__main__":
    main()
