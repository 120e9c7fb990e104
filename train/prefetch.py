"""Device prefetch: a background thread keeps the next batches decoded AND already on the devices.

Why: the train step is dispatched asynchronously, but the host work for the next step - pulling a
batch out of the grain iterator and copying it into a global device array (`step.global_batch`) -
would otherwise run on the main thread between two dispatches and leave the accelerator idle while
it happens. Here a thread does that work `size` batches ahead, so the main thread only dispatches.

Exact resume: each batch travels with the iterator state captured right after the iterator produced
it. A checkpoint written after the consumer has used batch k stores *that* state, so a resumed run
continues at batch k+1 - not at wherever the (further ahead) producer thread happened to be.

Errors in the thread (an unreadable image, a worker crash) are re-raised in the consumer on the next
`next()`, with their original traceback. `close()` (also on leaving a `with` block) stops the thread:
the loop calls it when it breaks early (max_steps, a signal, re-mining with a new iterator).
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Prefetched:
    """One batch, as device arrays (whatever `to_device` returned), and the iterator state after it."""

    value: Any
    state: Any


class _End:
    pass


@dataclass
class _Failure:
    error: BaseException


class DevicePrefetcher:
    """Iterate `Prefetched(to_device(batch), iterator_state_after_batch)` with `size` batches ready ahead.

    `iterator` must be a grain-style iterator with `get_state()` (or pass `get_state=None` to carry
    no state). `to_device(batch)` turns a host batch into device arrays; it runs in the thread.
    """

    def __init__(
        self,
        iterator: Iterator,
        to_device: Callable[[Any], Any],
        *,
        size: int = 2,
        get_state: Callable[[], Any] | None | str = "auto",
    ) -> None:
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._it = iterator
        self._to_device = to_device
        self._get_state = iterator.get_state if get_state == "auto" else get_state
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="device-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Block until there is room or we are told to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batch = next(self._it)
                except StopIteration:
                    self._put(_End())
                    return
                # deep copy: the state must not change when the iterator moves on
                state = copy.deepcopy(self._get_state()) if self._get_state is not None else None
                if not self._put(Prefetched(self._to_device(batch), state)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_Failure(e))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> Prefetched:
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the prefetch thread ended without a batch or an error") from None
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread and drop what it prepared; waits for a `next()` already in progress to return."""
        self._stop.set()
        self._done = True
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the prefetch thread did not stop within {timeout:.0f}s (a data worker hangs?)")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> DevicePrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
