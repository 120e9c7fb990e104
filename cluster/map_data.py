"""The map viewer's data files: compact, split by what the page needs first, loadable from a folder.

Why this shape: a page opened from a folder (file://) may not fetch() files, but it may load scripts; so each
data file is a small JavaScript file that hands its data to the page (`MAPDATA.points(...)`,
`MAPDATA.column(j, ...)`). What the first frame needs (coordinates, cluster, group, year, thumbnail flag: 21 bytes a point,
base64) is one file; every metadata column is its own file, loaded after the first frame, so that a million
points draw before a million titles arrive. Thumbnails are never in these files: the page loads each one from
the collection's thumbnail cache when it is shown (hover, a zoomed-in view, a list).

Files (in MAP_DIR/data/):
- `points.js`: n; x, y (float32, scaled into [-1, 1], aspect kept); cluster (int32, -1 noise); group (int32
  index into `groups`, -1 none); year (float32, NaN unknown; the first 3-4 digit number of the image's date columns: `years`);
  links (int32 pairs of rows joined by a POSITIVE connection); columns (names and files); thumbnails (the
  cache folder relative to the map, and each uid whose file name is not `<uid>.jpg`); unreadable images.
- `col-<j>.js`: column j of images.csv, dictionary-coded: `values` (distinct strings, first-seen order) and
  `codes` (uint8/16/32 per point). Column 0 is the uid.
Size and time grow as O(n) (about 28 bytes a point for points.js, base64 included, plus the metadata text).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_text
from data.metadata import FIELDS, columns

APP_ADDRESS = "http://127.0.0.1:8765/"  # where `cluster annotate` listens by default (its --port)
_YEAR = re.compile(r"-?\d{3,4}")


@dataclass(frozen=True)
class MapPoints:
    """Everything per point that the viewer's first frame needs (row order = the signatures' order)."""

    uids: list[str]
    coords: np.ndarray  # (n, 2)
    labels: np.ndarray  # (n,) int, -1 noise
    groups: dict[str, str]  # uid -> pattern group name
    links: list[tuple[int, int]]


def b64(arr: np.ndarray, dtype) -> str:
    """Little-endian bytes of arr as `dtype`, base64 (what the page turns back into a typed array)."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def normalised(coords: np.ndarray) -> np.ndarray:
    """Coordinates scaled into [-0.95, 0.95] around their centre, one scale for both axes (the viewer's space)."""
    xy = np.asarray(coords, np.float64)
    if len(xy) == 0:
        return xy.astype(np.float32)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    half = max(float((hi - lo).max()) / 2, 1e-12)
    return ((xy - (lo + hi) / 2) / half * 0.95).astype(np.float32)


def parse_year(text: str) -> float:
    """The first 3-4 digit number of a date ("c. 1505-1510" -> 1505), NaN when there is none."""
    m = _YEAR.search(text or "")
    return float(m.group()) if m else float("nan")


def years(meta: dict[str, list[str]], n: int) -> np.ndarray:
    """Each image's year: the first 3-4 digit number in its date columns (data.metadata's, in that order), NaN
    where none has one. Per image, as its caption's date is its first non-blank date column: an export whose
    `Dating` is blank or "XVI secolo" on some rows still places them by its `BeginDate`."""
    out = np.full(n, np.nan, np.float32)
    for name in columns(meta, "date"):
        missing = np.isnan(out)
        if not missing.any():
            break
        out[missing] = [parse_year(v) for v, m in zip(meta[name], missing, strict=True) if m]
    return out


def dictionary(values: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """(distinct values in first-seen order, code of each value): a column as the page stores it."""
    index: dict[str, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    width = np.uint8 if len(index) <= 1 << 8 else np.uint16 if len(index) <= 1 << 16 else np.uint32
    return list(index), np.asarray(codes, dtype=width)


def _js(call: str, *args) -> str:
    # the payload is JSON (valid JavaScript); "<" escaped so that no text can look like markup to a viewer
    body = ", ".join(json.dumps(a, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c") for a in args)
    return f"MAPDATA.{call}({body});\n"


def write_column(path: Path, j: int, name: str, values: Iterable[str]) -> None:
    distinct, codes = dictionary(values)
    atomic_write_text(path, _js("column", j, {"name": name, "values": distinct, "codes": b64(codes, codes.dtype),
                                              "width": codes.dtype.itemsize}))  # fmt: skip


def _thumb_exceptions(uids: list[str], names: dict[str, str]) -> dict[int, str]:
    """Rows whose thumbnail file is not `<uid>.jpg` (the page computes the rest from the uid column)."""
    return {i: names[u] for i, u in enumerate(uids) if u in names and names[u] != f"{u}.jpg"}


def write_map_data(folder: Path, pts: MapPoints, meta: dict[str, list[str]], *, thumbs_dir: Path | None,
                   thumb_names: dict[str, str], unreadable: dict[str, str], title: str,
                   final: Path | None = None, app_address: str = APP_ADDRESS) -> list[str]:  # fmt: skip
    """Write data/points.js and data/col-<j>.js into `folder`; returns the column names (uid first).

    `meta`: column name -> one string per point (images.csv's metadata columns). `thumbs_dir`: the thumbnail
    cache (referenced relative to the map folder `final`, default `folder`, so that the map folder and the
    collection can move together);
    `thumb_names`: uid -> file name in it, for the uids that have a thumbnail.
    """
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    names = ["uid", *meta]
    for j, name in enumerate(names):
        write_column(data / f"col-{j}.js", j, name, pts.uids if j == 0 else meta[name])
    group_names = sorted(set(pts.groups.values()))
    gindex = {g: i for i, g in enumerate(group_names)}
    xy = normalised(pts.coords)
    base = None
    if thumbs_dir is not None:
        try:
            base = Path(os.path.relpath(thumbs_dir, (final or folder).resolve())).as_posix() + "/"
        except ValueError:  # another drive (Windows): an absolute URL
            base = thumbs_dir.resolve().as_uri() + "/"
    payload = {
        "title": title,
        "app_address": app_address,  # where a map opened from its folder links to the annotation page
        "n": len(pts.uids),
        "x": b64(xy[:, 0] if len(xy) else xy, np.float32),
        "y": b64(xy[:, 1] if len(xy) else xy, np.float32),
        "cluster": b64(pts.labels, np.int32),
        "group": b64([gindex.get(pts.groups.get(u, ""), -1) for u in pts.uids], np.int32),
        "year": b64(years(meta, len(pts.uids)), np.float32),
        # title/author/date/place -> the column numbers holding it (data.metadata), first non-blank wins per image
        "fields": {name: [names.index(k) for k in columns(meta, name)] for name in FIELDS},
        "groups": group_names,
        "links": b64(np.asarray(pts.links, np.int32).reshape(-1), np.int32),
        "columns": [{"name": n, "file": f"data/col-{j}.js"} for j, n in enumerate(names)],
        "thumbs": {"base": base, "names": _thumb_exceptions(pts.uids, thumb_names),
                   "has": b64([u in thumb_names for u in pts.uids], np.uint8)},  # fmt: skip
        "unreadable": {i: unreadable[u] for i, u in enumerate(pts.uids) if u in unreadable},
    }
    atomic_write_text(data / "points.js", _js("points", payload))
    return names
