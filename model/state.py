"""Filling a network's variables from host arrays: random init, converted weights, checkpoints.

Every path into the model's variables goes through `assign`, which checks that each variable gets a
value of exactly its shape (dtype cast to the variable's), so a wrong shape can never slip in silently.

Random initialisation is drawn with NumPy on the host, one generator per variable seeded from
(seed, variable path): the same seed gives bit-identical parameters on any machine and backend, and it
costs no XLA compilation (drawing with jax.random compiled one small program per distinct shape, which
took 10-50 s for a large network on a busy 2-core CPU).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple  # a variable's path in the module tree, e.g. ("backbone", "layer1", 0, "conv1", "kernel")


def path_str(path: Path) -> str:
    return "/".join(str(p) for p in path)


def variables(model: nnx.Module) -> list[tuple[Path, nnx.Variable]]:
    """Every variable of the model (Param, BatchStat, RNG state) with its path, in a stable order."""
    return list(nnx.to_flat_state(nnx.state(model)))


def assign(model: nnx.Module, value_of: Callable[[Path, nnx.Variable], object]) -> None:
    """Set every variable to `value_of(path, variable)` (a host or device array; None keeps it).

    Raises ValueError naming the variable when a value has the wrong shape.
    """
    new = []
    for path, var in variables(model):
        value = value_of(path, var)
        if value is None:
            if isinstance(var.get_value(), jax.ShapeDtypeStruct):
                raise ValueError(f"no value for {path_str(path)} (shape {var.shape})")
            new.append((path, var))
            continue
        expected = tuple(var.get_value().shape)
        if tuple(np.shape(value)) != expected:
            raise ValueError(f"{path_str(path)}: shape {tuple(np.shape(value))}, expected {expected}")
        target_dtype = var.get_value().dtype
        if jax.dtypes.issubdtype(target_dtype, jax.dtypes.prng_key):
            arr = value  # typed PRNG keys are already device arrays
        else:
            arr = jnp.asarray(np.asarray(value), dtype=target_dtype)
        new.append((path, var.replace(arr)))
    nnx.update(model, nnx.from_flat_state(new))


def _generator(seed: int, path: Path) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(path_str(path).encode())])))


def init_value(seed: int, path: Path, var: nnx.Variable, constants: Mapping[str, float]):
    """torchvision's initialisation for one variable, drawn from (seed, path).

    conv kernels: kaiming normal, fan-out (std sqrt(2 / (kh * kw * out))); conv and BN biases 0; BN scale 1;
    running mean 0 / var 1; GeM p from `constants["gem_p"]`; stochastic-depth RNG streams: a key drawn
    from (seed, path), count 0.
    """
    name = path[-1]
    abstract = var.get_value()
    shape = tuple(abstract.shape)
    if isinstance(var, nnx.RngKey):
        data = _generator(seed, path).integers(0, 2**32, size=(2,), dtype=np.uint32)
        return jax.random.wrap_key_data(data, impl="threefry2x32")
    if isinstance(var, nnx.RngCount):
        return np.zeros(shape, np.uint32)
    if name == "kernel":
        kh, kw, _, out = shape
        std = np.sqrt(2.0 / (kh * kw * out))
        return (_generator(seed, path).standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
    if name in ("scale", "var"):
        return np.ones(shape, np.float32)
    if name in ("bias", "mean"):
        return np.zeros(shape, np.float32)
    if name == "p":
        return np.full(shape, constants["gem_p"], np.float32)
    raise ValueError(f"no initialiser for variable {path_str(path)}")


def initialize(model: nnx.Module, seed: int, *, gem_p: float = 3.0) -> None:
    assign(model, lambda path, var: init_value(seed, path, var, {"gem_p": gem_p}))
