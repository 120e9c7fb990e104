"""End-to-end training runs on the tiny synthetic collection (resnet18 at 32 px, a few steps).

One uninterrupted run is shared (module fixture): it is the short demo run (loss goes down, val
retrieval goes up) and the reference that an interrupted-and-resumed run must reproduce exactly.
"""

import json

import jax
import numpy as np
import pytest

from data.signatures import load_signatures
from model.embed import embed_collection
from model.weights import load_or_init, load_weights
from train.config import apply_overrides, preset
from train.loop import RunError, final_params, run_training

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_loop")]

# The demo preset shrunk to seconds, with one learning rate for every layer: the bundled demo collection
# wants a fast stem and slow stages on top of random features (train/config.py), this tiny synthetic
# collection the opposite (with the demo's per-layer rates val mAP falls here). BN frozen: with 8 triplets
# per step live batch statistics make ten steps too noisy to show a falling loss.
CFG = apply_overrides(preset("demo"), {"resolution": 32, "batch_size": 8, "epochs": 2, "num_negatives": 1,
                                       "eval_batch_size": 16, "log_every": 1, "freeze_bn": True, "lr": 3e-4,
                                       "slow_stages": (), "frozen_stages": ()})


@pytest.fixture(scope="module")
def reference_run(tiny_collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ref"
    result = run_training(tiny_collection, out, CFG, progress=False)
    return out, result


def test_demo_run_lowers_loss_and_improves_val_retrieval(reference_run, tiny_collection):
    out, r = reference_run
    assert r.status == "finished" and r.step >= 8
    half = len(r.losses) // 2
    assert np.mean(r.losses[half:]) < np.mean(r.losses[:half])
    start, trained = r.start_eval["val"], r.final_eval["val"]
    assert start["num_queries"] == trained["num_queries"] > 0
    assert trained["mAP"] > start["mAP"]
    assert trained["recall@5"] > start["recall@5"]
    # everything the run promises is there
    for name in ("config.json", "splits.json", "metrics.jsonl", "eval.json", "start_eval.json", "curves.png",
                 "signatures.npz", "start_signatures.npz", "weights/meta.json"):
        assert (out / name).exists(), name
    ev = json.loads((out / "eval.json").read_text())
    assert ev["trained"]["test"]["num_queries"] > 0 and ev["selected_by"] == "val mAP"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in x for x in lines) == r.step and sum("val" in x for x in lines) == 3
    # the exported signatures are what `model embed` gives with the exported weights
    sig = load_signatures(out / "signatures.npz")
    again = embed_collection(tiny_collection, load_weights(out / "weights"), resolution=32, progress=False)
    np.testing.assert_allclose(sig.vectors, again.vectors, atol=1e-5)
    assert sig.uids == again.uids


def test_start_equals_model_embed_random(reference_run, tiny_collection):
    out, _ = reference_run
    start = load_signatures(out / "start_signatures.npz")
    ref = embed_collection(tiny_collection, load_or_init("random", "resnet18", seed=0), resolution=32,
                           progress=False)
    assert start.uids == ref.uids
    np.testing.assert_array_equal(start.vectors, ref.vectors)


def test_resume_equals_uninterrupted(reference_run, tiny_collection, tmp_path):
    ref_out, ref = reference_run
    out = tmp_path / "resumed"
    k = 3  # inside the first epoch: the data iterator state and the step count must both come back
    first = run_training(tiny_collection, out, apply_overrides(CFG, {"max_steps": k}), progress=False)
    assert first.status == "stopped" and first.step == k
    with pytest.raises(RunError, match="--resume"):
        run_training(tiny_collection, out, CFG, progress=False)
    second = run_training(tiny_collection, out, CFG, resume=True, progress=False)
    assert second.status == "finished" and second.step == ref.step
    a, b = final_params(ref_out), final_params(out)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(load_signatures(ref_out / "signatures.npz").vectors,
                                  load_signatures(out / "signatures.npz").vectors)
    assert json.loads((out / "eval.json").read_text())["trained"] == json.loads(
        (ref_out / "eval.json").read_text())["trained"]


def test_resume_from_starts_a_new_round_from_the_best_weights(reference_run, tiny_collection, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "round2"
    r = run_training(tiny_collection, out, apply_overrides(CFG, {"max_steps": 1}), resume_from=ref_out,
                     progress=False)
    assert r.status == "stopped" and r.step == 1
    # the new round starts exactly where the previous one ended, on the same splits
    np.testing.assert_array_equal(load_signatures(out / "start_signatures.npz").vectors,
                                  load_signatures(ref_out / "signatures.npz").vectors)
    assert json.loads((out / "splits.json").read_text()) == json.loads((ref_out / "splits.json").read_text())
    assert json.loads((out / "config.json").read_text())["weights"] == str(ref_out / "weights")


def test_non_finite_loss_stops_with_last_good_checkpoint(tiny_collection, tmp_path):
    from train.checkpointing import NonFiniteLoss, RunCheckpoints

    # an absurd learning rate: step 1 is finite, its update blows the weights up, step 2's loss is not finite
    cfg = apply_overrides(CFG, {"lr": 1e30, "warmup_steps": 0, "schedule": "constant", "checkpoint_every": 1,
                                "max_steps": 4})
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match=r"step 2:.*checkpoint at step 1"):
        run_training(tiny_collection, out, cfg, progress=False)
    ck = RunCheckpoints(out / "checkpoints")
    assert ck.all_steps() == [1]
    ck.close()


def test_only_process_zero_prepares_the_collection(tmp_path):
    """Two processes of one job: process 0 builds the prepared dataset, process 1 waits and reuses it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.train.conftest import build_tiny_collection
    from tests.train.test_distributed import _free_port

    root = Path(__file__).resolve().parents[2]
    coll = build_tiny_collection(tmp_path / "coll", groups=(2, 1, 1), distractors=2, size=32)
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(root / "tests/train/prepare_check.py"), port, str(i), "2",
                               str(coll)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se[-3000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    assert [o["reused"] for o in outs] == [False, True]
    assert outs[0]["num_images"] == outs[1]["num_images"] == 14 and outs[0]["path"] == outs[1]["path"]
