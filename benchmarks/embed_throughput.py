"""Images per second of our embedding against torchvision inference, on the same images, in one run.

The device comparison feeds both the same uint8 batches (B, R, R, 3) already in memory (no files, no grain:
the GPU box lacks it): ours is `model.embed.Embedder` (the jitted forward `model embed` uses, batch split
over every local device, ImageNet normalisation on the device, mean pooling, L2 norm); torchvision's is the
same architecture with its classifier removed, in inference mode, channels_last, the same normalisation,
average pooling and L2 norm, once eager and once under `torch.compile`. Both use random weights (speed does
not depend on them), the same resolution and batch; each is warmed up (compiled) first, then timed over
`--batches` batches, waiting for the device at the end. Ratios > 1: ours is faster.

`--files N` adds the end-to-end figure of `model.embed.embed_collection` on N synthetic JPEGs (640x480,
decoded and resized by the input pipeline's `--workers` processes): it needs grain.

Prints one JSON line per measurement and the ratios on stdout, a human line on stderr (benchmarks/gpu.sh's
convention: JSON to gpu.jsonl, words to gpu.log).

    python benchmarks/embed_throughput.py --arch resnet50 --resolution 224 --batch-size 32 --batches 10
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch in the same process

import click  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from model.embed import Embedder, embed_collection  # noqa: E402
from model.registry import build  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def synthetic_collection(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path"])
        for i in range(n):
            # Smooth random images (like photographs, unlike white noise) compress like real JPEGs.
            small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(root / f"images/{i}.jpg", quality=90)
            w.writerow([f"img{i}", f"images/{i}.jpg"])
    return root


def timed(step, batches: int, sync) -> tuple[float, float]:
    """(seconds of the first call, including compilation; seconds of `batches` further calls, after a second
    untimed warm-up call: eager torch on a CPU builds its kernels on the first calls too)."""
    t0 = time.perf_counter()
    sync(step())
    first = time.perf_counter() - t0
    sync(step())
    t0 = time.perf_counter()
    out = None
    for _ in range(batches):
        out = step()
    sync(out)
    return first, time.perf_counter() - t0


def ours(arch: str, images: np.ndarray, batches: int, dtype: str) -> tuple[float, float]:
    embed = Embedder.of(build(arch, seed=0, dtype=dtype), len(images))
    return timed(lambda: embed(images), batches, lambda out: out.block_until_ready())


def torch_forward(arch: str, device, dtype: str):
    """torchvision's `arch` without classifier: uint8 NHWC batch -> L2-normalised pooled features."""
    import torch
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    for head in ("fc", "classifier"):
        if hasattr(net, head):
            setattr(net, head, torch.nn.Identity())
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    net = net.eval().to(device=device, dtype=tdtype, memory_format=torch.channels_last)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def forward(x):
        x = (x.permute(0, 3, 1, 2).float() - mean) / std
        x = x.to(tdtype).contiguous(memory_format=torch.channels_last)
        return torch.nn.functional.normalize(net(x).float(), dim=1)

    return forward


def torchvision_runs(arch: str, images: np.ndarray, batches: int, dtype: str, compile_too: bool) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    forward = torch_forward(arch, device, dtype)
    modes = {"torch_eager": forward}
    if compile_too:
        modes["torch_compile"] = torch.compile(forward)
    out = {}
    with torch.inference_mode():
        for name, fn in modes.items():
            out[name] = timed(lambda fn=fn: fn(torch.from_numpy(images).to(device)), batches, lambda _: sync())
    return out


def row(name: str, first: float, steady: float, n: int, common: dict) -> dict:
    return {**common, "engine": name, "first_call_s": round(first, 3), "steady_s": round(steady, 3),
            "images": n, "images_per_s": round(n / steady, 2)}


@click.command()
@click.option("--arch", default="resnet50", show_default=True)
@click.option("--resolution", default=224, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--batches", default=10, show_default=True, help="Timed batches per engine (after one warm-up).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--no-compile", is_flag=True, help="Skip torch.compile (it needs a C++ compiler on a CPU).")
@click.option("--files", default=0, show_default=True, help="Also time `embed_collection` on this many JPEGs.")
@click.option("--workers", default=2, show_default=True, help="Decoding processes of --files.")
def main(arch, resolution, batch_size, batches, dtype, no_compile, files, workers) -> None:
    images = np.random.default_rng(0).integers(0, 256, (batch_size, resolution, resolution, 3), dtype=np.uint8)
    n = batch_size * batches
    # torchvision first, before JAX starts its backend and thread pool (one process shares the cores)
    theirs = torchvision_runs(arch, images, batches, dtype, not no_compile)
    common = {"benchmark": "embed_throughput", "arch": arch, "resolution": resolution, "batch_size": batch_size,
              "dtype": dtype, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              "local_devices": jax.local_device_count()}
    rows = [row("ours", *ours(arch, images, batches, dtype), n, common)]
    rows += [row(k, *v, n, common) for k, v in theirs.items()]
    ratios = {r["engine"]: rows[0]["images_per_s"] / r["images_per_s"] for r in rows[1:]}
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            coll = synthetic_collection(Path(tmp) / "coll", files)
            model = build(arch, seed=0, dtype=dtype)
            embed_collection(coll, model, resolution=resolution, batch_size=batch_size, progress=False,
                             workers=workers)  # compiles
            t0 = time.perf_counter()
            embed_collection(coll, model, resolution=resolution, batch_size=batch_size, progress=False,
                             workers=workers)
            rows.append(row("ours_from_files", 0.0, time.perf_counter() - t0, files, {**common, "workers": workers}))
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({**common, "engine": "ratio", **{f"ours_over_{k}": round(v, 3) for k, v in ratios.items()}}))
    figures = ", ".join(f"{r['engine']} {r['images_per_s']} img/s" for r in rows)
    vs = ", ".join(f"{v:.2f}x {k}" for k, v in ratios.items())
    print(f"{arch} at {resolution}px, batch {batch_size}, {dtype} on {common['device']} "
          f"({common['local_devices']} local devices): {figures}; ours = {vs}", file=sys.stderr)


if __name__ == "__main__":
    main()
