"""torchvision state_dict -> SignatureNet: name mapping, layout transposes, strict shape checks.

No network definitions here (they live in resnet.py / efficientnet.py); torch is imported only inside
the functions that read .pth files or download weights, so nothing else in the project needs torch.

Name rule (the Flax modules mirror torchvision's names; see the backbone modules):
  backbone/<torch path>/kernel        <- <torch path>.weight   transposed (O, I/G, kh, kw) -> (kh, kw, I/G, O)
  .../scale, bias                     <- .weight, .bias        (BN affine; conv bias)
  .../mean, var                       <- .running_mean, .running_var
with the Flax-side renamings `conv`/`bn` (a Conv2dNormActivation's .0/.1) and
`downsample_conv`/`downsample_bn` (downsample.0/.1). `num_batches_tracked` is dropped. The classifier
(`fc.*`, `classifier.*`) is not part of a signature network: it is ignored and reported.
Anything else that does not match (a missing key, an unexpected key, a wrong shape) is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from model.registry import build_abstract, get_spec
from model.signature import SignatureNet
from model.state import assign, init_value, variables

CLASSIFIER_PREFIXES = ("fc.", "classifier.")
_MODULE_RENAME = {
    "conv": "0",
    "bn": "1",
    "downsample_conv": "downsample.0",
    "downsample_bn": "downsample.1",
}
_LEAF_RENAME = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """A state_dict that does not fit the architecture; the message names the offending keys."""


def torch_key(path: tuple) -> str | None:
    """The torchvision state_dict key of a Flax variable path, or None for variables torch does not have."""
    if not path or path[0] != "backbone":
        return None  # e.g. GeM's p: not part of torchvision's network
    *modules, leaf = path[1:]
    if leaf not in _LEAF_RENAME:
        return None  # RNG state of stochastic depth
    parts = [_MODULE_RENAME.get(str(m), str(m)) for m in modules]
    return ".".join([*parts, _LEAF_RENAME[leaf]])


def to_numpy(value) -> np.ndarray:
    """A torch tensor (detached, on CPU) or array-like as a float32 NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def ignored_keys(state_dict: Mapping[str, object]) -> list[str]:
    """Keys a conversion skips on purpose: the classifier head and BN's num_batches_tracked counters."""
    return [k for k in state_dict if k.startswith(CLASSIFIER_PREFIXES) or k.endswith("num_batches_tracked")]


def _strip_module_prefix(state_dict: Mapping[str, object]) -> Mapping[str, object]:
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _preview(keys: list[str], n: int = 10) -> str:
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def map_state_dict(model: SignatureNet, state_dict: Mapping[str, object]) -> dict[tuple, np.ndarray]:
    """Flax variable path -> converted array for every torch-backed variable of `model`; strict checks."""
    state_dict = _strip_module_prefix(state_dict)
    skip = set(ignored_keys(state_dict))
    wanted: dict[str, tuple[tuple, tuple]] = {}
    for path, var in variables(model):
        key = torch_key(path)
        if key is not None:
            wanted[key] = (path, tuple(var.get_value().shape))
    missing = [k for k in wanted if k not in state_dict]
    unexpected = [k for k in state_dict if k not in wanted and k not in skip]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if problems:
        raise ConversionError(f"state_dict does not fit {model.arch}: " + "; ".join(problems))
    out = {}
    for key, (path, shape) in wanted.items():
        arr = to_numpy(state_dict[key])
        if path[-1] == "kernel":
            torch_shape = (shape[3], shape[2], shape[0], shape[1])
            if arr.shape != torch_shape:
                raise ConversionError(f"{key}: shape {arr.shape}, {model.arch} expects {torch_shape}")
            arr = np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
        elif arr.shape != shape:
            raise ConversionError(f"{key}: shape {arr.shape}, {model.arch} expects {shape}")
        out[path] = arr
    return out


def convert_state_dict(
    arch: str,
    state_dict: Mapping[str, object],
    *,
    dtype="float32",
    pooling: str = "mean",
    gem_p: float = 3.0,
    gem_learnable: bool = True,
) -> SignatureNet:
    """A SignatureNet for `arch` carrying the torchvision weights in `state_dict` (tensors or arrays).

    Variables torchvision does not have (GeM's p, stochastic-depth RNG state) get their `build` defaults.
    """
    get_spec(arch)
    model = build_abstract(arch, dtype=dtype, pooling=pooling, gem_p=gem_p, gem_learnable=gem_learnable)
    values = map_state_dict(model, state_dict)
    # Everything torch-backed is in `values` (map_state_dict checked it); the rest gets build's defaults.
    assign(model, lambda path, var: values[path] if path in values else init_value(0, path, var, {"gem_p": gem_p}))
    return model


def read_state_dict_file(path: str | Path) -> dict[str, object]:
    """Load a .pth state_dict safely: torch.load(weights_only=True) never unpickles arbitrary objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file. Pass a torchvision state_dict saved with torch.save.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for unreadable / unsafe files
        raise ConversionError(
            f"{path}: cannot read it as a state_dict with torch.load(weights_only=True) ({type(e).__name__}: {e})."
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a training checkpoint wrapping the state_dict
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ConversionError(f"{path}: expected a dict of parameter name -> tensor, got {type(obj).__name__}.")
    return dict(obj)


def download_torchvision_weights(name: str, arch: str | None = None) -> dict[str, object]:
    """torchvision's own download (cached in torch hub's cache) of weights `name`, e.g.
    "ResNeXt101_32X8D_Weights.IMAGENET1K_V2" (with `arch`, the bare "IMAGENET1K_V2" or "DEFAULT" is
    completed from that architecture's weights). Without internet: ConversionError saying to pass --state-dict."""
    import torchvision

    if arch is not None and "." not in name:
        # A bare value such as "IMAGENET1K_V2" or "DEFAULT": complete it from the architecture's enum.
        enum = torchvision.models.get_model_weights(get_spec(arch).torchvision_name)
        name = f"{enum.__name__}.{name}"
    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as e:
        hint = f" For {arch}: {get_spec(arch).torchvision_weights}." if arch else ""
        raise ConversionError(f"unknown torchvision weights {name!r} ({e}).{hint}") from e
    if arch is not None:
        expected = torchvision.models.get_model_weights(get_spec(arch).torchvision_name)
        if type(weights) is not expected:
            raise ConversionError(f"weights {name} are not for {arch}; choose one of {[str(w) for w in expected]}.")
    try:
        return weights.get_state_dict(progress=True)
    except OSError as e:  # URLError, socket errors, DNS failures are all OSErrors
        raise ConversionError(
            f"could not download {name} from {weights.url} ({e}). This machine seems to have no internet access: "
            f"download that file where you have internet and pass it with --state-dict FILE.pth instead."
        ) from e
