"""`python -m model`: list the architectures, convert torchvision weights, embed a collection, index and search it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from data.gc_policy import for_this_process
from data.interrupt import ctrl_c_says
from data.paths import PathOrWord, UserPath
from model.embed import CHUNK_IMAGES
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
        raise click.UsageError("pass --resolution R: random weights have no resolution of their own.")
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
@click.option(
    "--store-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
    help="How the signatures are stored: float16 halves the file (1M x 2048: 4 GB instead of 8 GB); every stage "
    "reads both.",
)
@click.option(
    "--workers", type=click.IntRange(min=0), default=None,
    help="Processes decoding images (0: threads of this process). Default: the CPU count minus 2, at most 8.",
)
@click.option(
    "--chunk-images", type=click.IntRange(min=1), default=CHUNK_IMAGES, show_default=True,
    help="Images per chunk of the resumable store (OUT.parts/); a killed run resumes at the first missing chunk.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--no-compile-cache", is_flag=True,
    help="Do not use the persistent compilation cache ($VISUAL_SIGNATURES_CACHE or ~/.cache/visual-signatures/jax).",
)
@click.option("--coordinator", default=None, help="Multi-host: coordinator HOST:PORT (process 0's address).")
@click.option("--num-processes", type=int, default=None, help="Multi-host: number of processes.")
@click.option("--process-id", type=int, default=None, help="Multi-host: this process's id (0-based).")
def embed(
    arch, weights, seed, collection, resolution, batch_size, dtype, pooling, conv_impl, grouped_impl, out,
    store_dtype, workers, chunk_images, no_progress, no_compile_cache, coordinator, num_processes, process_id,
) -> None:
    """Compute one unit-norm signature per image of a collection (unreadable images are reported and skipped).

    Streams the collection over every local device (and, under jax.distributed, every host), writing the store
    chunk by chunk: a killed run, started again with the same arguments, resumes where it stopped.
    """
    from data.collection import CollectionError
    from data.compile_cache import enable_compilation_cache
    from model.distributed import maybe_initialize
    from model.embed import embed_to_store
    from model.signature import set_conv_impl
    from model.weights import WeightsError, load_or_init

    conv_impl = _conv_impl(conv_impl, grouped_impl)
    try:
        maybe_initialize(coordinator, num_processes, process_id)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    enable_compilation_cache(not no_compile_cache)
    meta = {"weights": weights if weights == "random" else str(Path(weights).absolute())}
    if weights == "random":
        meta["seed"] = seed
    try:
        with ctrl_c_says(lambda: _kept(out)):
            resolution = _resolution(weights, resolution)
            model = set_conv_impl(load_or_init(weights, arch, seed=seed, dtype=dtype, pooling=pooling), conv_impl)
            res = embed_to_store(collection, model, out, resolution=resolution, batch_size=batch_size,
                                 workers=_workers(workers), dtype=store_dtype, chunk_images=chunk_images, meta=meta,
                                 progress=not no_progress)
    except (WeightsError, CollectionError, ValueError) as e:
        raise _fail(e) from e
    if res.written:
        click.echo(f"{res.count} signatures ({res.dim}-d), {res.skipped} skipped -> {out}")
    else:
        click.echo(f"computed {res.computed} chunks; process 0 merged them into {out}")


@cli.command()
@click.option("--collection", type=UserPath(exists=True, file_okay=False), required=True,
              help="Collection folder with images.csv.")
@click.option("--weights", type=PathOrWord("random"), required=True, help="A weights directory, or 'random'.")
@click.option("--arch", type=_ARCH, help="Architecture (optional with a weights directory; must agree).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --weights random, and of the PCA's sample.")
@click.option("--resolution", type=int, help="Images are squash-resized to R x R. Default: the weights' own.")
@click.option("--pooling", type=click.Choice(list(POOLINGS)), help="Default: the stored pooling, or mean.")
@click.option("--scales", default="2,3", show_default=True,
              help="Region scales (R-MAC grid): scale l gives l x l regions of side 2/(l+1) of the picture.")
@click.option("--pca", "pca_dim", default="auto", show_default=True,
              help="PCA-whiten every vector to D dimensions, learned on the collection; auto: 256 (fewer for a small "
              "collection); 0: none (then a region rarely outscores a whole image: docs/model.md).")
@click.option("--pca-images", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Images whose vectors the PCA is learned on.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help="Compute dtype of the network (bfloat16 on a GPU: faster; queries are embedded the same way).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes decoding images. Default: the CPU count minus 2, at most 8.")
@click.option("--chunk-images", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Images per part of the index; a killed run loses at most one part's work.")
@click.option("--out", type=UserPath(file_okay=False), required=True, help="The index folder (created, or extended).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def index(collection, weights, arch, seed, resolution, pooling, scales, pca_dim, pca_images, batch_size, dtype,
          workers, chunk_images, out, no_progress) -> None:
    """Index every image for search: its global signature and its regional ones (float16, memory-mapped).

    Run it again on a grown collection (or after an interruption) to add only the images not yet indexed.
    """
    from data.collection import CollectionError
    from model.index import IndexError_
    from model.index_build import IndexSettings, build_index
    from model.weights import WeightsError, load_or_init

    try:
        scale_list = tuple(int(s) for s in scales.replace(" ", "").split(",") if s)
    except ValueError:
        raise click.UsageError(f"--scales {scales!r}: expected integers separated by commas, e.g. 2,3") from None
    pca_dim, pca_auto = _pca_option(pca_dim)
    recorded = {"weights": weights if weights == "random" else str(Path(weights).absolute())}
    if weights == "random":
        recorded["seed"] = seed
    try:
        res = _resolution(weights, resolution)
        net = load_or_init(weights, arch, seed=seed, dtype=dtype, pooling=pooling)
        settings = IndexSettings(resolution=res, scales=scale_list, pca_dim=pca_dim, pca_auto=pca_auto,
                                 pca_images=pca_images,
                                 batch_size=batch_size, workers=_workers(workers), chunk_images=chunk_images,
                                 seed=seed, progress=not no_progress)
        with ctrl_c_says(f"the parts finished so far are kept in {out}; run the same command again to index the "
                         "rest."):
            result = build_index(collection, net, out, settings, weights=recorded)
    except (WeightsError, CollectionError, IndexError_, ValueError) as e:
        raise _fail(e) from e
    except OSError as e:
        raise click.ClickException(f"{out}: cannot write the index there ({e.strerror or e}); give --out a folder "
                                   f"you can write.") from e
    click.echo(f"indexed {result.added} image{'s' * (result.added != 1)} ({result.skipped} unreadable, "
               f"{result.already} indexed before); the index {out} holds {result.total}")


def _pca_option(text: str) -> tuple[int | None, bool]:
    """--pca auto | 0 | D -> (dimensions or None, whether they are the default)."""
    from model.index_build import DEFAULT_PCA

    if str(text).strip().lower() == "auto":
        return DEFAULT_PCA, True
    try:
        dim = int(text)
    except ValueError:
        raise click.UsageError(f"--pca {text!r}: expected auto, 0 (none) or a number of dimensions") from None
    if dim < 0:
        raise click.UsageError(f"--pca {dim}: expected auto, 0 (none) or a positive number of dimensions")
    return (dim or None), False


@cli.command()
@click.argument("index_dir", metavar="INDEX", type=UserPath(exists=True, file_okay=False))
@click.option("--uid", help="Query: an image of the index (or of --collection) by uid; left out of the results.")
@click.option("--image", type=UserPath(exists=True, dir_okay=False), help="Query: an image file.")
@click.option("--box", help="Search a detail: X,Y,W,H in pixels of the query image (as shown, EXIF applied).")
@click.option("-k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="Results.")
@click.option("--json", "json_out", help="Write the results as JSON here ('-': to stdout, the table then to stderr).")
@click.option("--html", "html_out", help="Write a self-contained gallery here.")
@click.option("--collection", type=UserPath(exists=True, file_okay=False),
              help="Where to read a --uid's image when it is not in the index, or the collection has moved.")
@click.option("--weights", type=PathOrWord("random"),
              help="The index's weights, when they have moved (needed for --image and --box).")
def search(index_dir, uid, image, box, k, json_out, html_out, collection, weights) -> None:
    """Find the images that share a picture or a detail of it: exact top-k over whole images and regions."""
    from model.index import IndexError_
    from model.query import QueryError, parse_box
    from model.search_output import results_json, text_table, write_json
    from model.search_service import SearchService

    if (uid is None) == (image is None):
        raise click.UsageError("pass exactly one of --uid UID or --image FILE.")
    json_out = _output_file("--json", json_out, dash=True)
    html_out = _output_file("--html", html_out)
    try:
        service = SearchService(index_dir, weights=None if weights is None else str(weights),
                                collection=None if collection is None else str(collection))
        answer = service.ask(uid=uid, image=image, box=parse_box(box) if box else None, k=k)
    except (IndexError_, QueryError) as e:
        raise _fail(e) from e
    for note in answer.query.notes:
        click.echo(f"warning: {note}", err=True)
    qcoll = service.query_collection(answer.query)
    metadata = service.metadata(answer.hits, uid, qcoll)
    for folder in sorted(service.unreadable):
        click.echo(f"warning: {folder}, the collection the index recorded for some results, cannot be read (moved?): "
                   f"their titles and pictures are missing; pass --collection with where it is now.", err=True)
    click.echo(text_table(answer.query, answer.hits, metadata), err=json_out == "-")
    doc = results_json(answer.query, answer.hits, index=str(index_dir), k=k)
    if json_out == "-":
        click.echo(json.dumps(doc, indent=1, ensure_ascii=False))
    for flag, path, write in (("--json", json_out, lambda p: write_json(p, doc)),
                              ("--html", html_out, lambda p: _write_gallery(service, answer, metadata, qcoll,
                                                                            str(index_dir), p))):
        if path and path != "-":
            try:
                write(path)
            except OSError as e:
                raise click.ClickException(f"{flag} {path}: cannot write it ({e.strerror or e}).") from e
            click.echo(f"-> {path}", err=True)


def _output_file(flag: str, path: str | None, *, dash: bool = False) -> str | None:
    """An output file option: a new or regular file in an existing folder (never a device or a pipe, which the
    atomic rename would replace), or '-' (stdout) where `dash`."""
    if path is None or (dash and path == "-"):
        return path
    p = Path(path).expanduser()
    if p.exists() and not p.is_file():
        raise click.UsageError(f"{flag} {path}: not a regular file; give a file name" + (" or '-'" if dash else "") + ".")
    if not p.parent.is_dir():
        raise click.UsageError(f"{flag} {path}: the folder {p.parent} does not exist.")
    return str(p)


def _write_gallery(service, answer, metadata, qcoll, index_dir: str, out) -> None:
    from model.search_output import collect_thumbs, gallery_html, query_thumbnail, write_gallery

    collections = {h.uid: service.collection_of(h) for h in answer.hits}
    sizes = {h.uid: service.index.size_of(h.number) for h in answer.hits}
    page = gallery_html(answer.query, answer.hits, metadata=metadata,
                        thumbs=collect_thumbs(answer.hits, collections, sizes),
                        query_thumb=query_thumbnail(answer.query, qcoll), index=index_dir)
    write_gallery(out, page)


def _kept(out: str) -> str:
    """What an interrupted `embed` leaves (Ctrl-C, or SIGINT from a scheduler): the chunks it finished."""
    from data.signatures import StoreParts

    parts = StoreParts.beside(out)
    kept = f"the chunks finished so far are kept in {parts.folder}; " if parts.done() else ""
    return f"{kept}run the same command again to resume."


def _workers(workers: int | None) -> int:
    import os

    return workers if workers is not None else max(0, min(8, (os.cpu_count() or 1) - 2))


def main() -> None:
    """The command line as its own process (`python -m model`, the vsig-model script): data.gc_policy."""
    for_this_process()
    cli()


if __name__ == "__main__":
    main()
