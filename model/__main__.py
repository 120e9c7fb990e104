"""`python -m model`: list the architectures, convert torchvision weights, embed a collection."""

from __future__ import annotations

from pathlib import Path

import click

from data.paths import PathOrWord, UserPath
from model.lowering import CONV_IMPLS
from model.registry import ARCHS, DTYPES, arch_param_count, param_count
from model.signature import POOLINGS

_ARCH = click.Choice(list(ARCHS))


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


def _conv_impl(conv_impl: str | None, grouped_impl: str | None) -> str:
    """--conv-impl, or its deprecated name --grouped-impl (it chose the lowering of every conv, not only
    grouped ones), with a warning; "auto" when neither is given."""
    if grouped_impl is None:
        return conv_impl or "auto"
    click.echo("warning: --grouped-impl is deprecated; use --conv-impl (same values).", err=True)
    if conv_impl is not None and conv_impl != grouped_impl:
        raise click.UsageError(
            f"--conv-impl {conv_impl} and --grouped-impl {grouped_impl} disagree; pass only --conv-impl."
        )
    return grouped_impl


def _resolution(weights: str, resolution: int | None) -> int:
    """--resolution, else the one the weights were trained at (a training run's weights record it)."""
    from model.weights import recorded_resolution

    if resolution is not None:
        return resolution
    if weights == "random":
        raise click.UsageError("pass --resolution R: random weights were trained at no resolution.")
    recorded = recorded_resolution(weights)
    if recorded is None:
        raise click.UsageError(
            f"pass --resolution R: {weights} does not record the resolution it was trained at (converted "
            f"torchvision weights do not; the ImageNet one is in `python -m model list`, column eval_res)."
        )
    return recorded


@click.group()
def cli() -> None:
    """Flax backbones with exact torchvision weights, and visual signatures."""


@cli.command("list")
def list_cmd() -> None:
    """Architectures with their parameter counts (without classifier), signature widths, eval resolutions."""
    click.echo(f"{'arch':<20} {'family':<13} {'params':>12} {'signature':>9} {'eval_res':>8}  torchvision weights")
    for name, spec in ARCHS.items():
        n = arch_param_count(name)
        click.echo(
            f"{name:<20} {spec.family:<13} {n:>12,} {spec.signature_dim:>9} {spec.eval_resolution:>8}  "
            f"{spec.torchvision_weights}"
        )


@cli.command()
@click.option("--arch", type=_ARCH, required=True, help="Architecture the weights are for.")
@click.option("--state-dict", "state_dict", type=UserPath(dir_okay=False), help="A .pth file.")
@click.option("--torchvision-weights", help="torchvision weights name, e.g. ResNeXt101_32X8D_Weights.IMAGENET1K_V2.")
@click.option("--out", type=UserPath(file_okay=False), required=True, help="Weights directory.")
def convert(arch: str, state_dict: Path | None, torchvision_weights: str | None, out: Path) -> None:
    """Convert a torchvision state_dict (file or torchvision download) into a weights directory."""
    from model.convert import (
        ConversionError,
        convert_state_dict,
        download_torchvision_weights,
        ignored_keys,
        read_state_dict_file,
    )
    from model.weights import WeightsError, save_weights

    if (state_dict is None) == (torchvision_weights is None):
        raise click.UsageError("pass exactly one of --state-dict FILE.pth or --torchvision-weights NAME.")
    try:
        if state_dict is not None:
            sd, source = read_state_dict_file(state_dict), {"state_dict": str(state_dict.absolute())}
        else:
            sd, source = download_torchvision_weights(torchvision_weights, arch), {"torchvision": torchvision_weights}
        model = convert_state_dict(arch, sd)
        skipped = ignored_keys(sd)
        save_weights(model, out, meta={"source": source})
    except (ConversionError, WeightsError) as e:
        raise _fail(e) from e
    head = [k for k in skipped if not k.endswith("num_batches_tracked")]
    if head:
        click.echo(f"ignored the classifier (not part of a signature network): {', '.join(head)}", err=True)
    if len(skipped) > len(head):
        click.echo(f"dropped {len(skipped) - len(head)} BatchNorm num_batches_tracked counters", err=True)
    click.echo(f"{arch}: {param_count(model):,} parameters -> {out}")


@cli.command()
@click.option("--arch", type=_ARCH, help="Architecture (optional with a weights directory; must agree).")
@click.option("--weights", type=PathOrWord("random"), required=True, help="A weights directory, or 'random' (initialised from --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --weights random.")
@click.option(
    "--collection", type=UserPath(exists=True, file_okay=False), required=True,
    help="Collection folder with images.csv.",
)
@click.option(
    "--resolution", type=int,
    help="Images are squash-resized to R x R (at least 32). Default: the resolution the weights were trained at.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--pooling", type=click.Choice(list(POOLINGS)), help="Default: the stored pooling, or mean.")
@click.option(
    "--conv-impl", type=click.Choice(list(CONV_IMPLS)),
    help="How convolutions are computed (the same signatures up to rounding); default auto: the backend's "
    "fastest (docs/conv-lowering.md).",
)
@click.option("--grouped-impl", type=click.Choice(list(CONV_IMPLS)), hidden=True, help="Deprecated: --conv-impl.")
@click.option("--out", type=UserPath(dir_okay=False), required=True, help="signatures.npz")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--no-compile-cache", is_flag=True,
    help="Do not use the persistent compilation cache ($VISUAL_SIGNATURES_CACHE or ~/.cache/visual-signatures/jax).",
)
def embed(
    arch, weights, seed, collection, resolution, batch_size, dtype, pooling, conv_impl, grouped_impl, out,
    no_progress, no_compile_cache,
) -> None:
    """Compute one unit-norm signature per image of a collection (unreadable images are reported and skipped)."""
    from data.collection import CollectionError
    from data.signatures import save_signatures
    from model.compile_cache import enable_compilation_cache
    from model.embed import embed_collection
    from model.signature import set_conv_impl
    from model.weights import WeightsError, load_or_init

    conv_impl = _conv_impl(conv_impl, grouped_impl)
    enable_compilation_cache(not no_compile_cache)
    try:
        resolution = _resolution(weights, resolution)
        model = set_conv_impl(load_or_init(weights, arch, seed=seed, dtype=dtype, pooling=pooling), conv_impl)
        sig = embed_collection(collection, model, resolution=resolution, batch_size=batch_size, progress=not no_progress)
    except (WeightsError, CollectionError, ValueError) as e:
        raise _fail(e) from e
    sig.meta["weights"] = weights if weights == "random" else str(Path(weights).absolute())
    if weights == "random":
        sig.meta["seed"] = seed
    save_signatures(out, sig)
    click.echo(f"{len(sig)} signatures ({sig.dim}-d), {len(sig.skipped)} skipped -> {out}")


if __name__ == "__main__":
    cli()
