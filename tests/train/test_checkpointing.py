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
