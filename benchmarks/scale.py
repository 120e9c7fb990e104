"""Archive scale: time and peak memory of each stage on archive-like synthetic signatures.

    python benchmarks/scale.py --n 10000 --dim 256                 # here (2-core CPU): seconds
    python benchmarks/scale.py --n 100000 --dim 256                # here: the issue's target (< 2 min, < 4 GB)
    python benchmarks/scale.py --n 1000000 --dim 2048 --memory-budget-mb 60000   # one GPU (benchmarks/gpu.sh)
    python benchmarks/scale.py --n 3000 --dim 256 --stages approx  # approximate mode vs scikit-learn

Data (`archive_like`): like a photo archive's signatures: most images unrelated (cosine distance ~0.5
to each other, what trained signatures of unrelated photographs look like), 20% in planted pattern groups
of 2 to 12 images within ~0.05 of each other; unit rows, float32, generated in chunks.

Stages (`--stages`, default all but approx): knn (the exact 32-NN graph, data.knn), optics (cluster.optics
in this process, engine auto: the knn engine), command (`python -m cluster optics --max-eps 0.13` on a
signatures file, in a subprocess: the whole command, start-up and writing included), hdbscan (HDBSCAN on the
kNN graph, cluster/knn_hdbscan.py), mining (train.mining.nearest_non_group: 8 hardest negatives outside the
own group for every grouped image, against the whole collection), retrieval (train.metrics.partner_ranks:
rank of each grouped image's partners among all images), approx (the knn engine's --approximate mode
against scikit-learn's OPTICS on data with groups too big for the lists: ARI of labels, ordering agreement).
knn, mining and retrieval are benchmarks/scale_stages.py's timed stages (a warm-up call first, then seconds,
pairs/s, peak RSS and its growth during the stage, device peak memory on an accelerator).

Each stage prints one JSON line (seconds, peak RSS of the process during the stage, or of the subprocess,
in MB; ARI against the planted groups where it clusters) and one human line. Peak RSS in this process is
sampled every 10 ms by a thread (psutil); it includes what earlier stages left allocated (`rss_before_mb`).
Importable and runnable without grain, tfds, umap or flask.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # scale_stages

STAGES = ("knn", "optics", "command", "hdbscan", "mining", "retrieval")


def archive_like(n: int, d: int, seed: int = 0, grouped: float = 0.2, spread: float = 0.2,
                 max_group: int = 12) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(n, d) unit float32 rows and planted group ids (-1: unrelated). Memory O(n d), built in chunks."""
    rng = np.random.default_rng(seed)
    sizes = []
    left = int(n * grouped)
    while left >= 2:
        s = int(min(left, rng.integers(2, max_group + 1)))
        sizes.append(s)
        left -= s
    labels = np.full(n, -1, dtype=np.int64)
    pos = 0
    for g, s in enumerate(sizes):
        labels[pos : pos + s] = g
        pos += s
    labels = labels[rng.permutation(n)]
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    centres = rng.normal(size=(len(sizes), d)).astype(np.float32) / np.sqrt(d)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):
        lab = labels[s : s + 65536]
        r = rng.standard_normal(size=(len(lab), d), dtype=np.float32) / np.float32(np.sqrt(d))
        own = np.where((lab >= 0)[:, None], centres[np.maximum(lab, 0)] + spread * r, r)
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        v = np.sqrt(0.5) * common[None, :] + np.sqrt(0.5) * own  # unrelated: u.v ~ 0.5, distance ~ 0.5
        x[s : s + 65536] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return x, labels


def ari_vs_planted(planted: np.ndarray, labels: np.ndarray) -> float:
    """ARI with every unrelated image (planted -1) and every noise point (-1) as a cluster of its own."""
    from sklearn.metrics import adjusted_rand_score

    n = len(planted)
    a = np.where(planted >= 0, planted, planted.max(initial=0) + 1 + np.arange(n))
    b = np.where(labels >= 0, labels, labels.max(initial=0) + 1 + np.arange(n))
    return float(adjusted_rand_score(a, b))


def _rss() -> int:
    """This process's resident memory now (psutil), or, without psutil, its peak so far (getrusage)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss:
    """The largest RSS of this process while the block runs, sampled every 10 ms."""

    def __enter__(self) -> PeakRss:
        self.before = _rss()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def timed(fn: Callable[[], dict]) -> dict:
    """Run one stage: its own figures plus seconds, peak and starting RSS (MB)."""
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
    return {"seconds": round(secs, 2), "peak_rss_mb": round(mem.peak / 2**20), "rss_before_mb": round(mem.before / 2**20),
            **out}  # fmt: skip


def stage_optics(x: np.ndarray, planted: np.ndarray, args: dict) -> dict:
    from cluster.config import OpticsConfig
    from cluster.optics import optics

    cfg = OpticsConfig(min_samples=args["min_samples"], max_eps=args["max_eps"], memory_budget_mb=args["budget"])
    from sklearn.cluster import cluster_optics_dbscan

    res = optics(x, cfg)
    # xi (the command's extraction) splits a flat group where its reachabilities wobble by more than xi; the
    # DBSCAN-style cut at max_eps of the same ordering shows whether the groups themselves were found
    cut = cluster_optics_dbscan(reachability=res.reachability, core_distances=res.core_distances,
                                ordering=res.ordering, eps=args["max_eps"])  # fmt: skip
    return {"engine": res.engine, "exact": res.info.get("exact"), "knn_k": res.info.get("knn_k"),
            "clusters": int(res.labels.max() + 1), "ari_planted": round(ari_vs_planted(planted, res.labels), 4),
            "ari_planted_cut_at_max_eps": round(ari_vs_planted(planted, cut), 4)}  # fmt: skip


def _wait_peak(cmd: list[str]) -> tuple[int, float, str]:
    """Run cmd; its exit code, its peak RSS in MB (wait4) and its output."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, usage.ru_maxrss / 1024, out.read().decode(errors="replace")


def stage_command(sig: Path, work: Path, planted: np.ndarray, args: dict) -> dict:
    from cluster.clusters_file import read_clusters

    out = work / "clusters.csv"
    cmd = [sys.executable, "-m", "cluster", "optics", str(sig), "--out", str(out), "--max-eps", str(args["max_eps"]),
           "--min-samples", str(args["min_samples"]), "--memory-budget-mb", str(args["budget"])]  # fmt: skip
    t0 = time.perf_counter()
    rc, peak, text = _wait_peak(cmd)
    secs = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"cluster optics failed ({rc}): {text[-2000:]}")
    from sklearn.cluster import cluster_optics_dbscan

    params = json.loads(out.with_suffix(".json").read_text())
    table = read_clusters(out)
    cut = cluster_optics_dbscan(reachability=table.reachability, core_distances=table.core_distance,
                                ordering=np.argsort(table.order), eps=args["max_eps"])  # fmt: skip
    return {"command_seconds": round(secs, 2), "command_peak_rss_mb": round(peak), "engine": params.get("engine"),
            "exact": params.get("exact"), "ari_planted": round(ari_vs_planted(planted, table.labels), 4),
            "ari_planted_cut_at_max_eps": round(ari_vs_planted(planted, cut), 4),
            "command": " ".join(["python", *cmd[1:]])}  # fmt: skip


def stage_hdbscan(x: np.ndarray, planted: np.ndarray, args: dict) -> dict:
    from cluster.knn_hdbscan import knn_hdbscan

    labels, info, _ = knn_hdbscan(x, min_samples=args["min_samples"], metric="cosine", knn_k=args["hdbscan_k"])
    return {"exact": info.exact, "components": info.components, "knn_k": info.knn_k,
            "clusters": int(labels.max() + 1), "ari_planted": round(ari_vs_planted(planted, labels), 4)}  # fmt: skip


def stage_approx(n: int, d: int, seed: int, k: int) -> dict:
    """--approximate vs scikit-learn's OPTICS where the lists are too short: groups of up to 60, no growth of k."""
    from sklearn.cluster import OPTICS
    from sklearn.metrics import adjusted_rand_score

    from cluster.config import OpticsConfig
    from cluster.knn_graph import least_budget_mb
    from cluster.optics import optics

    x, _ = archive_like(n, d, seed=seed, grouped=0.4, max_group=60)
    base = OpticsConfig(min_samples=2, max_eps=0.13, engine="knn", knn_k=k, approximate=True)
    budget = least_budget_mb(n, d, base)  # room for the first lists, none to grow them: truncated lists
    ours = optics(x, OpticsConfig(**{**base.to_dict(), "memory_budget_mb": budget}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = OPTICS(min_samples=2, max_eps=0.13, metric="cosine").fit(x)
    return {"n_check": n, "exact": ours.info["exact"], "incomplete_rows": ours.info["incomplete_rows"], "knn_k": ours.info["knn_k"],
            "ari_vs_sklearn": round(float(adjusted_rand_score(sk.labels_, ours.labels)), 4),
            "ordering_equal_fraction": round(float(np.mean(sk.ordering_ == ours.ordering)), 4),
            "reachability_equal_fraction": round(float(np.mean(sk.reachability_ == ours.reachability)), 4),
            "labels_equal": bool(np.array_equal(sk.labels_, ours.labels))}  # fmt: skip


HUMAN_SKIP = {"bench", "stage", "n", "d", "machine", "command", "seconds", "peak_rss_mb", "command_seconds",
              "command_peak_rss_mb", "block", "gallery_block", "dtype", "metric"}


def _human(rec: dict) -> str:
    """One line: the stage, its time and peak memory (the command's own where it ran one), then the rest."""
    secs = rec.get("command_seconds", rec.get("seconds"))
    peak = rec.get("command_peak_rss_mb", rec.get("peak_rss_mb"))
    rest = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in rec.items() if k not in HUMAN_SKIP)  # fmt: skip
    return f"{rec['stage']} n={rec['n']} d={rec['d']}: {secs} s, peak RSS {peak} MB; {rest}"


def _machine() -> str:
    import jax

    return f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} on {jax.devices()[0].platform}"


def _run_stage(name: str, n: int, d: int, x, planted, sig: Path | None, work: Path, args: dict) -> dict:
    """One stage's figures. knn, mining and retrieval are benchmarks/scale_stages.py's timed stages (which
    warm up, then report seconds, pairs/s and memory themselves); the others are timed here."""
    groups = np.where(planted >= 0, planted, -1 - np.arange(n))  # scale_stages' convention: ungrouped alone
    fns = {
        "optics": lambda: stage_optics(x, planted, args),
        "command": lambda: stage_command(sig, work, planted, args),
        "hdbscan": lambda: stage_hdbscan(x, planted, args),
        "approx": lambda: stage_approx(args["approx_n"], d, args["seed"], args["approx_k"]),
    }
    try:
        if name in fns:
            return timed(fns[name])
        import scale_stages

        if name == "knn":
            return scale_stages.time_knn(x, 32)
        if name == "mining":
            return scale_stages.time_mining(x, groups, k=8)
        return scale_stages.time_eval(x, groups)
    except ImportError as e:  # a stage whose module is not in this checkout (or lacks a dependency)
        return {"skipped": f"{type(e).__name__}: {e}"}


@click.command()
@click.option("--n", "sizes", default="10000", show_default=True, help="Comma-separated sizes.")
@click.option("--dim", default=256, show_default=True)
@click.option("--stages", default=",".join(STAGES), show_default=True,
              help=f"Comma-separated, from {', '.join(STAGES)}, approx.")  # fmt: skip
@click.option("--min-samples", default=2, show_default=True)
@click.option("--max-eps", default=0.13, show_default=True)
@click.option("--memory-budget-mb", "budget", default=4096.0, show_default=True)
@click.option("--hdbscan-k", default=16, show_default=True)
@click.option("--approx-n", default=3000, show_default=True, help="n of the approx stage (scikit-learn runs on it).")
@click.option("--approx-k", default=8, show_default=True, help="knn_k of the approx stage (at least min_samples + 1).")
@click.option("--seed", default=0, show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False), default=None, help="Where the signatures file goes.")
def main(sizes: str, dim: int, stages: str, min_samples: int, max_eps: float, budget: float, hdbscan_k: int,
         approx_n: int, approx_k: int, seed: int, work_dir: str | None) -> None:  # fmt: skip
    args = {"min_samples": min_samples, "max_eps": max_eps, "budget": budget, "hdbscan_k": hdbscan_k,
            "approx_n": approx_n, "approx_k": approx_k, "seed": seed}  # fmt: skip
    names = [s for s in stages.split(",") if s]
    machine = _machine()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        work = Path(tmp)
        for n in (int(v) for v in sizes.split(",")):
            x, planted = archive_like(n, dim, seed=seed)
            sig = None
            if "command" in names:
                from data.signatures import Signatures, save_signatures

                sig = work / "signatures.npz"
                save_signatures(sig, Signatures(uids=[f"img{i:07d}" for i in range(n)], vectors=x))
            for name in names:
                out = _run_stage(name, n, dim, x, planted, sig, work, args)
                rec = {"bench": "scale", **out, "stage": name, "n": n, "d": dim, "machine": machine}
                print(json.dumps(rec), flush=True)
                print(_human(rec), flush=True)


if __name__ == "__main__":
    main()
