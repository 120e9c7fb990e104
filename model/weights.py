"""Saving and loading a SignatureNet's weights with orbax-checkpoint.

A weights directory holds
- `state/`: an orbax checkpoint of a flat dict "backbone.layer1.0.conv1.kernel" -> array with every
  `nnx.Param` and `nnx.BatchStat` (float32);
- `meta.json`: {"format", "version", "arch", "pooling", "gem_p", "gem_learnable", "param_count", "meta"},
  so loading needs only the directory ("meta" is free-form provenance from the caller: source weights,
  training run, ...; a training run's carries {"resolution": R}, `model embed`'s default resolution).
Writes are atomic (`data.atomic.atomic_dir`): everything is written to a scratch sibling directory that
is renamed into place, so a killed process leaves either the old weights or the new ones, never a
half-written directory, and the next save cleans up what a killed one left.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from data.atomic import atomic_dir, atomic_write_text, recover_dir
from data.paths import resolve_path
from model.registry import build, build_abstract, get_spec, param_count
from model.signature import SignatureNet
from model.state import assign, init_value

FORMAT = "visual-signatures-weights"
VERSION = 1
META_FILE = "meta.json"
STATE_DIR = "state"


class WeightsError(ValueError):
    """A weights directory that cannot be used; the message names the directory and what to do."""


# -- orbax's own reports of a failed restore ------------------------------------------------------------
# When orbax cannot read an array (a file missing or cut short), the error reaches the caller as one
# exception, which this project turns into one message. But orbax reads every array concurrently in an
# asyncio loop that it closes on the first failure: the reads still in flight then fail again inside
# tensorstore's threads and Python prints each of them as an "ignored" exception or a bare traceback ("Event loop is closed",
# "Encountered error while reading array index ...") or asyncio logs "Task exception was never retrieved",
# for up to seconds after the restore returned: hundreds of tracebacks for one damaged file. They are
# reports of the failure already handled, so they are dropped; nothing else is.

_ORBAX_READ_ERROR = "Encountered error while reading array index"
# tensorstore's own error for an array it could not read from a checkpoint's OCDBT database (a file cut short,
# missing, or not compressed data): what a read still in flight reports again, as a Future never retrieved
_TENSORSTORE_READ_ERROR = re.compile(r'^[A-Z_]+: Error reading ".*" in OCDBT database at ', re.S)


def _is_restore_echo(exc: BaseException | None, obj: object = None) -> bool:
    """An exception that only repeats a failed orbax read (see above)."""
    if exc is not None:
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return True
        if str(exc).startswith(_ORBAX_READ_ERROR) or _TENSORSTORE_READ_ERROR.match(str(exc)):
            return True
    code = getattr(obj, "cr_code", None)  # a coroutine of orbax's reader, garbage-collected unfinished
    return code is not None and "/orbax/" in code.co_filename.replace("\\", "/")


class _AsyncioEchoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (_is_restore_echo(exc) or _ORBAX_READ_ERROR in str(record.msg))


_echo_filter_installed = False


def silence_restore_echoes() -> None:
    """Drop, from now on, the echoes of failed orbax reads (above); called before a restore that may fail,
    because tensorstore's threads can print the first echo before the failure reaches the caller's `except`.

    Process-wide because the echoes arrive until after the restore has returned, but narrow: only exceptions
    that Python would print as "ignored" (or asyncio as never retrieved) and that match a failed read.
    """
    global _echo_filter_installed
    if _echo_filter_installed:
        return
    _echo_filter_installed = True
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not _is_restore_echo(unraisable.exc_value, unraisable.object):
            previous(unraisable)

    sys.unraisablehook = hook
    # a callback failing inside tensorstore's threads is printed with PyErr_Print, i.e. through sys.excepthook
    previous_except = sys.excepthook

    def excepthook(kind, value, tb) -> None:
        if not _is_restore_echo(value):
            previous_except(kind, value, tb)

    sys.excepthook = excepthook
    logging.getLogger("asyncio").addFilter(_AsyncioEchoFilter())


def restore_error_text(e: BaseException, limit: int = 300) -> str:
    """One line for a failed restore: the innermost cause (tensorstore's "OUT_OF_RANGE ... file X"), not
    orbax's wrapper, whose text is a page of TensorStore spec."""
    root = e
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ if root.__cause__ is not None else root.__context__
    text = " ".join(f"{type(root).__name__}: {root}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _saved_variables(model: SignatureNet) -> dict[str, np.ndarray]:
    """Host copies: under jax.distributed orbax refuses to save a device array local to one process."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {_key(path): np.asarray(var.get_value()) for path, var in flat}


def model_meta(model: SignatureNet) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "pooling": model.pooling,
        "gem_p": model.gem_p,
        "gem_learnable": model.gem_learnable,
        "param_count": param_count(model),
    }


def _is_weights_dir(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / STATE_DIR).is_dir()


def remove_stale_exports(directory: str | Path) -> list[Path]:
    """Clean up after killed `save_weights` calls beside `directory` (`data.atomic.recover_dir`): their
    scratch folders are deleted, or, when a kill fell between the two renames and `directory` is missing,
    the complete previous weights are put back. Returns the folders dealt with."""
    directory = resolve_path(directory)
    if not directory.parent.is_dir():
        return []
    return recover_dir(directory, _is_weights_dir)


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer that involves this process only. Under jax.distributed, weights are written by
    process 0 alone (training's export) and read by each process on its own; orbax's default, a save or restore
    that every process joins, waited forever there for processes that never came. (Orbax writes the arrays of a
    save on process 0 only: other processes must not save weights.)"""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"weights-process-{me}"))


def save_weights(model: SignatureNet, directory: str | Path, meta: dict | None = None) -> Path:
    """Write the model's weights to `directory` (replacing earlier weights there, atomically).

    Refuses to overwrite a non-empty directory that is not a weights directory, so a typo cannot
    delete unrelated files. Scratch folders left beside it by killed saves are removed first.
    """
    directory = resolve_path(directory)
    if directory.exists() and not (directory / META_FILE).is_file():
        if not directory.is_dir() or any(directory.iterdir()):
            raise WeightsError(f"{directory}: exists and is not a weights directory; choose a new --out path.")

    def write(tmp: Path) -> None:
        ckpt = _this_process_checkpointer()
        ckpt.save(tmp / STATE_DIR, _saved_variables(model))
        ckpt.wait_until_finished()
        ckpt.close()
        info = {**model_meta(model), "meta": meta or {}}
        atomic_write_text(tmp / META_FILE, json.dumps(info, indent=2, sort_keys=True, default=str))

    return atomic_dir(directory, write, is_complete=_is_weights_dir)


def read_meta(directory: str | Path) -> dict:
    """The metadata of a weights directory, with clear errors for anything that is not one."""
    directory = resolve_path(directory)
    if not directory.exists():
        raise WeightsError(f"{directory}: no such weights directory. Make one with `python -m model convert`.")
    meta_file = directory / META_FILE
    if not directory.is_dir() or not meta_file.is_file() or not (directory / STATE_DIR).is_dir():
        raise WeightsError(
            f"{directory}: not a weights directory (expected {META_FILE} and {STATE_DIR}/ written by "
            f"`python -m model convert` or training)."
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{meta_file}: unreadable ({e}).") from e
    if meta.get("format") != FORMAT or "arch" not in meta:
        raise WeightsError(f"{meta_file}: not a {FORMAT} metadata file.")
    if meta.get("version", 0) > VERSION:
        raise WeightsError(f"{meta_file}: format version {meta['version']} is newer than this code ({VERSION}).")
    get_spec(meta["arch"])
    return meta


def recorded_resolution(directory: str | Path) -> int | None:
    """The resolution the weights were trained at: `{"resolution": R}` in the free-form "meta" a training
    run saves them with; None where it is not recorded (converted torchvision weights)."""
    value = read_meta(directory).get("meta", {}).get("resolution")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WeightsError(f"{resolve_path(directory) / META_FILE}: meta.resolution {value!r} is not a number of "
                           f"pixels; pass --resolution R.")
    return value


def load_weights(directory: str | Path, *, dtype="float32", pooling: str | None = None) -> SignatureNet:
    """The SignatureNet stored in `directory`, computing in `dtype`.

    `pooling=None` keeps the stored pooling. Another pooling may be asked for: loading "mean" weights
    as "gem" starts p at the stored (or default) gem_p; loading "gem" weights as "mean" drops p.
    The path is resolved first: orbax needs an absolute one (a relative one gave no metadata).
    """
    directory = resolve_path(directory)
    meta = read_meta(directory)
    arch = meta["arch"]
    pooling = pooling or meta.get("pooling", "mean")
    gem_p = float(meta.get("gem_p", 3.0))
    model = build_abstract(
        arch,
        dtype=dtype,
        pooling=pooling,
        gem_p=gem_p,
        gem_learnable=bool(meta.get("gem_learnable", True)),
    )
    values = _restore_arrays(directory)

    wanted = {_key(p) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
    optional = {"pool.p"}  # GeM's exponent: present only with gem pooling
    missing = sorted(wanted - set(values) - optional)
    extra = sorted(set(values) - wanted - optional)
    if missing or extra:
        raise WeightsError(
            f"{directory}: the checkpoint does not fit {arch} (missing {missing[:5]}, unexpected {extra[:5]})."
        )

    def value_of(path, var):
        key = _key(path)
        if key in values and isinstance(var, nnx.Param | nnx.BatchStat):
            if tuple(values[key].shape) != tuple(var.get_value().shape):
                raise WeightsError(
                    f"{directory}: {key} has shape {values[key].shape}, {arch} expects {var.get_value().shape}."
                )
            return np.asarray(values[key])
        return init_value(0, path, var, {"gem_p": gem_p})

    assign(model, value_of)
    return model


def _restore_arrays(directory: Path) -> dict:
    """The stored arrays by name; any failure (a file missing or cut short, ...) becomes one WeightsError."""
    ckpt = _this_process_checkpointer()
    silence_restore_echoes()
    try:
        stored = ckpt.metadata(directory / STATE_DIR).item_metadata.tree
        device = jax.local_devices()[0]
        target = {
            k: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=jax.sharding.SingleDeviceSharding(device))
            for k, m in stored.items()
        }
        return ckpt.restore(directory / STATE_DIR, target)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for one damaged folder
        raise WeightsError(
            f"{directory}: the weights cannot be read ({restore_error_text(e)}): the folder is damaged (a file "
            f"missing or cut short). Copy it again from its source or a backup, or make it again: a training "
            f"run's weights/ with `python -m train --collection COLLECTION --out RUN_DIR --resume` (it exports "
            f"them again from the run's checkpoints), converted weights with `python -m model convert`."
        ) from e
    finally:
        try:
            ckpt.close()
        except Exception:  # noqa: BLE001 - closing after a failed read must not hide that failure
            pass


def load_or_init(
    weights: str,
    arch: str | None,
    *,
    seed: int = 0,
    dtype="float32",
    pooling: str | None = None,
) -> SignatureNet:
    """`weights="random"`: `build(arch, seed=seed)`; otherwise load the weights directory.

    With a directory, `arch` may be None; if given it must match the stored architecture.
    `pooling=None`: "mean" for random weights, the stored pooling for a directory.
    """
    if weights == "random":
        if arch is None:
            raise WeightsError("random weights need an architecture: pass --arch (see `python -m model list`).")
        return build(arch, seed=seed, dtype=dtype, pooling=pooling or "mean")
    meta = read_meta(weights)
    if arch is not None and arch != meta["arch"]:
        raise WeightsError(f"{weights}: holds {meta['arch']} weights, not {arch}; drop --arch or fix it.")
    return load_weights(weights, dtype=dtype, pooling=pooling)
