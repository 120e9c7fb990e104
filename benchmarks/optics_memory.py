"""Peak memory of `python -m cluster optics` against its `--memory-budget-mb`, on synthetic signatures.

    python benchmarks/optics_memory.py [--sizes 1600,4000] [--dim 64] [--budgets-mb 64] [--max-eps 2.0]

Each run is a fresh process (`python -m cluster optics`, as a user runs it) whose peak RSS is read with
`os.wait4`. The baseline is the same command on 50 signatures (Python, JAX, the compiled tiles, matplotlib);
what the budget promises is bounded by `peak - baseline <= budget + input` (the signatures file as loaded),
and the issue's bar is a ratio (peak - baseline) / (budget + input) <= 1.5. max_eps 2.0 with cosine puts every
pair in the radius graph, the worst case for the graph engine. One JSON line per run, then a human line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.signatures import Signatures, save_signatures  # noqa: E402


def write_signatures(path: Path, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    save_signatures(path, Signatures(uids=[f"s{i}" for i in range(n)], vectors=x))
    return x


def count_edges(x: np.ndarray, max_eps: float, block: int = 2048) -> int:
    """Directed pairs (i != j) with cosine distance <= max_eps: what the radius graph holds."""
    total = 0
    for s in range(0, len(x), block):
        total += int(np.sum(1.0 - x[s : s + block].astype(np.float64) @ x.T.astype(np.float64) <= max_eps))
    return total - len(x)


def peak_rss_mb(args: list[str]) -> tuple[float, float, str]:
    """Peak RSS (MB) and wall time of one child process; its stdout+stderr for the record."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{text}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, text  # ru_maxrss is in KiB on Linux


def optics_args(
    sig: Path, out: Path, budget_mb: float, max_eps: float, precision: str, engine: str
) -> list[str]:
    return [sys.executable, "-m", "cluster", "optics", str(sig), "--out", str(out), "--max-eps", str(max_eps),
            "--memory-budget-mb", str(budget_mb), "--precision", precision, "--engine", engine]  # fmt: skip


@click.command()
@click.option(
    "--sizes", default="1600,4000", show_default=True, help="Numbers of signatures, comma-separated."
)
@click.option("--dim", default=64, show_default=True)
@click.option("--budgets-mb", default="64", show_default=True, help="Memory budgets (MB), comma-separated.")
@click.option("--max-eps", default=2.0, show_default=True)
@click.option("--precision", default="float64", type=click.Choice(["float64", "float32"]), show_default=True)
@click.option(
    "--engine", default="auto", type=click.Choice(["auto", "graph", "dense", "stream"]), show_default=True
)
def main(sizes: str, dim: int, budgets_mb: str, max_eps: float, precision: str, engine: str) -> None:
    machine = f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_signatures(tmp / "tiny.npz", 50, dim)
        for budget in (float(v) for v in budgets_mb.split(",")):
            base, _, _ = peak_rss_mb(
                optics_args(tmp / "tiny.npz", tmp / "t.csv", budget, max_eps, precision, engine)
            )
            for n in (int(v) for v in sizes.split(",")):
                x = write_signatures(tmp / f"s{n}.npz", n, dim)
                input_mb = (tmp / f"s{n}.npz").stat().st_size / 2**20
                peak, wall, _ = peak_rss_mb(
                    optics_args(tmp / f"s{n}.npz", tmp / "c.csv", budget, max_eps, precision, engine)
                )
                used = json.loads((tmp / "c.json").read_text())["engine"]
                ratio = (peak - base) / (budget + input_mb)
                row = {
                    "n": n, "d": dim, "max_eps": max_eps, "precision": precision, "engine": used,
                    "edges": count_edges(x, max_eps), "budget_mb": budget, "input_mb": round(input_mb, 2),
                    "baseline_mb": round(base, 1), "peak_mb": round(peak, 1), "ratio": round(ratio, 3),
                    "wall_s": round(wall, 2), "machine": machine,
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                print(
                    f"# n={n} d={dim} {used}: {row['edges']:,} edges, budget {budget:g} MB + input {input_mb:.1f} MB; "
                    f"peak {peak:.0f} MB - baseline {base:.0f} MB = {peak - base:.0f} MB -> ratio {ratio:.2f} "
                    f"({'within' if ratio <= 1.5 else 'OVER'} 1.5)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
