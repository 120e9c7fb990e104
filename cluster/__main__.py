"""`python -m cluster COMMAND`: optics, evaluate, map, export (this module), annotate and accept (the web app).

Thin: each command parses options and calls library functions that the tests call too.
"""

from __future__ import annotations

import importlib
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import click

from cluster.config import (
    AUTO,
    CLUSTER_METHODS,
    COMMAND_EPS,
    COMMAND_MAX_EPS,
    ENGINES,
    METHODS,
    METRICS,
    PRECISIONS,
    OpticsConfig,
)
from cluster.config import COMMAND_DEFAULTS as DEFAULTS
from cluster.map_data import APP_ADDRESS
from data.gc_policy import for_this_process, owns_process, paused_collection
from data.interrupt import ctrl_c_says
from data.paths import UserPath


class _LazyGroup(click.Group):
    """Commands of other modules, imported when asked for: `cluster optics` need not import the annotation app
    (Flask and its routes, ~0.1 s of a 2-3 s command)."""

    LAZY = {"annotate": "cluster.annotate.cli:annotate", "accept": "cluster.accept:accept"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY and name not in self.commands:
            module, attr = self.LAZY[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup)
def cli() -> None:
    """Cluster signatures, judge the clusters, map the collection, annotate and accept."""


class Threshold(click.ParamType):
    """A distance (a number, inf) or "auto" (derived from the signatures: cluster.settings_check)."""

    name = "FLOAT|auto"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 (click's interface)
        if isinstance(value, float) or value == AUTO:
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor {AUTO!r}.", param, ctx)


@cli.command("optics")
@click.argument("signatures", type=UserPath(exists=True, dir_okay=False))
@click.option(
    "--out", type=UserPath(dir_okay=False), required=True, help="clusters.csv to write."
)
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True)
@click.option("--min-samples", default=DEFAULTS.min_samples, show_default=True, type=click.IntRange(min=2))
@click.option("--max-eps", default=COMMAND_MAX_EPS, show_default=True, type=Threshold(),
              help="A cosine (or euclidean) distance, inf for no limit, or auto: 1.5 x the 90th percentile of each "
              "signature's distance to its min_samples-th neighbour (printed on stderr).")  # fmt: skip
@click.option("--xi", default=DEFAULTS.xi, show_default=True, type=click.FloatRange(0, 1))
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULTS.metric, show_default=True)
@click.option("--cluster-method", type=click.Choice(CLUSTER_METHODS), default=DEFAULTS.cluster_method,
              show_default=True)  # fmt: skip
@click.option("--eps", type=Threshold(), default=None, help=f"dbscan: eps [default {COMMAND_EPS}: the 25th percentile "
              "of the neighbour distances]; optics --cluster-method dbscan: extraction eps [default auto with "
              "--max-eps auto, else max_eps].")  # fmt: skip
@click.option("--centre/--no-centre", default=None,
              help="Subtract the mean signature and re-normalise the rows before clustering [default: centre, "
              "unless an explicit --max-eps (OPTICS) or --eps (DBSCAN) is given: such a value is on the raw "
              "signatures' scale].")  # fmt: skip
@click.option("--collection", "collection_dir", type=UserPath(file_okay=False), default=None,
              help="The collection whose connections constrain the clusters (--constraints).")
@click.option("--constraints/--no-constraints", default=None,
              help="Apply the collection's decisions: POSITIVE/DUPLICATE groups are not split, NEGATIVE pairs "
              "never share a cluster [default: on when --collection has such connections].")  # fmt: skip
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
def optics_cmd(signatures: Path, out: Path, method: str, min_samples: int, max_eps: float | str, xi: float,
               metric: str, cluster_method: str, eps: float | str | None, centre: bool | None,
               collection_dir: Path | None, constraints: bool | None, pca: int | None, engine: str, precision: str,
               block_size: int, memory_budget_mb: float, knn_k: int, approximate: bool,
               plot: Path | None) -> None:  # fmt: skip
    """Cluster SIGNATURES (a signatures.npz) and write clusters.csv (+ clusters.json, reachability.png).

    The default method is OPTICS equal to scikit-learn's OPTICS with the same parameters (on the centred
    signatures, with max_eps from their own neighbour distances, unless told otherwise).
    """
    nothing = f"nothing was written ({out} and the files beside it are as they were); run the command again"
    with ctrl_c_says(nothing):  # everything before the first file is written
        table, res = _cluster(signatures, out, method=method, cfg_args=dict(
            min_samples=min_samples, metric=metric, cluster_method=cluster_method, xi=xi, engine=engine,
            precision=precision, block_size=block_size, memory_budget_mb=memory_budget_mb, knn_k=knn_k,
            approximate=approximate), max_eps=max_eps, eps=eps, centre=centre, collection_dir=collection_dir,
            constraints=constraints, pca=pca)  # fmt: skip
    from cluster.clustering import write_clustering

    ran_max_eps = float(table.params["max_eps"])  # the value chosen by auto, or the one given ("inf" reads as inf)
    with ctrl_c_says(f"while writing {out}: the older clustering there is removed and the new one may be "
                      "incomplete (never mixed with the older one's files); run the command again"):
        plot = write_clustering(out, table, res, max_eps=ran_max_eps, plot=plot)
    for warning in table.params.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    n_clusters = len(set(table.labels.tolist()) - {-1})
    click.echo(
        f"{out}: {len(table)} images, {n_clusters} cluster{'s' if n_clusters != 1 else ''}, "
        f"{float((table.labels < 0).mean()):.1%} noise"
    )
    if "constraints" in table.params:
        click.echo(_constraints_line(table.params["constraints"]))
    if plot is not None:
        click.echo(f"{plot}: reachability plot")
    if "engine" in table.params:  # which engine ran, exact or approximate, and why
        reason = table.params.get("reason")
        click.echo(f"engine {table.params['engine']}" + (f": {reason}" if reason else ""))


def _cluster(signatures: Path, out: Path, *, method: str, cfg_args: dict, max_eps: float | str,
             eps: float | str | None, centre: bool | None, collection_dir: Path | None, constraints: bool | None,
             pca: int | None):
    """Everything `optics` does before it writes a file (imports, checks, the collection's constraints, the
    clustering): (ClusterTable, OpticsResult or None). Errors as click's one-line messages."""
    with paused_collection():  # jax, scikit-learn, matplotlib: data.gc_policy says why
        from cluster.clustering import cluster_signatures
        from cluster.clusters_file import ClustersFileError, check_out
    if owns_process():  # a process-wide JAX setting: not inside the tests' or a notebook's process
        from data.compile_cache import enable_compilation_cache

        enable_compilation_cache(min_compile_seconds=0.0)
    try:
        check_out(out)
    except ClustersFileError as e:
        raise click.ClickException(str(e)) from e
    for note in _no_effect(method, cfg_args["engine"], cfg_args["approximate"]):
        click.echo(f"warning: {note}", err=True)
    choice = _thresholds(method, cfg_args["cluster_method"], max_eps, eps, centre)
    known, collection = _constraints(collection_dir, constraints)
    cfg = OpticsConfig(max_eps=choice["max_eps"], eps=choice["eps"], **cfg_args)
    try:
        return cluster_signatures(str(signatures), cfg, method=method, pca=pca,
                                  notify=lambda text: click.echo(f"note: {text}", err=True),
                                  centre=choice["centre"], max_eps_auto=choice["max_eps_auto"],
                                  eps_auto=choice["eps_auto"], constraints=known,
                                  check_uids=lambda uids: _refuse_other_collection(uids, collection))  # fmt: skip
    except (ValueError, MemoryError) as e:
        raise click.ClickException(str(e)) from e


def _thresholds(method: str, cluster_method: str, max_eps: float | str, eps: float | str | None,
                centre: bool | None) -> dict:
    """What --max-eps, --eps and --centre mean together (their help): values for OpticsConfig and the autos."""
    max_eps_auto = max_eps == AUTO
    extraction = method == "optics" and cluster_method == "dbscan"
    eps_auto = eps == AUTO or (eps is None and (method == "dbscan" or (extraction and max_eps_auto)))
    explicit = (method == "optics" and not max_eps_auto) or (
        (method == "dbscan" or extraction) and eps is not None and not eps_auto)
    return {"max_eps": DEFAULTS.max_eps if max_eps_auto else max_eps, "max_eps_auto": max_eps_auto,
            "eps": None if eps_auto else eps, "eps_auto": eps_auto,
            "centre": (not explicit) if centre is None else centre}


def _constraints(collection_dir: Path | None, constraints: bool | None) -> tuple[tuple | None, object]:
    """The collection's must-link groups and cannot-link pairs, or None (--no-constraints, or none known), and the
    collection (None without --collection, or with --no-constraints)."""
    if constraints is False:
        return None, None
    if collection_dir is None:
        if constraints:
            raise click.ClickException("--constraints needs --collection DIR: the collection whose connections "
                                       "say which images belong together and which do not.")
        return None, None
    from cluster.constraints import collection_constraints
    from data.collection import CollectionError, load_collection

    try:
        collection = load_collection(collection_dir, quiet=True)
    except CollectionError as e:
        raise click.ClickException(str(e)) from e
    groups, pairs = collection_constraints(collection)
    return ((groups, pairs) if constraints or groups or pairs else None), collection


def _refuse_other_collection(uids: list[str], collection) -> None:
    """Signatures of another collection would be clustered with none of its decisions applied, silently."""
    if collection is None:
        return
    from cluster.quality import unknown_uids_message

    unknown = [u for u in uids if u not in collection]
    if unknown:
        raise click.ClickException(unknown_uids_message(
            unknown, collection, "the collection's connections cannot constrain them and nothing was written"))


def _constraints_line(r: dict) -> str:
    """One line of what the constraints did (clusters.json keeps the same counts)."""
    return (f"constraints: {r['cannot_link_pairs']} cannot-link pairs ({r['cannot_link_violated']} inside one "
            f"cluster: {r['clusters_split']} clusters split, {r['rows_to_noise']} images to noise), "
            f"{r['must_link_groups']} must-link groups ({r['groups_split']} split: {r['rows_moved']} images moved, "
            f"{r['rows_kept_apart']} kept apart by a cannot-link pair, "
            f"{r.get('groups_reformed', 0)} made a cluster again after the cuts)")


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


def _app_address(text: str) -> str:
    """An http(s) address for the map's links to the annotation page (a trailing / added), or a usage error."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise click.BadParameter(f"{text!r} is not an http address such as http://127.0.0.1:8765/",
                                 param_hint="--app-address")
    return text.strip().rstrip("/") + "/"


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
@click.option("--app-address", default=APP_ADDRESS, show_default=True,
              help="Where the annotation app (`cluster annotate`) will listen: a map opened from its folder links "
                   "a clicked cluster and its lasso's selections there.")
def map_cmd(signatures: Path, collection_dir: Path, clusters_path: Path | None, out_dir: Path, seed: int,
            n_neighbors: int, thumb_size: int, thumb_cache: Path | None, workers: int | None,
            neighbours: Path | None, app_address: str) -> None:  # fmt: skip
    """UMAP of SIGNATURES to 2-D: coords.csv, map.png and an interactive map.html (offline, WebGL)."""
    from cluster.clusters_file import ClustersFileError
    from cluster.mapping import MapConfig, make_map
    from data.collection import CollectionError
    from data.parallel import WorkerDiedError

    cfg = MapConfig(seed=seed, n_neighbors=n_neighbors, thumb_size=thumb_size, thumb_cache=thumb_cache,
                    workers=workers, neighbours=neighbours, app_address=_app_address(app_address))  # fmt: skip
    try:
        with ctrl_c_says("nothing was written (an older map in --out is kept); run the command again"), \
                _sigint_recorded() as caught:
            result = make_map(signatures, collection_dir, out_dir, clusters_path=clusters_path, cfg=cfg,
                              interrupted=caught.is_set)  # fmt: skip
    except (ValueError, ClustersFileError, CollectionError, WorkerDiedError) as e:
        raise click.ClickException(str(e)) from e
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


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from cluster.export import FORMATS

    chosen = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise click.BadParameter(f"{value!r}: give csv, iiif or csv,iiif.")
    return chosen


def _base_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r}: give the http(s) address where the iiif folder will be served.")
    return value


@cli.command("export")
@click.argument("collection_dir", type=UserPath(exists=True, file_okay=False))
@click.option("--clusters", "clusters_path", required=True, type=UserPath(exists=True, dir_okay=False),
              help="The clusters.csv the decisions were made on (`cluster optics`).")
@click.option("--annotations", type=UserPath(exists=True, dir_okay=False), default=None,
              help="The decision log [default: COLLECTION_DIR/annotations.jsonl].")
@click.option("--proposals", type=UserPath(dir_okay=False), default=None,
              help="The map's proposals [default: proposals.jsonl beside the decision log].")
@click.option("--out", "out_dir", required=True, type=UserPath(file_okay=False),
              help="Folder to write (a new one, or an older export's: it is replaced whole).")
@click.option("--format", "formats", default="csv,iiif", show_default=True, callback=_formats,
              help="csv (cluster_members.csv, decisions.csv, decision_connections.csv), iiif (iiif/), or both.")
@click.option("--base-url", default=None, callback=_base_url,
              help="The http(s) address where OUT/iiif/ will be served: the IIIF ids start with it "
                   "[default: ids relative to the iiif folder, for local use].")
@click.option("--iiif-image-api", "image_api", type=click.Choice(("auto", "2", "3")), default="auto",
              show_default=True, help="Version of the images' IIIF image services (auto: as each URL suggests).")
def export_cmd(collection_dir: Path, clusters_path: Path, annotations: Path | None, proposals: Path | None,
               out_dir: Path, formats: tuple[str, ...], base_url: str | None, image_api: str) -> None:
    """Export the clusters and the decisions in force as CSV with the collection's metadata, and the confirmed
    pattern groups as IIIF Presentation 3.0 manifests (docs/annotation.md, "export")."""
    from cluster.annotations import AnnotationError
    from cluster.clusters_file import ClustersFileError
    from cluster.export import ExportError, load_export, write_export
    from data.collection import CollectionError

    try:
        with ctrl_c_says(f"{out_dir} holds the older export (if there was one) or the whole new one, never a mix "
                         "(the folder is replaced in one step); run the same command again."):
            data = load_export(collection_dir, clusters_path, annotations=annotations, proposals=proposals)
            result = write_export(data, out_dir, formats=formats, base_url=base_url, service_version=image_api)
    except (ExportError, CollectionError, ClustersFileError, AnnotationError) as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"{e.filename or out_dir}: cannot write the export ({e.strerror or e}); pass "
                                   "--out a folder you can write.") from e
    for note in result.warnings:
        click.echo(f"warning: {note}", err=True)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    click.echo(f"{out_dir}: {', '.join(result.files)} ({counts})")


def main() -> None:
    """The command line as its own process (`python -m cluster`, the vsig-cluster script): data.gc_policy."""
    for_this_process()
    cli()


if __name__ == "__main__":
    main()
