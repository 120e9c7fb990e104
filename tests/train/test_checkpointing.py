import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.checkpointing import GracefulStop, NonFiniteLoss, RunCheckpoints, check_finite
from train.step import init_state


def _state(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
    rest = {"mean": jnp.asarray(rng.normal(size=(4,)), jnp.float32), "rng": jax.random.key(seed)}
    return init_state(params, rest, optax.adam(1e-3), seed)


def test_roundtrip_and_retention(tmp_path):
    ck = RunCheckpoints(tmp_path / "ck", keep=2)
    s = _state(1)
    trip = np.arange(12).reshape(4, 3)
    vals = {10: 0.2, 20: 0.5, 30: 0.1, 40: None, 50: 0.3}
    for step, v in vals.items():
        ck.save(step, s, trip + step, {"epoch": step // 10, "num_triplets": 4}, val_map=v)
    ck.wait()
    # the last two (40, 50) and the best by val mAP (20) are kept
    assert ck.all_steps() == [20, 40, 50]
    assert ck.best_step() == 20
    like = _state(2)
    r, t, meta = ck.restore(20, like)
    np.testing.assert_array_equal(t, trip + 20)
    assert meta["epoch"] == 2
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
            x.dtype, jax.dtypes.prng_key) else x, r)), jax.tree.leaves(jax.tree.map(
            lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, s)),
            strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.dtypes.issubdtype(r.rest["rng"].dtype, jax.dtypes.prng_key)
    ck.close()


def test_graceful_stop_catches_sigterm():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not stop._handler


def test_check_finite(tmp_path):
    check_finite(1.0, 3, None, tmp_path)
    with pytest.raises(NonFiniteLoss, match="step 7.*checkpoint at step 5"):
        check_finite(float("nan"), 7, 5, tmp_path)


def test_a_tie_in_val_map_keeps_the_earliest_checkpoint_as_the_loop_chooses(tmp_path, caplog):
    """Steps 14 and 28 reach the same val mAP: the loop's best is the first (a later epoch must beat it), so
    retention must keep 14. orbax's BestN kept 28 and deleted 14, and the export then failed for good."""
    import logging

    ck = RunCheckpoints(tmp_path / "ck", keep=2)
    s, trip = _state(1), np.arange(12).reshape(4, 3)
    with caplog.at_level(logging.WARNING):
        for step in range(1, 43):
            v = {7: 0.30, 14: 0.4583, 21: 0.40, 28: 0.4583, 35: 0.41, 42: 0.4583}.get(step)
            ck.save(step, s, trip, {"num_triplets": 4}, val_map=v)
    ck.wait()
    assert ck.all_steps() == [14, 41, 42]
    assert ck.best_step() == 14 and ck.val_map(14) == 0.4583 and ck.val_map(41) is None
    ck.restore(14, _state(2))
    ck.close()
    # orbax's warning for every checkpoint taken inside an epoch (no val mAP, by design) is not shown
    assert "tracked_metric" not in caplog.text


def test_checkpoints_saved_without_a_step_in_their_metrics_still_rank(tmp_path):
    """Checkpoints of runs written before the step was stored beside the val mAP: the better one is kept,
    and of a tie between an old and a new checkpoint the old (earlier) one."""
    from train.checkpointing import METRIC

    ck = RunCheckpoints(tmp_path / "ck", keep=1)
    s, trip = _state(1), np.arange(12).reshape(4, 3)
    for step, v in ((5, 0.2), (10, 0.6), (15, 0.3)):  # as the older code saved them: val mAP only
        ck.manager.save(step, args=_composite(s, trip), metrics={METRIC: v}, force=True)
    ck.wait()
    assert ck.all_steps() == [10, 15] and ck.best_step() == 10
    ck.save(20, s, trip, {"num_triplets": 4}, val_map=0.6)
    ck.save(25, s, trip, {"num_triplets": 4}, val_map=0.1)
    ck.wait()
    assert ck.all_steps() == [10, 25] and ck.best_step() == 10
    ck.close()


def _composite(state, triplets):
    import orbax.checkpoint as ocp

    from train.checkpointing import to_saveable

    return ocp.args.Composite(state=ocp.args.StandardSave(to_saveable(state)),
                              mining=ocp.args.StandardSave({"triplets": np.asarray(triplets, np.int64)}),
                              meta=ocp.args.JsonSave({"num_triplets": 4}))
