"""Weights directories: round trip, random-init determinism, clear errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from model.registry import build
from model.weights import WeightsError, load_or_init, load_weights, read_meta, save_weights
from tests.model.helpers import run_features

X = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)


def _params(m):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)))]


def test_round_trip_gives_identical_outputs(tmp_path):
    m = build("resnet18", seed=5, pooling="gem")
    m.pool.p[...] = 2.5  # a "trained" p must survive the round trip
    m.backbone.bn1.mean[...] = m.backbone.bn1.mean[...] + 0.3  # and BN statistics
    save_weights(m, tmp_path / "w", meta={"note": "test"})
    meta = read_meta(tmp_path / "w")
    assert meta["arch"] == "resnet18" and meta["pooling"] == "gem" and meta["meta"] == {"note": "test"}
    back = load_weights(tmp_path / "w")
    assert back.pooling == "gem" and float(back.pool.p[...]) == 2.5
    for a, b in zip(_params(m), _params(back), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(run_features(m, X)[1], run_features(back, X)[1])
    as_mean = load_weights(tmp_path / "w", pooling="mean")  # another pooling on the same backbone
    assert as_mean.pooling == "mean"
    bf16 = load_weights(tmp_path / "w", dtype="bfloat16")
    assert bf16.dtype == np.dtype("bfloat16") and run_features(bf16, X)[1].dtype == np.float32


def test_overwrite_is_atomic_and_guarded(tmp_path):
    a, b = build("resnet18", seed=0), build("resnet18", seed=1)
    save_weights(a, tmp_path / "w")
    save_weights(b, tmp_path / "w")  # replacing earlier weights is fine
    np.testing.assert_array_equal(_params(load_weights(tmp_path / "w"))[0], _params(b)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary leftovers
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("precious")
    with pytest.raises(WeightsError, match="not a weights directory"):
        save_weights(a, tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "precious"


def test_load_or_init_random_is_deterministic():
    a = load_or_init("random", "resnet18", seed=0)
    b = load_or_init("random", "resnet18", seed=0)
    c = load_or_init("random", "resnet18", seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(_params(a), _params(b), strict=True))
    ka, kc = (np.asarray(m.backbone.layer4[1].conv2.kernel[...]) for m in (a, c))
    assert not np.array_equal(ka, kc)
    with pytest.raises(WeightsError, match="--arch"):
        load_or_init("random", None)


def test_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such weights directory"):
        load_weights(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a weights directory"):
        load_weights(tmp_path / "empty")
    save_weights(build("resnet18"), tmp_path / "w")
    with pytest.raises(WeightsError, match="holds resnet18 weights, not resnet34"):
        load_or_init(str(tmp_path / "w"), "resnet34")
    assert load_or_init(str(tmp_path / "w"), None).arch == "resnet18"
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    meta["arch"] = "resnet34"  # a checkpoint whose contents do not fit the recorded arch
    (tmp_path / "w" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        load_weights(tmp_path / "w")


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_later_save_removes_what_killed_saves_left_behind(tmp_path):
    """A killed export left `.w.tmp-*` folders for good (issue 11, defect 7d): the writer's pid is in the
    name now, and a later save removes the folders of dead writers, never those of a live one."""
    import os

    from data.atomic import writer_tag
    from model.weights import remove_stale_exports

    dead = writer_tag(_dead_pid())
    stale = tmp_path / f".w.tmp-{dead}.abcd1234"
    (stale / "state").mkdir(parents=True)
    live = tmp_path / f".w.tmp-{writer_tag()}.efgh5678"  # a save in progress in another thread
    live.mkdir()
    other_host = tmp_path / f".w.tmp-{dead}x.abcd1234"  # another host on a shared folder: not ours to judge
    other_host.mkdir()
    save_weights(build("resnet18", seed=2), tmp_path / "w")
    assert not stale.exists() and live.is_dir() and other_host.is_dir()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["w", live.name, other_host.name])  # the save's own scratch names are gone too
    # killed between its two renames: w is missing, the previous weights wait in .w.old-*: they come back
    os.replace(tmp_path / "w", tmp_path / f".w.old-{dead}")
    assert remove_stale_exports(tmp_path / "w") == [tmp_path / f".w.old-{dead}"]
    assert read_meta(tmp_path / "w")["arch"] == "resnet18"


def test_weights_paths_may_be_relative_home_relative_or_symlinks(tmp_path, monkeypatch):
    """orbax got a relative path and returned no metadata: AttributeError (issue 11, defect 1)."""
    import os

    m = build("resnet18", seed=3)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    save_weights(m, "runA/weights")
    os.symlink(tmp_path / "runA", tmp_path / "home" / "linked")
    for path in ("runA/weights", "~/linked/weights"):
        back = load_or_init(path, None)
        np.testing.assert_array_equal(_params(back)[0], _params(m)[0])
    save_weights(build("resnet18", seed=4), "~/linked/weights")  # through the link: the real folder changes
    assert (tmp_path / "home" / "linked").is_symlink()
    np.testing.assert_array_equal(_params(load_weights(tmp_path / "runA" / "weights"))[0],
                                  _params(build("resnet18", seed=4))[0])


def test_the_echoes_of_a_failed_orbax_read_are_recognised_and_nothing_else():
    """A read still in flight when orbax gave up reports again as a Future never retrieved (seen in CI as two
    extra stderr lines); only such reports are dropped."""
    import logging

    from model.weights import _AsyncioEchoFilter, _is_restore_echo

    echo = ValueError('FAILED_PRECONDITION: Error reading "opt_state.0.nu.backbone.layer3.0.conv1.kernel.value/0.0.0.0" '
                      'in OCDBT database at local file "/x/checkpoints/2/state/": Truncated Zstd-compressed stream')
    assert _is_restore_echo(echo) and _is_restore_echo(RuntimeError("Event loop is closed"))
    assert not _is_restore_echo(ValueError("FAILED_PRECONDITION: something else"))
    assert not _is_restore_echo(ValueError('Error reading "x" in OCDBT database at local file "y"'))  # no status code
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved", None,
                               (ValueError, echo, None))
    assert not _AsyncioEchoFilter().filter(record)
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task was destroyed", None,
                              (KeyError, KeyError("k"), None))
    assert _AsyncioEchoFilter().filter(other)
