"""`python -m cluster annotate`: serve the annotation page on the expert's machine."""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path

import click
from werkzeug.serving import make_server

from cluster.annotate.app import WILDCARD_HOSTS, AnnotateSetupError, create_app
from cluster.annotate.map_routes import MapSetupError
from cluster.annotate.search_routes import SearchSetupError
from cluster.annotations import AnnotationError
from cluster.clusters_file import ClustersFileError
from data.collection import CollectionError
from data.paths import UserPath


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "expert"


@click.command("annotate")
@click.option("--collection", "collection_dir", required=True, type=UserPath(file_okay=False),
              help="Collection folder (images.csv, connections.csv); decisions go to its annotations.jsonl.")
@click.option("--clusters", "clusters_path", required=True, type=UserPath(dir_okay=False),
              help="clusters.csv written by `python -m cluster optics`.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep the loopback default unless you know who can reach this machine.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--annotator", default=None, help="Name stored with each decision [default: your login name].")
@click.option("--map", "map_dir", type=UserPath(exists=True, file_okay=False), default=None,
              help="A folder written by `cluster map`: served at /map/, its lasso queues proposals here.")
@click.option("--index", "index_dir", type=UserPath(exists=True, file_okay=False), default=None,
              help="A search index (`python -m model index`): the page gets 'more like this', a search by a "
                   "detail drawn on the enlarged picture, and 'add to this cluster'.")
@click.option("--index-weights", default=None,
              help="The weights the index was built with, when they moved [default: the path it records].")
@click.option("--signatures", "signatures_path", type=UserPath(exists=True, dir_okay=False), default=None,
              help="The signatures the clustering used, for each card's nearest-member distance [default: the "
                   "file clusters.json names].")
@click.option("--independent", is_flag=True, default=False,
              help="Judge every cluster yourself, whatever other annotators decided (their verdicts are compared "
                   "in the page's disagreements view and by `cluster accept --policy`); undo cancels only your own "
                   "decisions. Without it a cluster anyone decided is done (experts share the work).")
def annotate(collection_dir: Path, clusters_path: Path, host: str, port: int, annotator: str | None,
             map_dir: Path | None, index_dir: Path | None, index_weights: str | None,
             signatures_path: Path | None, independent: bool) -> None:  # fmt: skip
    """Review proposed clusters in the browser; every decision is appended to DIR/annotations.jsonl."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if index_weights is not None and index_dir is None:
        raise click.UsageError("--index-weights goes with --index INDEX.")
    if index_weights not in (None, "random"):
        index_weights = str(Path(index_weights).expanduser())
    try:
        app = create_app(collection_dir, clusters_path, annotator or _default_annotator(), bound_host=host,
                         map_dir=map_dir, index_dir=index_dir, index_weights=index_weights,
                         signatures_path=signatures_path, independent=independent)  # fmt: skip
    except (CollectionError, ClustersFileError, AnnotationError, AnnotateSetupError, MapSetupError,
            SearchSetupError) as e:
        raise click.ClickException(str(e)) from e
    session = app.extensions["annotation_session"]
    for note in session.notes():
        click.echo(f"warning: {note}", err=True)
    if session.explain.nearest.note:
        click.echo(f"warning: {session.explain.nearest.note}", err=True)
    if host in WILDCARD_HOSTS:
        click.echo(f"warning: listening on {host or 'all addresses'}: anyone who can reach this machine can "
                   "annotate and see the images.", err=True)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror}); try another --port.") from e
    shown = f"[{host}]" if ":" in host else host
    p = session.progress()
    click.echo(f"{p['total']} clusters ({p['done']} done, {p['left']} left); decisions -> {session.store.path}")
    if index_dir is not None:
        search = app.extensions["annotation_search"]
        click.echo(f"Search: {search.service.index.count} images indexed in {index_dir}")
        problem = search.weights_problem()
        if problem:
            click.echo(f"warning: {problem}", err=True)
    click.echo(f"Open http://{shown}:{server.server_port}/  (Ctrl-C to stop)", err=False)
    if map_dir is not None:
        click.echo(f"The map: http://{shown}:{server.server_port}/map/", err=False)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    annotate()
