"""The map served by the annotation app (`cluster annotate --map MAP_DIR`): the same viewer as the folder,
with the app's own routes, so that a lasso's selection is queued as a proposal in one click.

Routes
- `GET /map/`                  the map page (MAP_DIR/map.html);
- `GET /map/lib/<name>`        the viewer's files; `app.js` is the app's: it tells the page where thumbnails
                               and proposals are (`window.MAPAPP`), where the folder's says "no app";
- `GET /map/data/<name>`       the map's data files (points.js, col-<j>.js);
- `GET /thumbs/<name>`         a thumbnail of the cache the map was made with, by the file name the page knows.

As the app's other routes, no part of a request is used as a path: viewer and data files are taken from
fixed names (`col-<j>.js` rebuilt from the integer j), thumbnails are looked up by uid (the name -> uid table
of the collection's uids, built on the first request) and made into the cache when missing.

regl (the WebGL layer of the vendored library) compiles its draw calls with `Function`, so the map's pages
are served with `'unsafe-eval'` in their Content-Security-Policy; the annotation page keeps the strict one.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from flask import Flask, Response, abort, send_file

from data.collection import Collection
from data.image import ImageReadError, jpeg_thumbnail
from data.thumbs import ThumbCache, ThumbCacheError, thumb_name

VIEWER = frozenset({"mapdata.js", "map.js", "map.css", "regl-scatterplot.min.js", "LICENSES.txt"})
MAP_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
           "script-src 'self' 'unsafe-eval'; connect-src 'self'")  # fmt: skip
APP_JS = """window.MAPAPP = {  // served by the annotation app (cluster/annotate/map_routes.py)
  thumbs: "/thumbs/",
  proposal: "/api/proposal",
  page: "/",
  open: body => "/#cluster=" + body.cluster,
};
"""
_COLUMN = re.compile(r"col-(\d{1,6})\.js")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".txt": "text/plain"}


class MapSetupError(ValueError):
    """The folder given with --map is not a map of this collection (the message says what to do)."""


def _cache_of(map_dir: Path, collection: Collection) -> ThumbCache:
    """The thumbnail cache the map was made with (its points.js names it relative to the map)."""
    points = map_dir / "data" / "points.js"
    try:
        text = points.read_text(encoding="utf-8")
        payload = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    except (OSError, ValueError) as e:
        raise MapSetupError(f"{points}: not readable ({e}); make the map again with `python -m cluster map`.") from None
    base = (payload.get("thumbs") or {}).get("base")
    folder = (map_dir / base).resolve() if base and not base.startswith("file:") else None
    size = int(folder.name.rsplit("-", 1)[1]) if folder and re.fullmatch(r"thumbs-\d+", folder.name) else 256
    return ThumbCache(collection, folder or ThumbCache.for_collection(collection, size).folder, size)


def check_map_dir(map_dir: Path) -> None:
    if not (map_dir / "map.html").is_file() or not (map_dir / "data" / "points.js").is_file():
        raise MapSetupError(f"{map_dir}: not a map folder (no map.html and data/points.js); make one with "
                            "`python -m cluster map SIGNATURES --collection C --out DIR`.")  # fmt: skip


def _file(path: Path) -> Response:
    if not path.is_file():
        abort(404, description=f"{path.name}: not in the map folder; make the map again.")
    resp = send_file(path, mimetype=_TYPES.get(path.suffix, "application/octet-stream"), max_age=0)
    resp.headers["Content-Security-Policy"] = MAP_CSP
    return resp


def add_map_routes(app: Flask, collection: Collection, map_dir: str | Path) -> None:
    """The routes of the module docstring, for the map in `map_dir`."""
    map_dir = Path(map_dir).resolve()
    check_map_dir(map_dir)
    cache = _cache_of(map_dir, collection)
    names: dict[str, str] = {}
    lock = threading.Lock()

    def uid_of(name: str) -> str | None:
        with lock:
            if not names:
                names.update((thumb_name(u), u) for u in collection.uids)
        return names.get(name)

    @app.get("/map/")
    def map_page():
        return _file(map_dir / "map.html")

    @app.get("/map/lib/<name>")
    def map_lib(name: str):
        if name == "app.js":
            resp = Response(APP_JS, mimetype="text/javascript")
            resp.headers["Content-Security-Policy"] = MAP_CSP
            return resp
        if name not in VIEWER:
            abort(404, description=f"{name}: not a file of the map viewer.")
        return _file(map_dir / "lib" / next(v for v in VIEWER if v == name))

    @app.get("/map/data/<name>")
    def map_data(name: str):
        if name == "points.js":
            return _file(map_dir / "data" / "points.js")
        m = _COLUMN.fullmatch(name)
        if not m:
            abort(404, description=f"{name}: not a data file of the map.")
        return _file(map_dir / "data" / f"col-{int(m.group(1))}.js")

    @app.get("/thumbs/<name>")
    def map_thumb(name: str):
        uid = uid_of(name)
        if uid is None:
            abort(404, description=f"{name}: no image of the collection has this thumbnail name.")
        try:
            try:
                data = cache.get(uid)
            except ThumbCacheError:  # a cache this server cannot write: made in memory
                data = jpeg_thumbnail(collection.image_path(uid), cache.size).jpeg
        except ImageReadError as e:
            abort(404, description=f"image {uid}: {e}")
        resp = Response(data, mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp
