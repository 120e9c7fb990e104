"""`python -m cluster COMMAND`: optics, evaluate, map (this module), annotate and accept (the web app).

Thin: each command parses options and calls library functions that the tests call too.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import click

from cluster.accept import accept
from cluster.annotate.cli import annotate
from cluster.config import (
    CLUSTER_METHODS,
    DBSCAN_EPS,
    ENGINES,
    METHODS,
    METRICS,
    PRECISIONS,
    OpticsConfig,
)
from cluster.config import COMMAND_DEFAULTS as DEFAULTS
from data.paths import UserPath


@click.group()
def cli() -> None:
    """Cluster signatures, judge the clusters, map the collection, annotate and accept."""


@cli.command("optics")
@click.argument("signatures", type=UserPath(exists=True, dir_okay=False))
@click.option(
    "--out", type=UserPath(dir_okay=False), required=True, help="clusters.csv to write."
)
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True)
@click.option("--min-samples", default=DEFAULTS.min_samples, show_default=True, type=click.IntRange(min=2))
@click.option("--max-eps", default=DEFAULTS.max_eps, show_default=True, type=float, help="inf for no limit.")
@click.option("--xi", default=DEFAULTS.xi, show_default=True, type=click.FloatRange(0, 1))
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULTS.metric, show_default=True)
@click.option("--cluster-method", type=click.Choice(CLUSTER_METHODS), default=DEFAULTS.cluster_method,
              show_default=True)  # fmt: skip
@click.option("--eps", type=float, default=None, help=f"dbscan: eps [default {DBSCAN_EPS:g}]; optics --cluster-method "
              "dbscan: extraction eps [default max_eps].")  # fmt: skip
@click.option("--pca", type=click.IntRange(min=1), default=None, help="Reduce to K dimensions (PCA) first.")
@click.option("--engine", type=click.Choice(ENGINES), default=DEFAULTS.engine, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS.precision, show_default=True,
              help="float64 reproduces scikit-learn exactly; float32 is faster and approximate.")  # fmt: skip
@click.option("--block-size", default=DEFAULTS.block_size, show_default=True, type=click.IntRange(min=8),
              help="Largest tile of the distance matrix; smaller when the memory budget needs it.")  # fmt: skip
@click.option("--memory-budget-mb", default=DEFAULTS.memory_budget_mb, show_default=True, type=click.FloatRange(min=0),
              help="Memory OPTICS may use beyond the loaded signatures: working copies, tiles, the radius graph "
              "or the dense matrix. Over it, auto falls back to a slower engine; too small for the points: error.")  # fmt: skip
@click.option("--knn-k", default=DEFAULTS.knn_k, show_default=True, type=click.IntRange(min=1),
              help="Engine knn: neighbours per signature of the first query; rows that need more are queried "
              "again with twice as many, as far as the memory budget allows.")  # fmt: skip
@click.option("--approximate", is_flag=True,
              help="Engine knn (and auto): where a signature has more neighbours within max_eps than its list can "
              "hold, run on the truncated lists (recorded as exact: false in clusters.json) instead of refusing "
              "(knn) or falling back to the radius-graph engine (auto).")  # fmt: skip
@click.option("--plot", type=UserPath(dir_okay=False), default=None,
              help="Reachability plot PNG [default: reachability.png next to --out].")  # fmt: skip
def optics_cmd(signatures: Path, out: Path, method: str, min_samples: int, max_eps: float, xi: float, metric: str,
               cluster_method: str, eps: float | None, pca: int | None, engine: str, precision: str,
               block_size: int, memory_budget_mb: float, knn_k: int, approximate: bool,
               plot: Path | None) -> None:  # fmt: skip
    """Cluster SIGNATURES (a signatures.npz) and write clusters.csv (+ clusters.json, reachability.png).

    The default method is OPTICS equal to scikit-learn's OPTICS with the same parameters.
    """
    from cluster.clustering import cluster_signatures, write_clustering

    for note in _no_effect(method, engine, approximate):
        click.echo(f"warning: {note}", err=True)
    cfg = OpticsConfig(min_samples=min_samples, max_eps=max_eps, metric=metric, cluster_method=cluster_method, xi=xi,
                       eps=eps, engine=engine, precision=precision, block_size=block_size,
                       memory_budget_mb=memory_budget_mb, knn_k=knn_k, approximate=approximate)  # fmt: skip
    try:
        table, res = cluster_signatures(str(signatures), cfg, method=method, pca=pca,
                                        notify=lambda text: click.echo(f"note: {text}", err=True))
    except (ValueError, MemoryError) as e:
        raise click.ClickException(str(e)) from e
    plot = write_clustering(out, table, res, max_eps=max_eps, plot=plot)
    for warning in table.params.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    n_clusters = len(set(table.labels.tolist()) - {-1})
    click.echo(
        f"{out}: {len(table)} images, {n_clusters} clusters, {float((table.labels < 0).mean()):.1%} noise"
    )
    if plot is not None:
        click.echo(f"{plot}: reachability plot")
    if "engine" in table.params:  # which engine ran, exact or approximate, and why
        reason = table.params.get("reason")
        click.echo(f"engine {table.params['engine']}" + (f": {reason}" if reason else ""))


def _no_effect(method: str, engine: str, approximate: bool) -> list[str]:
    """Options the chosen method does not use: said on stderr, so that nobody reads a result as, e.g., approximate
    OPTICS on truncated lists when --approximate did nothing."""
    notes = []
    if approximate and (method != "optics" or engine not in ("knn", "auto")):
        used = f"--engine {engine}" if method == "optics" else f"--method {method}"
        notes.append(f"--approximate has no effect with {used}; it is for OPTICS on the knn engine (knn or auto).")
    if (method == "dbscan" and engine != "auto") or (method == "hdbscan" and engine in ("graph", "stream")):
        notes.append(f"--engine {engine} has no effect with --method {method}; "
                     f"{'DBSCAN runs scikit-learn' if method == 'dbscan' else 'HDBSCAN takes knn, dense or auto'}.")
    return notes


@cli.command("evaluate")
@click.argument("clusters", type=UserPath(exists=True, dir_okay=False))
@click.option(
    "--collection", "collection_dir", required=True, type=UserPath(file_okay=False)
)
@click.option("--json", "json_out", type=UserPath(dir_okay=False), default=None,
              help="Also write the figures as JSON here.")  # fmt: skip
@click.option("--ignore-unknown", is_flag=True,
              help="Leave out (with a warning) the rows of CLUSTERS whose uid is not in the collection, "
                   "instead of refusing them.")  # fmt: skip
def evaluate_cmd(clusters: Path, collection_dir: Path, json_out: Path | None, ignore_unknown: bool) -> None:
    """Quality of CLUSTERS (clusters.csv) against the collection's known connections.

    The JSON records the clusters file (path and sha256), so that `cluster report` can refuse a quality file
    of another clustering.
    """
    from cluster.clusters_file import ClustersFileError, file_sha256, read_clusters
    from cluster.quality import UnknownUidsError, evaluate, format_report, write_report
    from data.collection import CollectionError, load_collection

    try:
        table = read_clusters(clusters)
        sha = file_sha256(clusters)
        report = evaluate(table, load_collection(collection_dir), ignore_unknown=ignore_unknown)
    except UnknownUidsError as e:
        raise click.ClickException(f"{clusters}: {e}") from e
    except (ClustersFileError, CollectionError) as e:
        raise click.ClickException(str(e)) from e
    report.clusters_file, report.clusters_sha256 = str(clusters.resolve()), sha
    if report.uids_not_in_collection:
        left = report.uids_not_in_collection
        click.echo(f"warning: {clusters}: left out {len(left)} uid(s) that are not in the collection: "
                   + ", ".join(repr(u) for u in left[:20]) + (", ..." if len(left) > 20 else ""), err=True)
    for w in report.warnings:
        click.echo(f"warning: {clusters}: {w}", err=True)
    click.echo(format_report(report))
    if json_out:
        write_report(json_out, report)
        click.echo(f"{json_out}: written")


@contextmanager
def _sigint_recorded():
    """Ctrl-C raises KeyboardInterrupt as usual and is also recorded (the event yielded): where a library
    swallows the exception (numba compiling inside a ctypes callback prints it and goes on), the command
    still sees it. The previous handler is put back after."""
    caught = threading.Event()

    def handler(signum, frame):
        caught.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)


@cli.command("map")
@click.argument("signatures", type=UserPath(exists=True, dir_okay=False))
@click.option(
    "--collection", "collection_dir", required=True, type=UserPath(file_okay=False)
)
@click.option(
    "--clusters", "clusters_path", type=UserPath(exists=True, dir_okay=False), default=None
)
@click.option("--out", "out_dir", required=True, type=UserPath(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--n-neighbors", default=15, show_default=True, type=click.IntRange(min=2))
@click.option("--thumb-size", default=256, show_default=True, type=click.IntRange(min=16),
              help="Size of the collection's thumbnail cache the map shows (made where missing).")
@click.option("--thumb-cache", type=UserPath(file_okay=False), default=None,
              help="Keep the thumbnail cache in this folder [default: COLLECTION/.cache].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes making thumbnails [default: one per core].")
@click.option("--neighbours", type=UserPath(exists=True, dir_okay=False), default=None,
              help="Neighbour lists to lay out from [default: clusters.knn.npz beside --clusters, if it fits].")
def map_cmd(signatures: Path, collection_dir: Path, clusters_path: Path | None, out_dir: Path, seed: int,
            n_neighbors: int, thumb_size: int, thumb_cache: Path | None, workers: int | None,
            neighbours: Path | None) -> None:  # fmt: skip
    """UMAP of SIGNATURES to 2-D: coords.csv, map.png and an interactive map.html (offline, WebGL)."""
    from cluster.clusters_file import ClustersFileError
    from cluster.mapping import MapConfig, make_map
    from data.collection import CollectionError
    from data.parallel import WorkerDiedError

    cfg = MapConfig(seed=seed, n_neighbors=n_neighbors, thumb_size=thumb_size, thumb_cache=thumb_cache,
                    workers=workers, neighbours=neighbours)  # fmt: skip
    try:
        with _sigint_recorded() as caught:
            result = make_map(signatures, collection_dir, out_dir, clusters_path=clusters_path, cfg=cfg,
                              interrupted=caught.is_set)  # fmt: skip
    except (ValueError, ClustersFileError, CollectionError, WorkerDiedError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written (an older map in --out is kept); run the command again",
                   err=True)  # fmt: skip
        sys.exit(130)
    for uid, why in result.unreadable:
        click.echo(f"warning: image {uid}: {why}; shown without thumbnail", err=True)
    for note in result.warnings:
        click.echo(f"warning: {note}", err=True)
    click.echo(f"layout: {result.neighbours}", err=True)
    click.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()), err=True)
    click.echo(f"{out_dir}: map.html, map.png, coords.csv; {result.n_thumbs} thumbnails in the collection's cache")


@cli.command("report")
@click.option(
    "--collection", "collection_dir", required=True, type=UserPath(exists=True, file_okay=False)
)
@click.option("--clusters", "clusters_path", required=True,
              type=UserPath(exists=True, dir_okay=False))  # fmt: skip
@click.option("--run", "run_dir", type=UserPath(exists=True, file_okay=False), default=None,
              help="A training run directory (eval.json, curves.png) for retrieval before/after.")  # fmt: skip
@click.option("--quality", type=UserPath(exists=True, dir_okay=False), default=None,
              help="The JSON written by `cluster evaluate --json`.")  # fmt: skip
@click.option("--map", "map_dir", type=UserPath(exists=True, file_okay=False), default=None,
              help="The folder written by `cluster map`.")  # fmt: skip
@click.option("--reachability", type=UserPath(exists=True, dir_okay=False), default=None,
              help="Reachability PNG [default: reachability.png next to --clusters, if present].")  # fmt: skip
@click.option("--top", default=12, show_default=True, type=click.IntRange(min=1), help="Clusters in the gallery.")
@click.option("--out", required=True, type=UserPath(dir_okay=False))
def report_cmd(collection_dir: Path, clusters_path: Path, run_dir: Path | None, quality: Path | None,
               map_dir: Path | None, reachability: Path | None, top: int, out: Path) -> None:  # fmt: skip
    """One self-contained HTML page: retrieval before/after, curves, reachability, map, top clusters."""
    from cluster.clusters_file import ClustersFileError, recorded_plot
    from cluster.report import ReportError, ReportInputs, write_report
    from data.collection import CollectionError

    if reachability is None:  # the plot clusters.json names (older files: reachability.png beside it)
        plot = recorded_plot(clusters_path)
        reachability = plot if plot is not None and plot.is_file() else None
    inputs = ReportInputs(collection=collection_dir, clusters=clusters_path, run_dir=run_dir, quality=quality,
                          map_dir=map_dir, reachability=reachability, top_clusters=top)  # fmt: skip
    try:
        write_report(inputs, out, warn=lambda w: click.echo(f"warning: {w}", err=True))
    except (ClustersFileError, CollectionError, ReportError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{out}: written")


cli.add_command(annotate)
cli.add_command(accept)


if __name__ == "__main__":
    cli()
