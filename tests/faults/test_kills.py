"""Kill -9 at any moment: outputs complete or absent, the user's files untouched, a rerun finishes the job.

Each command of `CASES` runs as a user runs it (a subprocess in the workspace folder, relative paths) with
the crash-point injector of tests/faults/crashpoints/sitecustomize.py on its PYTHONPATH. A first,
uninterrupted run lists the command's file-system steps (open for writing, close, fsync, rename, unlink,
mkdir, truncate) and gives the reference outputs. Then, for chosen steps N, a fresh copy of the workspace
runs the command again, killed with SIGKILL just before step N, and the suite checks:
- every output is absent or byte-identical to the reference (never half a file; an output that is not
  byte-reproducible, the prepared dataset, is compared through what a reader gets from it);
- `data check` writes nothing but its cache;
- every file of the user (collection, signatures, clusters, run) is unchanged, or (for a command whose job
  is to rewrite one, `cluster accept`) is either the old file or the whole new one;
- running the command again finishes the job: exit 0, outputs identical to the reference, and no temp file
  of the killed process left in the workspace.
Between two steps nothing on disk changes, so killing before each step covers every state a kill can leave.
Commands with few steps are killed before every one; long ones (a map writes a thumbnail per image) at
`MAX_POINTS` steps chosen to include every rename onto a final name (those change what a reader sees), the
first and the last step, then renames inside scratch folders; `VS_FAULTS_ALL=1` kills before every step of
every command.

A case with `over` runs that command first, uninterrupted (the same command with other parameters), so that the
killed command overwrites an older output, as a user re-running it does. After a kill, the outputs present must
then all belong to one run: each file equal to the older run's, or each equal to the new run's, never a new
clusters.csv beside an older reachability.png, or a new coords.csv beside an older map.html.

Training has its own test below: killed twice at two steps inside checkpoint and export writes, resumed
each time, it must end bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.faults.workspace import Workspace, digest

REPO = Path(__file__).resolve().parents[2]
CRASH_DIR = Path(__file__).resolve().parent / "crashpoints"
MAX_POINTS = 8
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]  # after `python -m`, relative to the workspace folder
    outputs: list[str]  # files or folders the command creates (relative)
    rewrites: set[str] = field(default_factory=set)  # user files it may replace (relative)
    # Outputs that are not byte-reproducible (a dataset whose record order and fingerprint depend on the
    # folder): compared through what a reader gets from them instead.
    view: Callable[[Path], object] | None = None
    max_points: int = MAX_POINTS
    over: list[str] | None = None  # run first, uninterrupted: the older output the command overwrites
    # An output a kill may leave smaller but whole (an index lists the parts it finished): `view` must then
    # give a dict, and what a killed run left must be a part of the finished run's (every key equal).
    grows: bool = False


def prepared_view(root: Path) -> object:
    """What training reads from a prepared dataset: (uid, image bytes) by collection index; None if absent."""
    from data.pipeline import open_prepared

    folder = root / "coll" / "prepared"
    if not folder.exists():
        return None
    src = open_prepared(folder)
    return sorted((int(i), *src[int(i)]) for i in src.indices), dict(src.skipped)


def index_view(root: Path) -> object:
    """What a reader gets from the search index `idx`: its settings, its PCA and every image's vectors and size
    by uid (how the images fell into parts depends on where a run resumed); None if absent."""
    import json

    from model.index import SearchIndex

    if not (root / "idx" / "manifest.json").exists():
        return None
    index = SearchIndex.open(root / "idx")
    settings = {k: v for k, v in index.manifest.items() if k not in ("parts", "weights", "calibration")}
    pca = (root / "idx" / "pca.npz").read_bytes() if index.pca is not None else None
    # written once every part is: absent after a kill before it, then the finished run's
    calibration = {"calibration": index.manifest["calibration"]} if "calibration" in index.manifest else {}
    images = {}
    for part in index.parts:
        for row, uid in enumerate(part.uids):
            images[uid] = (np.asarray(part.global_[row]).tobytes(), np.asarray(part.regions[row]).tobytes(),
                           part.sizes[row].tolist())
    return {"settings": json.dumps(settings, sort_keys=True), "pca": pca, **calibration, **images}


CASES = [
    # `data check` writes nothing but its cache (complete or absent); `data thumbs` in this process (--workers 1:
    # the injector counts steps per process)
    Case("data check", ["data", "check", "coll"], ["coll/.cache/check.jsonl"]),
    Case("data thumbs", ["data", "thumbs", "coll", "--workers", "1", "--no-progress"], ["coll/.cache/thumbs-256"]),
    Case("data prepare", ["data", "prepare", "coll"], ["coll/prepared"], view=prepared_view, max_points=6),
    Case("cluster optics", ["cluster", "optics", "sig.npz", "--out", "out/clusters.csv", "--max-eps", "0.3"],
         ["out"]),
    Case("cluster evaluate", ["cluster", "evaluate", "clusters.csv", "--collection", "coll", "--json", "q.json"],
         ["q.json"]),
    Case("cluster accept", ["cluster", "accept", "--collection", "coll"], [], rewrites={"coll/connections.csv"}),
    Case("data splits", ["data", "splits", "coll", "--out", "splits.json"], ["splits.json"]),
    Case("cluster export", ["cluster", "export", "coll", "--clusters", "clusters.csv", "--out", "export"], ["export"]),
    Case("cluster report", ["cluster", "report", "--collection", "coll", "--clusters", "clusters.csv", "--run", "run",
                            "--out", "report.html"], ["report.html"]),
    Case("model embed", ["model", "embed", "--weights", "random", "--arch", "resnet18", "--collection", "coll",
                         "--resolution", "32", "--batch-size", "8", "--out", "emb.npz", "--no-progress"],
         ["emb.npz"], max_points=5),
    Case("model embed in chunks", ["model", "embed", "--weights", "random", "--arch", "resnet18", "--collection", "coll",
                                   "--resolution", "32", "--batch-size", "4", "--chunk-images", "8", "--out",
                                   "emb.npz", "--no-progress", "--store-dtype", "float16"], ["emb.npz"], max_points=6),
    Case("cluster map", ["cluster", "map", "sig.npz", "--collection", "coll", "--clusters", "clusters.csv", "--out",
                         "newmap", "--n-neighbors", "4", "--thumb-size", "16", "--workers", "1"],
         ["newmap", "coll/.cache/thumbs-16"], max_points=3),  # the thumbnail cache grows: each file whole
    Case("model index", ["model", "index", "--weights", "random", "--arch", "resnet18", "--collection", "coll",
                         "--resolution", "64", "--batch-size", "4", "--chunk-images", "4", "--pca", "8",
                         "--pca-images", "6", "--workers", "0", "--out", "idx", "--no-progress"], ["idx"],
         view=index_view, grows=True, max_points=6),
    # over an older output (few points: the renames that swap the new files in are what matter here)
    Case("cluster optics over an older clustering",
         ["cluster", "optics", "sig.npz", "--out", "out/clusters.csv", "--max-eps", "0.3"], ["out"], max_points=3,
         over=["cluster", "optics", "sig.npz", "--out", "out/clusters.csv", "--max-eps", "0.3", "--min-samples", "3"]),
    Case("cluster map over an older map",
         ["cluster", "map", "sig.npz", "--collection", "coll", "--clusters", "clusters.csv", "--out", "newmap",
          "--n-neighbors", "4", "--thumb-size", "16", "--workers", "1"], ["newmap"],  # the cache: see above
         max_points=2,
         over=["cluster", "map", "sig.npz", "--collection", "coll", "--out", "newmap", "--n-neighbors", "5",
               "--thumb-size", "20"]),
]


def _env(root: Path, at: int = 0, log: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CRASH_DIR), str(REPO), env.get("PYTHONPATH", "")])
    env.update(VS_CRASH_ROOT=str(root), VS_CRASH_AT=str(at), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               MPLBACKEND="Agg")
    if log is not None:
        env["VS_CRASH_LOG"] = str(log)
    return env


def run(argv: list[str], root: Path, at: int = 0, log: Path | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=root, env=_env(root, at, log), capture_output=True,
                          text=True, timeout=timeout)


def steps(log: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in log.read_text().splitlines():
        n, kind, path = line.split(" ", 2)
        out.append((int(n), kind, path))
    return out


def choose(points: list[tuple[int, str, str]], k: int) -> list[int]:
    """Every step when there are few; else, up to k: the renames onto final names, the first and the last step,
    the renames inside scratch folders, then evenly spaced others."""
    ns = [n for n, _, _ in points]
    if os.environ.get("VS_FAULTS_ALL") or len(ns) <= k:
        return ns
    renames = [(n, path) for n, kind, path in points if kind in ("replace", "rename")]
    ranked = [n for n, path in renames if not _is_temp(Path(path))] + [ns[0], ns[-1]] + [n for n, _ in renames]
    must = set(list(dict.fromkeys(ranked))[:k])
    rest = [n for n in ns if n not in must]
    extra = k - len(must)
    if extra > 0 and rest:
        must |= {rest[int(i)] for i in np.linspace(0, len(rest) - 1, extra)}
    return sorted(must)


def snapshot(root: Path, rels: list[str]) -> dict[str, bytes]:
    """Bytes of every file under the given paths (folders walked), keyed by path relative to root.

    Provenance records name the workspace's absolute path, which differs between copies: it is replaced
    by a placeholder so that two runs in two copies compare equal byte for byte.
    """
    out: dict[str, bytes] = {}
    names = sorted({str(root).encode(), str(root.resolve()).encode()}, key=len, reverse=True)
    for rel in rels:
        p = root / rel
        files = [x for x in p.rglob("*") if x.is_file()] if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            data = _canonical_npz(f) if f.suffix == ".npz" and not _is_temp(f.relative_to(root)) else f.read_bytes()
            for name in names:
                data = data.replace(name, b"<WS>")
            out[str(f.relative_to(root))] = data
    return out


def _canonical_npz(path: Path) -> bytes:
    """An .npz as its arrays' names, shapes and contents: the zip's own offsets and a text array's width move
    when a path stored inside (provenance) is longer in one workspace copy than in another. Text arrays are
    compared as UTF-8 text (where the path placeholder applies). An unreadable file stays raw bytes."""
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = []
            for k in sorted(z.files):
                a = z[k]
                body = "\x1f".join(map(str, a.ravel())).encode() if a.dtype.kind == "U" else a.tobytes()
                parts.append(f"{k}:{a.dtype.kind}:{a.shape}:".encode() + body)
    except Exception:  # noqa: BLE001 - a half-written file: compared as raw bytes, so it shows as incomplete
        return path.read_bytes()
    return b"\n".join(parts)


def _is_temp(rel: Path) -> bool:
    return any(part.startswith(".") and "tmp" in part for part in rel.parts)


def litter(root: Path, ref_root: Path) -> list[str]:
    """Files a killed process left that a finished run does not have (temp files, half folders).

    Backups (`*.bak-<time>`) are not litter: each run that rewrites a user's file keeps one.
    """
    def names(r: Path) -> set[str]:
        return {str(p.relative_to(r)) for p in r.rglob("*") if ".bak-" not in p.name}

    return sorted(names(root) - names(ref_root))


def user_files(ws: Workspace) -> list[str]:
    return ["coll", "sig.npz", "clusters.csv", "run", "map"]


def outputs_of(case: Case, root: Path) -> object:
    return case.view(root) if case.view is not None else snapshot(root, case.outputs)


def _check_after_kill(case: Case, root: Path, n: int, pristine: dict[str, bytes], ref_user: dict[str, bytes],
                      ref_out, old_out: dict[str, bytes] | None = None) -> None:
    where = f"{case.name}, killed before step {n}"
    user_now = snapshot(root, user_files(Workspace(root)))
    for rel, data in pristine.items():
        now = user_now.get(rel)
        if now == data:
            continue
        assert rel in case.rewrites, f"{where}: the user's {rel} changed"
        assert now == ref_user.get(rel), f"{where}: {rel} is neither the old file nor the whole new one"
    if case.view is not None:
        now = case.view(root)
        if case.grows and now is not None:
            wrong = [k for k, v in now.items() if ref_out.get(k) != v]
            assert not wrong, f"{where}: the output holds {wrong[:3]} unlike a finished run's"
            return
        assert now is None or now == ref_out, f"{where}: the output reads differently from a finished run's"
        return
    present = {rel: data for rel, data in snapshot(root, case.outputs).items()
               if not _is_temp(Path(rel))}  # a killed process's hidden temp files: the rerun must remove them
    if old_out is not None:  # over an older output: every file the older run's, or every file the new run's
        runs = {"older": old_out, "new": ref_out}
        whose = {rel: [name for name, out in runs.items() if out.get(rel) == data] for rel, data in present.items()}
        assert any(all(name in w for w in whose.values()) for name in runs), \
            f"{where}: the outputs mix two runs: {_mix(whose)}"
        return
    for rel, data in present.items():
        assert rel in ref_out, f"{where}: left {rel}, which a finished run does not write"
        assert data == ref_out[rel], f"{where}: {rel} is incomplete (differs from a finished run's)"


def _mix(whose: dict[str, list[str]]) -> str:
    """Which files equal which run's, a few names each: e.g. `new: out/clusters.csv; older: out/reachability.png`."""
    groups: dict[str, list[str]] = {}
    for rel, names in whose.items():
        groups.setdefault(" and ".join(names) or "neither (incomplete)", []).append(rel)
    return "; ".join(f"{k}: {', '.join(v[:3])}{f' (+{len(v) - 3} more)' if len(v) > 3 else ''}"
                     for k, v in groups.items())


def _start(case: Case, pristine: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, bytes] | None]:
    """The workspace every run of the case starts from: the pristine one, or (`over`) one holding the older output
    the command overwrites, with that output's snapshot."""
    if case.over is None:
        return pristine, None
    start = pristine.copy(tmp_path / "start")
    older = run(case.over, start.root)
    assert older.returncode == 0, older.stderr
    return start, snapshot(start.root, case.outputs)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kill_at_every_step(case: Case, _pristine: Workspace, tmp_path: Path) -> None:
    start, old_out = _start(case, _pristine, tmp_path)
    ref = start.copy(tmp_path / "ref")
    log = tmp_path / "steps.log"
    pristine_user = snapshot(ref.root, user_files(ref))
    done = run(case.argv, ref.root, log=log)
    assert done.returncode == 0, done.stderr
    ref_out = outputs_of(case, ref.root)
    ref_user = snapshot(ref.root, user_files(ref))
    points = steps(log)
    if not case.outputs and not case.rewrites:  # a read-only command: a kill cannot harm what it never writes
        assert not points, f"{case.name} should write nothing, but it did: {points[:3]}"
        assert ref_user == pristine_user
        return
    assert points, f"{case.name}: no file-system step seen; is the injector loaded?"
    if old_out is not None:
        assert old_out and old_out != ref_out, f"{case.name}: the older run must leave other outputs"
    for n in choose(points, case.max_points):
        ws = start.copy(tmp_path / f"kill{n}")
        killed = run(case.argv, ws.root, at=n)
        assert killed.returncode == -9, f"{case.name}: not killed before step {n} ({killed.returncode})"
        _check_after_kill(case, ws.root, n, pristine_user, ref_user, ref_out, old_out)
        again = run(case.argv, ws.root)
        assert again.returncode == 0, f"{case.name}: the rerun after a kill before step {n} failed:\n{again.stderr}"
        assert "Traceback" not in again.stderr
        left = litter(ws.root, ref.root)
        assert not left, f"{case.name}: killed before step {n} and run again, it left {left}"
        assert outputs_of(case, ws.root) == ref_out, f"{case.name}: rerun after step {n} differs"
        final_user = snapshot(ws.root, user_files(ws))
        for rel in case.rewrites:
            assert final_user.get(rel) == ref_user.get(rel), f"{case.name}: {rel} after the rerun (step {n})"


def test_digest_helper_sees_changes(tmp_path):
    """The suite's own instrument: a changed byte changes the digest (else every check above is void)."""
    f = tmp_path / "a.csv"
    f.write_bytes(b"uid,path\n")
    before = digest([tmp_path])
    f.write_bytes(b"uid,path \n")
    assert digest([tmp_path]) != before


TRAIN = ["train", "--collection", "coll", "--arch", "resnet18", "--weights", "random", "--preset", "demo",
         "--no-progress", "--set", "resolution=32", "--set", "batch_size=4", "--set", "epochs=2",
         "--set", "num_negatives=1", "--set", "eval_batch_size=16", "--set", "checkpoint_every=1",
         "--set", "slow_stages=", "--set", "frozen_stages=", "--set", "lr=3e-4"]


def _train(root: Path, out: str, *extra: str, match: str = "", at: int = 0) -> subprocess.CompletedProcess:
    env = _env(root, at)
    env["VS_CRASH_MATCH"] = match
    return subprocess.run([sys.executable, "-m", *TRAIN, "--out", out, *extra], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


def test_training_killed_in_a_checkpoint_and_in_the_export_resumes_bit_identical(_pristine, tmp_path):
    """SIGKILL inside the 2nd checkpoint write, then again inside the weights export of the resumed run;
    a third `--resume` finishes. Parameters, signatures and retrieval figures equal an uninterrupted run's."""
    from tests.train.conftest import assert_runs_end_alike

    ws = _pristine.copy(tmp_path / "ws")
    ref = _train(ws.root, "ref")
    assert ref.returncode == 0, ref.stderr
    first = _train(ws.root, "run", match="run/checkpoints/2.", at=10)
    assert first.returncode == -9, f"not killed inside a checkpoint write:\n{first.stderr}"
    assert not (ws.root / "run" / "signatures.npz").exists()
    second = _train(ws.root, "run", "--resume", match="run/.weights", at=5)
    assert second.returncode == -9, f"not killed inside the weights export:\n{second.stderr}"
    third = _train(ws.root, "run", "--resume")
    assert third.returncode == 0, third.stderr
    assert "Traceback" not in third.stderr
    assert_runs_end_alike(ws.root / "ref", ws.root / "run")
    left = [p.name for p in (ws.root / "run").iterdir() if "tmp" in p.name or ".old" in p.name]
    assert not left, f"the resumed run left {left}"



EMBED = ["model", "embed", "--weights", "random", "--arch", "resnet18", "--collection", "coll", "--resolution", "32",
         "--batch-size", "4", "--chunk-images", "6", "--out", "emb.npz", "--no-progress"]


def test_embed_killed_mid_run_resumes_at_the_first_missing_chunk_byte_identical(_pristine, tmp_path):
    """`model embed` killed while writing its 3rd chunk: the rerun says it resumes, writes only the missing
    chunks (never chunk 0 or 1 again), and ends with a store byte-identical to an uninterrupted run's."""
    ws = _pristine.copy(tmp_path / "ws")  # both runs in one folder: the store records the collection's path
    done = run(EMBED, ws.root)
    assert done.returncode == 0, done.stderr
    reference = (ws.root / "emb.npz").read_bytes()
    (ws.root / "emb.npz").unlink()
    env = _env(ws.root, at=1)
    env["VS_CRASH_MATCH"] = "chunk-000002"
    killed = subprocess.run([sys.executable, "-m", *EMBED], cwd=ws.root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr
    parts = ws.root / "emb.npz.parts"
    assert sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-000000.npz", "chunk-000001.npz"]
    assert not (ws.root / "emb.npz").exists()
    log = tmp_path / "again.log"
    again = run(EMBED, ws.root, log=log)
    assert again.returncode == 0, again.stderr
    assert "resuming: 2 of 5 chunks already done" in again.stderr
    old_chunks = [(kind, path) for _, kind, path in steps(log) if "chunk-000000" in path or "chunk-000001" in path]
    assert all(kind in ("unlink", "remove") for kind, _ in old_chunks), \
        f"the rerun wrote finished chunks again (it should only delete them after the merge): {old_chunks}"
    written = [Path(path).name for _, kind, path in steps(log) if kind in ("replace", "rename")]
    assert [w for w in written if w.startswith("chunk-")] == [f"chunk-00000{k}.npz" for k in (2, 3, 4)], written
    assert not parts.exists(), "the chunk folder is removed once the store is written"
    assert (ws.root / "emb.npz").read_bytes() == reference, "the resumed store differs from an uninterrupted run's"
