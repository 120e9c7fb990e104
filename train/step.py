"""The train step: one jitted pure function over a batch of N triplets (3N images), data parallel.

Layout: the global batch is an array (3, N, H, W, 3) - A, B and C blocks - sharded over N on a
('data',) mesh, so each device holds a contiguous slice of *whole triplets* (A_i, B_i, C_i stay on one
device). Inside `jax.shard_map` each device runs the network ONCE on its 3N/d stacked images, computes
the loss of its triplets and the gradient, and an explicit `psum` (loss reduction "sum": the global loss
is the sum of the devices' sums) or `pmean` ("mean") combines the gradients. The optimizer update then
runs identically on every device on replicated parameters.

Why shard_map and not plain jit with NamedSharding: XLA's partitioner all-gathers the whole batch
around grouped convolutions (openxla/xla#47945). Inside shard_map the program
is per-device by construction; `all_gathers` lets a test check that none remains in the compiled step.

Parameters are replicated and varying-cast (`pcast(..., to="varying")`) before differentiation, so the
gradient is each device's local gradient and the collective is the explicit one written here (with
shard_map's type checking on, the gradient of an invariant input would be summed implicitly).

Precision: the network is built with compute dtype bf16 or f32; parameters and BN statistics are f32;
the loss is f32. BatchNorm is frozen by default (running statistics, not updated). With live BN the
updated statistics are averaged over devices.

A non-finite loss leaves the state unchanged (the update is skipped on device) and is reported in the
returned metrics; the loop stops the run with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data.preprocess import normalize
from train.config import TrainConfig
from train.loss import compound_hinge_loss, in_batch_hardest_loss

AXIS = "data"


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    """Everything that changes during training (a pytree; donated to the step)."""

    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of nnx.Param
    opt_state: Any
    rest: Any  # nnx.State of everything else (BN statistics, RNG state)
    key: jax.Array  # uint32[2] base key for stochastic layers


def make_mesh(devices=None) -> Mesh:
    devs = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devs.reshape(-1), (AXIS,))


def split_model(model: nnx.Module):
    """(graphdef, params, rest): trainable parameters apart from everything else."""
    return nnx.split(model, nnx.Param, ...)


def init_state(params, rest, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rest=rest,
        key=jax.random.PRNGKey(seed),
    )


def _tree_where(pred, new, old):
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def make_train_step(
    graphdef,
    optimizer: optax.GradientTransformation,
    cfg: TrainConfig,
    mesh: Mesh,
    *,
    with_groups: bool = False,
) -> Callable:
    """Build the jitted step `(state, images[, groups]) -> (state, metrics)`.

    images: (3, N, H, W, 3) uint8 pixels or ImageNet-normalised floats, sharded P(None, 'data');
    groups (only with `with_groups`, for in-batch negatives): (3, N) int32 group ids, same sharding.
    The state is donated: the caller must use the returned one.
    """
    loss_kw = dict(margin=cfg.margin, beta=cfg.beta, swap=cfg.swap, intra=cfg.intra, reduction=cfg.reduction)
    reduce = jax.lax.psum if cfg.reduction == "sum" else jax.lax.pmean
    live_bn = not cfg.freeze_bn

    def local(state: TrainState, images, groups):
        three, n = images.shape[:2]
        x = images.reshape((three * n,) + images.shape[2:])
        if x.dtype == jnp.uint8:
            x = normalize(x, xp=jnp)
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), jax.lax.axis_index(AXIS))
        params_v = jax.lax.pcast(state.params, AXIS, to="varying")

        def loss_fn(params):
            # fresh Variable objects at this trace level (live BN mutates them inside the grad trace)
            model = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, state.rest))
            sig = model(x, rngs=nnx.Rngs(dropout=key))
            a, b, c = sig[:n], sig[n : 2 * n], sig[2 * n :]
            loss = compound_hinge_loss(a, b, c, **loss_kw)
            if groups is not None:
                ga = jax.lax.all_gather(a, AXIS, tiled=True)
                gb = jax.lax.all_gather(b, AXIS, tiled=True)
                gc = jax.lax.all_gather(c, AXIS, tiled=True)
                gg = jax.lax.all_gather(groups, AXIS, axis=1, tiled=True)
                extra = in_batch_hardest_loss(ga, gb, gc, gg, **loss_kw)
                # every device computed the same global term; count it once in the psum/pmean
                d = jax.lax.psum(1, AXIS)
                loss = loss + (extra / d if cfg.reduction == "sum" else extra)
            new_rest = nnx.state(model, nnx.Not(nnx.Param)) if live_bn else state.rest
            return loss, new_rest

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params_v)
        grads = reduce(grads, AXIS)
        loss = reduce(loss, AXIS)
        if live_bn:
            new_rest = jax.tree.map(
                lambda v: jax.lax.pmean(v, AXIS) if jnp.issubdtype(v.dtype, jnp.floating) else v, new_rest
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss)
        new = TrainState(
            step=state.step + 1,
            params=_tree_where(ok, params, state.params),
            opt_state=_tree_where(ok, opt_state, state.opt_state),
            rest=_tree_where(ok, new_rest, state.rest) if live_bn else state.rest,
            key=state.key,
        )
        gnorm = optax.tree.norm(grads)
        return new, {"loss": loss, "grad_norm": gnorm, "finite": ok}

    batch_spec = P(None, AXIS)
    in_specs = (P(), batch_spec, batch_spec if with_groups else None)

    def step(state, images, groups=None):
        if with_groups and groups is None:
            raise ValueError("this step was built for in-batch negatives: pass groups")
        fn = jax.shard_map(
            partial(local) if with_groups else (lambda s, im, _g: local(s, im, None)),
            mesh=mesh,
            in_specs=in_specs if with_groups else (P(), batch_spec, P()),
            out_specs=(P(), P()),
        )
        return fn(state, images, groups if with_groups else jnp.zeros((), jnp.int32))

    return jax.jit(step, donate_argnums=(0,))


def replicate(tree, mesh: Mesh):
    """Put a pytree on every device of the mesh (replicated), e.g. the initial train state."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's stacked batch (3n, ...) [A..., B..., C...] -> the global (3, N, ...) sharded array.

    Each process passes the triplets of its own data shard; `make_array_from_process_local_data`
    assembles them into one global array (single process: just a device put).
    """
    local = np.asarray(local)
    if local.shape[0] % 3:
        raise ValueError(f"a triplet batch stacks A, B and C: its first dimension must be 3n, got {local.shape}")
    n = local.shape[0] // 3
    x = local.reshape((3, n) + local.shape[1:])
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, AXIS)), x)


def global_groups(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """(3, n) group ids of this process's triplets -> global (3, N) array sharded like the images."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, AXIS)), np.asarray(local, np.int32))


def all_gathers(hlo: str) -> list[str]:
    """The all-gather instructions of an HLO module (their result shapes name what is gathered)."""
    return [ln.strip() for ln in hlo.splitlines() if " all-gather(" in ln or "all-gather-start(" in ln]
