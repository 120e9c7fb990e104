import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from data.collection import Connection, ImageRecord, write_connections, write_images
from data.signatures import Signatures, save_signatures
from train.__main__ import cli
from train.config import preset


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """`run` adds its XLA flags to the environment: undo that after each test."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def test_help_for_every_command():
    r = CliRunner()
    for args in (["--help"], ["run", "--help"], ["evaluate", "--help"]):
        res = r.invoke(cli, args)
        assert res.exit_code == 0, res.output
    assert "--resume-from" in r.invoke(cli, ["run", "--help"]).output


def test_evaluate_command(tmp_path):
    uids = [f"u{i}" for i in range(6)]
    write_images(tmp_path / "images.csv", [ImageRecord(u, f"{u}.jpg", None, {}, 0) for u in uids])
    write_connections(tmp_path / "connections.csv",
                      [Connection("u0", "u1", "POSITIVE", split="test"), Connection("u2", "u3", "POSITIVE", split="train")])
    # u0 and u1 are each other's nearest: perfect retrieval for both test queries
    vec = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1], [0.1, 0, 1]], np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["split"] == "test" and out["num_queries"] == 2 and out["mAP"] == 1.0 and out["recall@1"] == 1.0


def test_bad_override_is_a_clear_error(tmp_path):
    (tmp_path / "images.csv").write_text("uid,path\n")
    res = CliRunner().invoke(cli, ["--collection", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "nope=1"])
    assert res.exit_code != 0 and "unknown config field" in res.output


def _fake_weights(path, arch):
    """A weights directory as far as `read_meta` looks (the CLI reads only its arch before training)."""
    from model.weights import FORMAT, META_FILE, STATE_DIR, VERSION

    (path / STATE_DIR).mkdir(parents=True)
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, "arch": arch}))
    return path


def _captured_run(monkeypatch):
    import train.loop
    from train.loop import RunResult

    calls = []

    def fake(collection, out, cfg, **kw):
        calls.append((cfg, kw))
        return RunResult(out, "finished", 0)

    monkeypatch.setattr(train.loop, "run_training", fake)
    return calls


def _collection(tmp_path):
    (tmp_path / "coll").mkdir()
    (tmp_path / "coll" / "images.csv").write_text("uid,path\n")
    return str(tmp_path / "coll")


def test_weights_dir_gives_the_arch(tmp_path, monkeypatch):
    calls = _captured_run(monkeypatch)
    monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", "off")
    w = str(_fake_weights(tmp_path / "w", "resnet50"))
    base = ["--collection", _collection(tmp_path), "--out", str(tmp_path / "run"), "--weights", w]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0, res.output
    assert calls[-1][0].arch == "resnet50" and calls[-1][0].resolution == 320
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in os.environ["XLA_FLAGS"]
    for extra in (["--arch", "resnet18"], ["--set", "arch=resnet18"]):
        res = CliRunner().invoke(cli, base + extra)
        assert res.exit_code != 0 and "resnet50 weights but the arch asked for is resnet18" in res.output
    assert len(calls) == 1


def test_resume_from_defaults_to_the_source_preset_and_arch(tmp_path, monkeypatch):
    calls = _captured_run(monkeypatch)
    monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", "off")
    src = tmp_path / "r1"
    _fake_weights(src / "weights", "resnet18")
    (src / "config.json").write_text(json.dumps({"preset": "demo", "config": {"arch": "resnet18"}}))
    base = ["--collection", _collection(tmp_path), "--out", str(tmp_path / "r2"), "--resume-from", str(src)]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 0, res.output
    cfg, kw = calls[-1]
    assert cfg.arch == "resnet18" and cfg.resolution == preset("demo").resolution
    assert kw["extra_config"]["preset"] == "demo"
    res = CliRunner().invoke(cli, base + ["--preset", "thesis"])
    assert res.exit_code == 0 and calls[-1][0].batch_size == 4 and calls[-1][0].arch == "resnet18"
    res = CliRunner().invoke(cli, base + ["--weights", str(src / "weights")])
    assert res.exit_code != 0 and "do not pass --weights" in res.output
    (tmp_path / "unfinished").mkdir()
    res = CliRunner().invoke(cli, base[:-1] + [str(tmp_path / "unfinished")])
    assert res.exit_code != 0 and "no weights/" in res.output and "--resume" in res.output


def test_train_sets_the_compilation_cache(tmp_path, monkeypatch):
    import jax

    _captured_run(monkeypatch)
    keep = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", str(tmp_path / "cache"))
        base = ["--collection", _collection(tmp_path), "--out", str(tmp_path / "run"), "--arch", "resnet18"]
        assert CliRunner().invoke(cli, base + ["--set", "compile_cache=false"]).exit_code == 0
        assert jax.config.jax_compilation_cache_dir == keep[0]
        assert CliRunner().invoke(cli, base).exit_code == 0
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    finally:
        jax.config.update("jax_compilation_cache_dir", keep[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", keep[1])


def _evaluate_files(tmp_path):
    uids = [f"u{i}" for i in range(6)]
    write_images(tmp_path / "images.csv", [ImageRecord(u, f"{u}.jpg", None, {}, 0) for u in uids])
    write_connections(tmp_path / "connections.csv", [Connection("u0", "u1", "POSITIVE", split="test")])
    vec = np.eye(6, 4, dtype=np.float32) + 0.1
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return uids, vec


def test_evaluate_refuses_nan_signatures_naming_the_file_and_uid(tmp_path):
    """A NaN row used to give a wrong mAP with exit 0 (issue 11, defect 5)."""
    uids, vec = _evaluate_files(tmp_path)
    vec[[1, 4]] = np.nan
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "mAP" not in res.output and "Traceback" not in res.output
    assert str(tmp_path / "sig.npz") in res.output and "'u1'" in res.output and "not finite" in res.output


def test_evaluate_names_a_truncated_signatures_file(tmp_path):
    uids, vec = _evaluate_files(tmp_path)
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec))
    data = (tmp_path / "sig.npz").read_bytes()
    (tmp_path / "sig.npz").write_bytes(data[: len(data) - 40])
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert str(tmp_path / "sig.npz") in res.output and "damaged" in res.output


def test_train_refuses_a_collection_that_check_rejects(tmp_path, monkeypatch):
    """`train` runs `data check`'s validation first and stops before preparing, compiling or embedding
    (issue 11, defect 10)."""
    import train.loop

    def never(*a, **k):
        raise AssertionError("training went on with an invalid collection")

    monkeypatch.setattr(train.loop, "_prepare", never)
    monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", "off")
    coll = tmp_path / "coll"
    (coll / "img").mkdir(parents=True)
    from PIL import Image

    for u in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(coll / "img" / f"{u}.png")
    write_images(coll / "images.csv", [ImageRecord(u, f"img/{u}.png", None, {}, 0) for u in ("a", "b", "c")])
    write_connections(coll / "connections.csv", [Connection("a", "b", "POSITIVE"), Connection("a", "zz", "POSITIVE"),
                                                 Connection("a", "b", "NEGATIVE")])
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["--collection", str(coll), "--out", str(out), "--arch", "resnet18",
                                   "--preset", "demo", "--no-progress"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "2 errors" in res.output and "data check" in res.output
    assert "connections.csv:3: uid zz:" in res.output  # listed as `data check` lists them
    assert "connections.csv:4: uid a:" in res.output  # POSITIVE and NEGATIVE for one pair
    assert not (coll / "prepared").exists() and not (out / "start_signatures.npz").exists()


def _evaluate(tmp_path, sig: Signatures, *extra: str):
    save_signatures(tmp_path / "sig.npz", sig)
    return CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path), *extra])


def test_evaluate_warns_when_the_signatures_cover_part_of_the_collection(tmp_path):
    """Signatures of 4 of 6 images were scored among those 4 without a word: higher figures than a run's
    eval.json, which ranks the whole collection. Now scored with a warning naming the file and the coverage;
    an unreadable image listed in the file's `skipped` counts as covered."""
    uids, vec = _evaluate_files(tmp_path)
    res = _evaluate(tmp_path, Signatures(uids[:4], vec[:4]))
    assert res.exit_code == 0, res.output
    assert f"warning: {tmp_path / 'sig.npz'} covers 4 of the 6 images" in res.stderr
    assert "not comparable" in res.stderr
    out = json.loads(res.stdout)
    assert out["num_signatures"] == 4 and out["num_images"] == 6 and out["num_queries"] == 2
    res = _evaluate(tmp_path, Signatures(uids[:5], vec[:5], skipped=[uids[5]]))
    assert res.exit_code == 0 and res.stderr == "", res.output


def test_evaluate_refuses_signatures_of_another_collection(tmp_path):
    """No uid in common gave exit 0 and num_queries 0."""
    _, vec = _evaluate_files(tmp_path)
    res = _evaluate(tmp_path, Signatures([f"other{i}" for i in range(6)], vec), "--ignore-unknown")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{tmp_path / 'sig.npz'}: none of its 6 uids is in {tmp_path / 'images.csv'}" in res.output
    assert "another collection" in res.output and "num_queries" not in res.output


def test_evaluate_refuses_uids_that_are_not_in_the_collection_unless_told_to_leave_them_out(tmp_path):
    """The rule of `cluster evaluate`: unknown uids are refused, or left out with --ignore-unknown."""
    uids, vec = _evaluate_files(tmp_path)
    extra = np.full((1, vec.shape[1]), 0.5, np.float32)
    sig = Signatures([*uids, "ghost"], np.concatenate([vec, extra]))
    res = _evaluate(tmp_path, sig)
    assert res.exit_code == 1 and "1 uid(s) are not in" in res.output and "'ghost'" in res.output
    assert "--ignore-unknown" in res.output and "mAP" not in res.output
    res = _evaluate(tmp_path, sig, "--ignore-unknown")
    assert res.exit_code == 0, res.output
    assert "left out 1 uid(s) that are not in the collection: 'ghost'" in res.stderr
    assert json.loads(res.stdout)["num_signatures"] == 6


# --- issue 16: the cost of a run before it starts ----------------------------------------------------------------


def _plan_args(coll, out):
    return ["--collection", str(coll), "--out", str(out), "--preset", "demo", "--set", "resolution=32",
            "--set", "batch_size=8", "--set", "epochs=2", "--set", "num_negatives=1", "--plan"]


def _plan_figures(output: str) -> tuple[int, int, int]:
    import re

    m = re.search(r"plan: (\d+) triplets per epoch.*?; (\d+) steps per epoch \(batch 8\) x 2 epochs = (\d+) steps",
                  output)
    assert m, output
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def test_plan_prints_the_cost_and_writes_nothing_and_negatives_add_no_steps(tmp_path):
    """`python -m train ... --plan`: triplets and steps per epoch, total steps, then exit 0 without a run folder.
    400 annotated NEGATIVE pairs (one confirm-and-reject of a big cluster) do not change the steps: before
    issue 16 each one added a triplet per partner of its ends (4 -> 210 steps per epoch)."""
    from data.collection import read_connections
    from tests.train.conftest import build_tiny_collection

    coll = build_tiny_collection(tmp_path / "coll")
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, _plan_args(coll, out))
    assert res.exit_code == 0, res.output
    # 10 train groups of 3 in a chain: 20 POSITIVE pairs, 40 (anchor, partner), 1 negative each
    assert _plan_figures(res.output) == (40, 5, 10)
    assert "no step time measured yet" in res.output
    assert not out.exists()
    conns = read_connections(coll / "connections.csv")
    train = sorted({u for c in conns if c.split == "train" for u in (c.a, c.b)})
    others = train + [f"distractor_{d:03d}" for d in range(10)]
    known = {c.pair for c in conns}
    extra = [Connection(a, b, "NEGATIVE") for a in train for b in others
             if a < b and a[:7] != b[:7] and (a, b) not in known][:400]
    assert len(extra) == 400
    write_connections(coll / "connections.csv", conns + extra)
    res = CliRunner().invoke(cli, _plan_args(coll, out))
    assert res.exit_code == 0, res.output
    assert _plan_figures(res.output) == (40, 5, 10)
    assert "401 annotated NEGATIVE pairs are mining candidates, not extra steps" in res.output
    assert not out.exists()


def test_plan_refuses_what_the_run_would_refuse(tmp_path):
    from tests.train.conftest import build_tiny_collection

    coll = build_tiny_collection(tmp_path / "coll", groups=(0, 3, 3))  # no training group
    res = CliRunner().invoke(cli, _plan_args(coll, tmp_path / "run"))
    assert res.exit_code != 0 and "no POSITIVE connection falls in the train split" in res.output
    assert "Traceback" not in res.output


def test_evaluate_on_a_split_without_queries_says_why_there_are_no_figures(tmp_path):
    """A collection with no test group: `train evaluate --split test` printed `"num_queries": 0.0` and no metric,
    without a word (the training run's last line says `no test queries (...)`). The JSON stays on stdout."""
    uids, vec = _evaluate_files(tmp_path)
    write_connections(tmp_path / "connections.csv", [Connection("u0", "u1", "POSITIVE", split="train")])
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_queries"] == 0
    assert "warning: no test queries (no image of split test has a partner)" in res.stderr, res.stderr
