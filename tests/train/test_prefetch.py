"""The device prefetcher: order, carried iterator states (exact resume), bounded look-ahead, errors, stop."""

import itertools
import threading
import time

import grain
import jax
import numpy as np
import pytest

from train.prefetch import DevicePrefetcher
from train.step import global_batch, make_mesh


def _grain_iter(n=12):
    return iter(grain.MapDataset.range(n).map(lambda i: {"x": np.full((3, 2), i, np.int32)}).to_iter_dataset())


def test_batches_in_order_with_the_state_after_each():
    with DevicePrefetcher(_grain_iter(), lambda b: int(b["x"][0, 0]), size=2) as pf:
        got = [(p.value, p.state) for p in itertools.islice(pf, 5)]
    assert [v for v, _ in got] == [0, 1, 2, 3, 4]
    # resuming from the state carried with batch k gives batch k+1, although the thread ran further ahead
    for k, (_, state) in enumerate(got):
        it = _grain_iter()
        it.set_state(state)
        assert int(next(it)["x"][0, 0]) == k + 1


def test_iterator_end_stops_the_consumer():
    pf = DevicePrefetcher(_grain_iter(3), lambda b: int(b["x"][0, 0]))
    assert [p.value for p in pf] == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(pf)
    pf.close()


def test_puts_global_device_arrays():
    mesh = make_mesh()
    batch = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    with DevicePrefetcher(iter([{"images": batch}]), lambda b: global_batch(b["images"], mesh),
                          get_state=None) as pf:
        p = next(pf)
    assert isinstance(p.value, jax.Array) and p.value.shape == (3, 2, 4, 4, 3) and p.state is None
    np.testing.assert_array_equal(np.asarray(p.value), batch.reshape(3, 2, 4, 4, 3))


def test_look_ahead_is_bounded():
    produced = []

    class Counting:
        def __next__(self):
            produced.append(len(produced))
            return produced[-1]

    pf = DevicePrefetcher(Counting(), lambda b: b, size=2, get_state=None)
    assert next(pf).value == 0
    time.sleep(0.5)
    # one consumed, `size` queued, at most one more held by the thread waiting for room
    assert 3 <= len(produced) <= 4
    pf.close()


def test_errors_in_the_thread_reach_the_consumer():
    def to_device(b):
        if b == 2:
            raise ValueError("uid u2: cannot decode")
        return b

    pf = DevicePrefetcher(iter(range(10)), to_device, get_state=None)
    assert [next(pf).value, next(pf).value] == [0, 1]
    with pytest.raises(ValueError, match="uid u2"):
        next(pf)
    with pytest.raises(StopIteration):  # the failed prefetcher gives nothing more
        next(pf)
    pf.close()


def test_close_stops_the_thread_of_an_endless_iterator():
    before = set(threading.enumerate())
    pf = DevicePrefetcher(itertools.count(), lambda b: b, size=1, get_state=None)
    next(pf)
    assert pf.alive
    pf.close()
    # no thread started since is left (a count would also move when an earlier test's daemon thread ends)
    assert not pf.alive and not [t for t in threading.enumerate() if t not in before]
    with pytest.raises(StopIteration):
        next(pf)


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="prefetch size"):
        DevicePrefetcher(iter([]), lambda b: b, size=0, get_state=None)
