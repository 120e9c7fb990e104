"""The run folder (train/run_folder.py): its layout, and what `--resume` / `--resume-from` start from, driven
through the CLI as a user drives it. These refusals happen before anything is compiled: fast tests."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from tests.train.conftest import build_tiny_collection
from train.__main__ import cli
from train.run_folder import RunFolder


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """`run` adds its XLA flags to the environment: undo that after each test."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", "off")


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory):
    return build_tiny_collection(tmp_path_factory.mktemp("small") / "coll", groups=(2, 1, 1), distractors=2,
                                 size=32)


def _train(*args: str):
    return CliRunner().invoke(cli, [*args, "--no-progress"])


def test_the_layout_has_one_name_per_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunFolder("run")
    assert run.root == tmp_path / "run"  # absolute: orbax needs it
    names = {p.name for p in (run.config, run.splits, run.checkpoints, run.damaged_checkpoints, run.metrics,
                              run.start_eval, run.start_signatures, run.eval, run.signatures, run.weights, run.curves)}
    assert names == {"config.json", "splits.json", "checkpoints", "damaged_checkpoints", "metrics.jsonl",
                     "start_eval.json", "start_signatures.npz", "eval.json", "signatures.npz", "weights", "curves.png"}
    assert not run.holds_run()
    (run.checkpoints / "3").mkdir(parents=True)
    assert run.holds_run()


def test_resume_with_another_preset_is_refused(small_collection, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"preset": "demo", "config": {"arch": "resnet18"}}))
    res = _train("--collection", str(small_collection), "--out", str(out), "--resume", "--preset", "thesis")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"--preset thesis: the run in {out} was started with the demo preset" in res.output


def test_resume_of_a_run_with_an_unreadable_config_names_the_file(small_collection, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"config": {"arch": ')
    res = _train("--collection", str(small_collection), "--out", str(out), "--resume")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{out / 'config.json'}: unreadable" in res.output and "another --out" in res.output


def test_resume_where_no_run_was_started_says_so(small_collection, tmp_path):
    out = tmp_path / "nothing"
    res = _train("--collection", str(small_collection), "--out", str(out), "--resume")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{out}: nothing to resume (no config.json); start a run with --out {out}." in res.output
    assert not out.exists()


def test_a_new_run_in_a_folder_that_holds_one_is_refused(small_collection, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "4").mkdir(parents=True)
    res = _train("--collection", str(small_collection), "--out", str(out), "--arch", "resnet18", "--preset", "demo")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{out}: already holds a run; pass --resume" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing written, nothing removed


def test_resume_from_a_run_with_an_unreadable_config_names_the_file(small_collection, tmp_path):
    """A damaged config.json in the source of a new round gave a bare "Expecting value: line 1 column 1"
    (no file named); now the file and the option."""
    src = tmp_path / "r1"
    (src / "weights").mkdir(parents=True)
    (src / "config.json").write_text("")
    res = _train("--collection", str(small_collection), "--out", str(tmp_path / "r2"), "--resume-from", str(src))
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"{src / 'config.json'}: unreadable" in res.output and f"cannot --resume-from {src}" in res.output
    assert not (tmp_path / "r2").exists()


# A checkpoint's meta as this version and the one before it write it (a resume must keep reading it).
_META = {"epoch": 1, "round": 2, "step_in_epoch": 3, "data_state": {"pos": 7}, "best": {"mAP": 0.5, "step": 5,
         "epoch": 1}, "num_triplets": 4, "steps_per_epoch": 5, "total_steps": 10, "step": 8,
         "config": None, "workers": 0}


def test_a_checkpoints_meta_reads_back_into_the_loop_state_and_out_again():
    from train.config import TrainConfig
    from train.loop import LoopState

    class State:
        step = np.int32(8)

    cfg = TrainConfig()
    meta = {**_META, "config": cfg.to_json()}
    ls = LoopState.from_meta(State(), np.zeros((4, 3), np.int64), meta, workers=6, checkpoint=8)
    assert (ls.step, ls.epoch, ls.round, ls.step_in_epoch, ls.workers, ls.last_checkpoint) == (8, 1, 2, 3, 0, 8)
    assert list(ls.meta(cfg).items()) == list(meta.items())  # same keys, same order, same values
    at_epoch_start = {**meta, "data_state": None, "round": 0, "step_in_epoch": 0, "epoch": 2, "step": 10}
    State.step = np.int32(10)
    ls = LoopState.from_meta(State(), np.zeros((4, 3), np.int64), at_epoch_start, workers=6, checkpoint=10)
    assert ls.workers == 6 and ls.step_in_epoch == 0  # no saved position: this run's decode processes
