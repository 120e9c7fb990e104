"""Training configuration: one dataclass, three presets, overrides from the command line.

Presets
- `thesis`: the original system as published (the EPFL thesis "Semi-supervised Clustering of Visual
  Signatures of Artworks", 2022): resnext101_32x8d at 320 px, batch 4 triplets, torch-style Adam (L2
  weight decay 1e-4 added to the gradient of *every* parameter, as torch.optim.Adam(weight_decay=...)
  does), lr 1e-6 constant, margin 0.01, beta 0.1, 10 negatives, 5 epochs, float32. BN statistics are
  frozen (the original meant to and failed).
- `fast` (default): the same model, loss and data at 320 px, but 32 triplets (96 images) per step in
  bfloat16 with f32 parameters. Learning rate 8e-6: the thesis's 1e-6 at batch 4 scaled linearly with
  the batch (x8). Adam normalises the gradient scale per parameter, so the summed loss does not change
  the step size; what a larger batch buys is a less noisy direction, which is what the linear rule
  assumes. A 100-step warm-up protects the pretrained features from the first, poorly-estimated Adam
  moments; cosine decay to 0 over the run. AdamW with decoupled decay masked off BN and biases.
- `demo`: resnet18 at 64 px, 16 triplets per step, 1 negative per image, 3 epochs (the best on val is
  kept), AdamW with a 5-step warm-up and cosine decay, float32 (bf16 is slow on XLA:CPU), decoding in the
  main process: sized to train on a 2-core CPU in a few minutes. It starts from RANDOM weights (nothing
  can be downloaded), and three choices follow from that:
  * BatchNorm is FROZEN at its initial statistics (mean 0, var 1: each BN is the identity). A random
    network is a usable colour-and-layout descriptor as it is; recalibrating its BN statistics to the data
    alone, before any training, makes its retrieval worse.
  * The stem convolution learns at lr 1e-3, the four residual stages 30x slower (3e-5), the stem's BN
    affine not at all. Adam moves every weight by about lr per step and the residual stages' He-initialised
    kernels have standard deviations of 0.02-0.06, so a common lr large enough to change the stem rewrites them.
  * 64 px, 1 negative: three short epochs, so the run stays a few minutes and val picks the epoch.
  The measurements behind these choices and the preset's results are in docs/training.md ("The demo
  preset"). With pretrained weights use the `fast` preset (BN frozen at the pretrained statistics).

Every field can be overridden: `--set lr=1e-4 --set batch_size=8` (types follow the field; tuples
are comma-separated). The resolved config is written to RUN_DIR/config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_text
from model.inputs import check_resolution

PRESETS = ("fast", "thesis", "demo")
DEFAULT_PRESET = "fast"


@dataclass(frozen=True)
class TrainConfig:
    # model
    arch: str = "resnext101_32x8d"
    pooling: str = "mean"
    resolution: int = 320
    compute_dtype: str = "bfloat16"  # "float32" | "bfloat16"; parameters and BN statistics stay float32
    freeze_bn: bool = True
    # recompute each residual block's activations in the backward pass: trade compute (about one more
    # forward) for memory, to fit larger per-device batches
    remat: bool = False
    # loss
    margin: float = 0.01
    beta: float = 0.1
    swap: bool = True
    intra: bool = True
    reduction: str = "sum"
    in_batch_negatives: bool = False  # add the hardest negative of the global batch as an extra term
    # mining
    num_negatives: int = 10
    remine_every: int = 0  # steps; 0 = once per epoch
    # at most this share of an anchor's num_negatives slots (at least one) is filled with its annotated NEGATIVE
    # pairs, hardest first, rotating by epoch; the rest is mined. 0: annotated negatives are not preferred.
    # The triplets per epoch never depend on the number of annotated negatives (train/mining.py).
    annotated_negative_share: float = 0.5
    # optimisation
    batch_size: int = 32  # triplets per global step (3x as many images)
    epochs: int = 5
    optimizer: str = "adamw"  # "adam" (torch-style L2) | "adamw" (decoupled)
    lr: float = 8e-6
    schedule: str = "cosine"  # "cosine" | "constant"
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    decay_all: bool = False  # True: decay BN and biases too (as the original did)
    grad_clip: float = 0.0  # global-norm clip; 0 = off
    slow_stages: tuple[str, ...] = ()  # parameter-path prefixes trained at lr * slow_lr_mult
    slow_lr_mult: float = 0.1
    frozen_stages: tuple[str, ...] = ()  # parameter-path prefixes not trained at all
    # data
    augment: bool = True
    workers: int = -1  # decode/augment processes; -1 = auto (min(8, cpus - 2)), 0 = in the main process
    eval_batch_size: int = 64
    prefetch: int = 2  # batches a background thread keeps ready on the devices
    # run control
    seed: int = 0
    checkpoint_every: int = 500  # steps (plus one at each epoch end)
    keep_checkpoints: int = 3
    max_steps: int = 0  # stop after this many steps (0 = no limit); for tests and smoke runs
    log_every: int = 10
    # persistent XLA compilation cache (`python -m train` only): $VISUAL_SIGNATURES_CACHE or
    # ~/.cache/visual-signatures/jax; a second run of the same model skips minutes of compilation
    compile_cache: bool = True

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def resolved_workers(cfg: TrainConfig) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def preset(name: str = DEFAULT_PRESET) -> TrainConfig:
    if name == "fast":
        return TrainConfig()
    if name == "thesis":
        return TrainConfig(
            arch="resnext101_32x8d", resolution=320, batch_size=4, optimizer="adam", lr=1e-6,
            schedule="constant", warmup_steps=0, weight_decay=1e-4, decay_all=True, margin=0.01, beta=0.1,
            num_negatives=10, epochs=5, compute_dtype="float32",
        )
    if name == "demo":
        return TrainConfig(
            arch="resnet18", resolution=64, batch_size=16, optimizer="adamw", lr=1e-3, schedule="cosine",
            warmup_steps=5, weight_decay=1e-4, num_negatives=1, epochs=3, compute_dtype="float32",
            freeze_bn=True, frozen_stages=("backbone/bn1",),
            slow_stages=("backbone/layer1", "backbone/layer2", "backbone/layer3", "backbone/layer4"),
            slow_lr_mult=0.03, eval_batch_size=64, checkpoint_every=100, log_every=5, workers=0,
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


def _parse_value(name: str, typ: Any, text: str) -> Any:
    t = str(typ)
    if t in ("bool", "<class 'bool'>"):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {name}={text}: expected true/false")
    if t in ("int", "<class 'int'>"):
        return int(text)
    if t in ("float", "<class 'float'>"):
        return float(text)
    if t.startswith("tuple"):
        return tuple(s.strip() for s in text.split(",") if s.strip())
    return text


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | list[str]) -> TrainConfig:
    """Return cfg with fields replaced. `overrides` is a dict or a list of "key=value" strings."""
    types = {f.name: f.type for f in fields(cfg)}
    items: dict[str, Any] = {}
    pairs = overrides.items() if isinstance(overrides, dict) else [_split(s) for s in overrides]
    for k, v in pairs:
        key = k.replace("-", "_")
        if key not in types:
            raise ValueError(f"--set {k}: unknown config field; known fields: {', '.join(sorted(types))}")
        items[key] = _parse_value(key, types[key], v) if isinstance(v, str) else v
    out = dataclasses.replace(cfg, **items)
    validate(out)
    return out


def _split(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise ValueError(f"--set {s!r}: expected key=value (e.g. --set lr=1e-4)")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.compute_dtype in ("float32", "bfloat16"), "compute_dtype must be float32 or bfloat16"),
        (cfg.reduction in ("sum", "mean"), "reduction must be sum or mean"),
        (cfg.optimizer in ("adam", "adamw"), "optimizer must be adam or adamw"),
        (cfg.schedule in ("cosine", "constant"), "schedule must be cosine or constant"),
        (cfg.batch_size >= 1 and cfg.epochs >= 1, "batch_size, epochs >= 1"),
        (cfg.lr > 0 and cfg.num_negatives >= 1, "lr > 0 and num_negatives >= 1"),
        (0.0 <= cfg.annotated_negative_share <= 1.0, "annotated_negative_share must be between 0 and 1"),
        (cfg.prefetch >= 1, "prefetch must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"config: {msg} (got {cfg})")
    check_resolution(cfg.resolution)  # the networks' rule, the one `model embed` applies


def _sets_field(overrides: list[str] | dict, name: str) -> bool:
    keys = overrides.keys() if isinstance(overrides, dict) else [_split(o)[0] for o in overrides]
    return any(k.replace("-", "_") == name for k in keys)


def start_config(
    preset_name: str | None,
    *,
    arch: str | None = None,
    seed: int | None = None,
    overrides: list[str] | dict = (),
    weights_arch: str | None = None,
    source: dict | None = None,
) -> tuple[TrainConfig, str]:
    """The config of a new run, and the preset it came from: preset, then --arch/--seed, then --set.

    `source`: the config.json of the run a new round continues from (`--resume-from`); its preset is
    the default one (the other --set values of that run are not carried over: pass them again).
    `weights_arch`: the architecture stored with the start weights; it is the run's arch unless
    --arch / --set arch names another, which is an error (the weights would not fit).
    """
    name = preset_name or (source or {}).get("preset") or DEFAULT_PRESET
    cfg = preset(name)
    explicit: dict[str, Any] = {}
    if arch:
        explicit["arch"] = arch
    if seed is not None:
        explicit["seed"] = seed
    cfg = apply_overrides(apply_overrides(cfg, explicit), list(overrides) if not isinstance(overrides, dict)
                          else overrides)
    if weights_arch is not None:
        if (arch or _sets_field(overrides, "arch")) and cfg.arch != weights_arch:
            raise ValueError(f"the start weights are {weights_arch} weights but the arch asked for is {cfg.arch}; "
                             f"drop --arch / --set arch (the weights' arch is used) or choose other weights.")
        cfg = dataclasses.replace(cfg, arch=weights_arch)
    return cfg, name


def save_config(cfg: TrainConfig, path: str | Path, extra: dict | None = None) -> None:
    """Atomic JSON write of the resolved config (plus run facts such as the preset and arguments)."""
    atomic_write_text(path, json.dumps({"config": cfg.to_json(), **(extra or {})}, indent=2, sort_keys=True))


def load_config(path: str | Path) -> TrainConfig:
    return TrainConfig.from_json(json.loads(Path(path).read_text())["config"])


__all__ = ["TrainConfig", "PRESETS", "preset", "apply_overrides", "start_config", "save_config", "load_config",
           "field"]
