"""The map of a collection: a UMAP layout of the signatures, a static PNG and an interactive viewer.

`make_map` writes into MAP_DIR:
- `coords.csv`: uid,x,y,cluster,group (group = pattern group name or empty);
- `map.png`: points coloured by cluster (noise grey), images of known pattern groups outlined in black
  and their POSITIVE links drawn as thin lines;
- `map.html` with `lib/` (the viewer: cluster/viewer/, and regl-scatterplot, a WebGL scatter-plot library
  vendored in cluster/viewer/vendor/) and `data/` (the points and the metadata columns, `cluster.map_data`).
  It opens from the folder with no server and no network, and is also served by the annotation app
  (`cluster annotate --map MAP_DIR`), which replaces `lib/app.js` with its own routes.

Thumbnails are not copied into the map: the viewer loads them from the collection's thumbnail cache
(`data.thumbs`, made here in parallel where missing or stale), by a path relative to the map folder.

The layout is UMAP on nearest-neighbour lists (`cluster.layout`): those `cluster optics` kept beside
clusters.csv (clusters.knn.npz) when they belong to these signatures, else an exact search on the device.

An image that cannot be read is reported by uid (returned in `MapResult.unreadable`) and shown without a
thumbnail; it is never replaced by a blank picture. Signatures of another collection (uids that are not in
images.csv) are refused before any work, like `cluster evaluate` refuses such clusters.

The folder is written whole (`data.atomic.atomic_dir`): built in a scratch folder beside it and swapped in,
so a map killed while it overwrites an older one leaves the older map or the new one, and a map that fails
leaves no folder. Because the whole folder is replaced, an existing MAP_DIR must hold nothing but a map's
files (`MAP_FILES`; `thumbs` is what maps made before the cache held).
"""

from __future__ import annotations

import csv
import functools
import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from cluster.clusters_file import file_sha256, read_clusters, sidecar_path
from cluster.layout import LayoutConfig, embed_2d
from cluster.map_data import APP_ADDRESS, MapPoints, write_map_data
from cluster.neighbours_file import neighbours_path, read_neighbours
from cluster.plots import map_plot
from data.atomic import atomic_dir, atomic_write, atomic_write_text
from data.collection import IMAGE_COLUMNS, POSITIVE, Collection, load_collection
from data.graph import pattern_groups
from data.signatures import Signatures, load_signatures
from data.thumbs import DEFAULT_SIZE, ThumbCache, thumb_name

MAP_FILES = frozenset({"coords.csv", "map.png", "map.html", "lib", "data", "thumbs"})  # all that a map folder holds
VIEWER_FILES = ("mapdata.js", "map.js", "map.css")  # cluster/viewer/ -> MAP_DIR/lib/
LIBRARY = "vendor/regl-scatterplot.min.js"
LIBRARY_LICENSES = "vendor/LICENSES.txt"
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})  # what file browsers leave in a folder


def _ours(name: str) -> bool:
    """A map's file, a temp file of a killed writer of one (`.coords.PID@HOST.tmp.csv`) or a file browser's."""
    return name in MAP_FILES or name in _SYSTEM_FILES or (name.startswith(".") and ".tmp" in name)


@dataclass(frozen=True)
class MapConfig(LayoutConfig):
    """The layout's settings (`LayoutConfig`: seed, n_neighbors, min_dist, metric) and the map's own."""

    thumb_size: int = DEFAULT_SIZE  # the collection's thumbnail cache at this size (data.thumbs)
    thumb_cache: Path | None = None  # another folder for the cache (a read-only collection)
    workers: int | None = None  # thumbnail worker processes (default: data.parallel's)
    neighbours: Path | None = None  # a clusters.knn.npz to lay out from (default: the one beside --clusters)
    app_address: str = APP_ADDRESS  # the annotation app a map opened from its folder links to (`--app-address`)
    progress: bool = True

    def layout(self) -> LayoutConfig:
        return LayoutConfig(seed=self.seed, n_neighbors=self.n_neighbors, min_dist=self.min_dist, metric=self.metric)


@dataclass
class MapResult:
    coords: np.ndarray  # (n, 2)
    uids: list[str]
    labels: np.ndarray
    n_thumbs: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    neighbours: str = ""  # where the layout's neighbour lists came from
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage (layout, thumbnails, files)
    warnings: list[str] = field(default_factory=list)


def write_coords(path: Path, uids, coords, labels, groups: dict[str, str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["uid", "x", "y", "cluster", "group"])
            for u, (x, y), lab in zip(uids, coords.tolist(), labels.tolist(), strict=True):
                w.writerow([u, repr(x), repr(y), lab, groups.get(u, "")])

    atomic_write(path, write)


def _labels(clusters_path: str | Path | None, signatures_path: str | Path, uids: list[str]) -> np.ndarray:
    labels = np.full(len(uids), -1, dtype=np.int64)
    if clusters_path is None:
        return labels
    table = read_clusters(clusters_path)
    lab_of = dict(zip(table.uids, table.labels.tolist(), strict=True))
    missing = [u for u in uids if u not in lab_of]
    if missing:
        raise ValueError(
            f"{clusters_path}: uid {missing[0]!r} (and {len(missing) - 1} more) of {signatures_path} is not in it; "
            "make clusters.csv from the same signatures file."
        )
    return np.array([lab_of[u] for u in uids], dtype=np.int64)


def _neighbours(sha: Callable[[], str], n: int, clusters_path: str | Path | None, cfg: MapConfig
                ) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:  # fmt: skip
    """The lists to lay out from, and a line saying where they come from (or why a search runs)."""
    given = cfg.neighbours
    path = given or (neighbours_path(clusters_path) if clusters_path is not None else None)
    if path is None:
        return None, "neighbours searched on the device (no clusters.knn.npz given)"
    if not Path(path).exists() and given is None:
        return None, f"neighbours searched on the device ({path.name} not found beside the clusters)"
    got = read_neighbours(path, signatures_sha256=sha(), n=n)
    if isinstance(got, str):
        if given is not None:
            raise ValueError(f"{got}; pass --neighbours the clusters.knn.npz of these signatures, or leave it out.")
        return None, f"neighbours searched on the device ({got})"
    if got[0].shape[1] < min(cfg.n_neighbors, n - 1) - 1:
        return None, f"neighbours searched on the device ({path} holds {got[0].shape[1]} per image)"
    return got, f"neighbours from {path}"


def _clusters_note(clusters_path: str | Path | None, signatures_path: str | Path, sha: Callable[[], str]
                   ) -> str | None:  # fmt: skip
    """A warning when clusters.json says its clusters come from other signatures (same uids, another model)."""
    if clusters_path is None:
        return None
    try:
        recorded = json.loads(sidecar_path(clusters_path).read_text(encoding="utf-8")).get("signatures_sha256")
    except (OSError, ValueError, AttributeError):
        return None  # an older clusters.csv without its JSON: nothing to compare
    if not recorded or recorded == sha():
        return None
    return (f"{clusters_path} was made from other signatures than {signatures_path} (clusters.json records sha256 "
            f"{str(recorded)[:12]}..., the file is {sha()[:12]}...): the map colours the points by those clusters; "
            f"make clusters.csv from {signatures_path} with `python -m cluster optics` to see its own.")


def _links(collection: Collection, uids: list[str]) -> list[tuple[int, int]]:
    index = {u: i for i, u in enumerate(uids)}
    return sorted(
        {
            (index[c.a], index[c.b]) if index[c.a] < index[c.b] else (index[c.b], index[c.a])
            for c in collection.connections
            if c.type == POSITIVE and c.a in index and c.b in index and c.a != c.b
        }
    )


def _metadata(collection: Collection, uids: list[str]) -> dict[str, list[str]]:
    """images.csv's metadata columns (all but uid, path, url), one string per point."""
    names: dict[str, None] = {}
    for u in uids:
        names.update(dict.fromkeys(k for k in collection.record(u).meta if k not in IMAGE_COLUMNS))
    return {k: [collection.record(u).meta.get(k, "") for u in uids] for k in names}


def _thumbnails(collection: Collection, uids: list[str], cfg: MapConfig) -> tuple[ThumbCache, dict[str, str],
                                                                                  list[tuple[str, str]]]:  # fmt: skip
    cache = ThumbCache.for_collection(collection, cfg.thumb_size, cfg.thumb_cache)
    report = cache.ensure(uids, workers=cfg.workers, progress=cfg.progress)
    bad = dict(report.unreadable)
    return cache, {u: thumb_name(u) for u in uids if u not in bad}, report.unreadable


def install_viewer(folder: Path, title: str) -> None:
    """map.html and lib/ (the viewer, the vendored library with its licences, app.js saying: no app)."""
    lib = folder / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    viewer = resources.files("cluster") / "viewer"
    for name in (*VIEWER_FILES, LIBRARY, LIBRARY_LICENSES):
        with resources.as_file(viewer / name) as src:
            shutil.copyfile(src, lib / Path(name).name)
    atomic_write_text(lib / "app.js", "window.MAPAPP = null;  // opened from a folder: no annotation app\n")
    page = (viewer / "map.html").read_text(encoding="utf-8")
    atomic_write_text(folder / "map.html", page.replace("__TITLE__", html.escape(title)))


def make_map(
    signatures_path: str | Path,
    collection_dir: str | Path,
    out_dir: str | Path,
    *,
    clusters_path: str | Path | None = None,
    cfg: MapConfig = MapConfig(),
    interrupted: Callable[[], bool] = lambda: False,
) -> MapResult:
    """Everything `python -m cluster map` writes (see the module docstring).

    `interrupted()` is asked between stages and before the new folder is swapped in: a Ctrl-C that a library
    swallowed (numba compiles in a ctypes callback, where a KeyboardInterrupt is only printed) still stops
    the map with KeyboardInterrupt, and the older map stays.
    """
    out_dir = Path(out_dir).resolve()  # `--out .` must name the folder, not "" (atomic_dir renames it)
    check_out_dir(out_dir)
    sig = load_signatures(signatures_path)
    if len(sig) == 0:
        raise ValueError(f"{signatures_path}: no signatures to map.")
    collection = load_collection(collection_dir)
    check_signature_uids(signatures_path, sig.uids, collection)
    uids = sig.uids
    labels = _labels(clusters_path, signatures_path, uids)
    # hashed only when a clusters.json or a neighbour file is there to compare with (GBs at archive scale)
    sha = functools.cache(lambda: file_sha256(signatures_path))
    notes = [note] if (note := _clusters_note(clusters_path, signatures_path, sha)) else []
    neighbours, source = _neighbours(sha, len(uids), clusters_path, cfg)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    coords = embed_2d(_vectors(sig), cfg.layout(), neighbours)
    seconds["layout"] = time.perf_counter() - t
    _check(interrupted)
    groups = pattern_groups(collection)
    links = _links(collection, uids)
    t = time.perf_counter()
    cache, names, bad = _thumbnails(collection, uids, cfg)
    seconds["thumbnails"] = time.perf_counter() - t
    _check(interrupted)
    t = time.perf_counter()
    grouped = np.array([u in groups for u in uids], dtype=bool)
    title = f"Map of {collection.root.name}"

    def build(folder: Path) -> None:
        write_coords(folder / "coords.csv", uids, coords, labels, groups)
        map_plot(folder / "map.png", coords, labels, grouped, links)
        write_map_data(folder, MapPoints(uids=uids, coords=coords, labels=labels, groups=groups, links=links),
                       _metadata(collection, uids), thumbs_dir=cache.folder.resolve(), thumb_names=names,
                       unreadable=dict(bad), title=title, final=out_dir, app_address=cfg.app_address)  # fmt: skip
        install_viewer(folder, title)
        _check(interrupted)  # the last moment to keep the older map

    atomic_dir(out_dir, build)
    seconds["files"] = time.perf_counter() - t
    return MapResult(coords=coords, uids=uids, labels=labels, n_thumbs=len(names), unreadable=bad, neighbours=source,
                     seconds=seconds, warnings=notes)  # fmt: skip


def _check(interrupted: Callable[[], bool]) -> None:
    if interrupted():
        raise KeyboardInterrupt


def _vectors(sig: Signatures):
    """The rows as the layout reads them: the memory-mapped store itself (read block by block), not a copy."""
    return sig.vectors


def check_out_dir(out_dir: Path) -> None:
    """The map replaces its whole folder: refuse one that holds anything else (a clusters.csv, a report)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: not a folder; pass --out a folder for the map.")
    other = sorted(p.name for p in out_dir.iterdir() if not _ours(p.name))
    if other:
        raise ValueError(
            f"{out_dir}: holds other files than a map's ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''}); "
            f"the map replaces its whole folder, so it writes only into a new folder or an older map's. "
            f"Pass --out a new folder (e.g. {out_dir / 'map'})."
        )


def check_signature_uids(signatures_path: str | Path, uids: list[str], collection: Collection) -> None:
    """Signatures of another collection would give a map of points without thumbnails or metadata: refuse."""
    unknown = [u for u in uids if u not in collection]
    if unknown:
        raise ValueError(
            f"{signatures_path}: {len(unknown)} of its {len(uids)} uids are not in {collection.images_file} "
            f"(first: {unknown[0]!r}): the signatures were made from another collection. Pass --collection the "
            f"collection they were made from, or make signatures of this one with `python -m model embed`."
        )
