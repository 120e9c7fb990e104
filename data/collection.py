"""Reading a collection folder: `images.csv`, `connections.csv` (and later `annotations.jsonl`).

A collection is a folder with
- `images.csv`: `uid,path` (or `uid,url`) plus any metadata columns; uid is unique;
- `connections.csv` (optional): `a,b,type` plus optional `split,source,annotated_at`;
  type is POSITIVE, NEGATIVE, DUPLICATE or SIMILAR; an empty type means POSITIVE.

This module only parses: it keeps every row with its line number so that validation
(`data.validate`) can name the file, the line and the uid of each problem. A file that
cannot be parsed at all (missing header column, unreadable file) raises `CollectionError`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

IMAGES_FILE = "images.csv"
CONNECTIONS_FILE = "connections.csv"
ANNOTATIONS_FILE = "annotations.jsonl"

POSITIVE = "POSITIVE"
NEGATIVE = "NEGATIVE"
DUPLICATE = "DUPLICATE"
SIMILAR = "SIMILAR"
CONNECTION_TYPES = (POSITIVE, NEGATIVE, DUPLICATE, SIMILAR)
SPLITS = ("train", "val", "test")

IMAGE_COLUMNS = ("uid", "path", "url")
CONNECTION_COLUMNS = ("a", "b", "type", "split", "source", "annotated_at")


class CollectionError(ValueError):
    """A collection file that cannot be read; the message names the file, the line and what to do."""


@dataclass(frozen=True)
class ImageRecord:
    """One row of images.csv. `line` is the 1-based line number in the file (header is line 1)."""

    uid: str
    path: str | None
    url: str | None
    meta: dict[str, str]
    line: int


@dataclass(frozen=True)
class Connection:
    """One row of connections.csv, with its line number for error messages."""

    a: str
    b: str
    type: str
    split: str | None = None
    source: str | None = None
    annotated_at: str | None = None
    line: int = 0

    @property
    def pair(self) -> tuple[str, str]:
        """The unordered pair as a sorted tuple: connections are symmetric."""
        return (self.a, self.b) if self.a <= self.b else (self.b, self.a)


@dataclass
class Collection:
    """A parsed collection folder. Rows are kept in file order, duplicates included."""

    root: Path
    images: list[ImageRecord]
    connections: list[Connection]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # First occurrence wins; duplicate uids are reported by validation, not hidden here.
        for i, rec in enumerate(self.images):
            self._index.setdefault(rec.uid, i)

    @property
    def images_file(self) -> Path:
        return self.root / IMAGES_FILE

    @property
    def connections_file(self) -> Path:
        return self.root / CONNECTIONS_FILE

    @property
    def uids(self) -> list[str]:
        return [r.uid for r in self.images]

    def __contains__(self, uid: str) -> bool:
        return uid in self._index

    def record(self, uid: str) -> ImageRecord:
        try:
            return self.images[self._index[uid]]
        except KeyError:
            raise KeyError(f"uid {uid!r} is not in {self.images_file}") from None

    def index_of(self, uid: str) -> int:
        return self._index[uid]

    def image_path(self, uid_or_record: str | ImageRecord) -> Path:
        """Local file of an image: `path` relative to the collection folder (or absolute).

        A row that only has a `url` maps to where `python -m data fetch` stores it.
        """
        rec = uid_or_record if isinstance(uid_or_record, ImageRecord) else self.record(uid_or_record)
        if rec.path:
            p = Path(rec.path)
            return p if p.is_absolute() else self.root / p
        return self.root / fetched_path(rec.uid)

    def connections_of_type(self, *types: str) -> list[Connection]:
        return [c for c in self.connections if c.type in types]


def fetched_path(uid: str) -> str:
    """Where a remote (url-only) image is stored inside the collection, relative to its root."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in uid)
    return f"images/fetched/{safe}.jpg"


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV with a header; returns the header and (line number, row) pairs.

    Line numbers are physical line numbers of the start of each record, so quoted
    multi-line fields still give the line a person finds in an editor.
    """
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise CollectionError(f"{path}: cannot open ({e.strerror}).") from e
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows: list[tuple[int, dict[str, str]]] = []
        line = reader.line_num + 1
        try:
            for row in reader:
                if None in row:
                    raise CollectionError(
                        f"{path}:{line}: more fields than the header has columns; quote fields that contain commas."
                    )
                clean = {k: (v or "").strip() for k, v in row.items()}
                if any(clean.values()):
                    rows.append((line, clean))
                line = reader.line_num + 1
        except csv.Error as e:
            raise CollectionError(f"{path}:{reader.line_num}: not valid CSV ({e}).") from e
        except UnicodeDecodeError as e:
            raise CollectionError(f"{path}: not UTF-8 text ({e}); save the file as UTF-8 CSV.") from e
    return header, rows


def read_images(path: Path) -> list[ImageRecord]:
    header, rows = _read_csv(path)
    if "uid" not in header or not ({"path", "url"} & set(header)):
        raise CollectionError(
            f"{path}:1: the header must have a 'uid' column and a 'path' or 'url' column; found {header}."
        )
    out = []
    for line, row in rows:
        meta = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
        out.append(
            ImageRecord(uid=row["uid"], path=row.get("path") or None, url=row.get("url") or None, meta=meta, line=line)
        )
    return out


def read_connections(path: Path) -> list[Connection]:
    header, rows = _read_csv(path)
    if not {"a", "b"} <= set(header):
        raise CollectionError(f"{path}:1: the header must have columns 'a' and 'b' (and optionally 'type'); found {header}.")
    out = []
    for line, row in rows:
        out.append(
            Connection(
                a=row["a"],
                b=row["b"],
                type=(row.get("type") or POSITIVE).upper(),
                split=row.get("split") or None,
                source=row.get("source") or None,
                annotated_at=row.get("annotated_at") or None,
                line=line,
            )
        )
    return out


def load_collection(root: str | Path) -> Collection:
    """Parse a collection folder. connections.csv is optional (a collection may have no known connections yet)."""
    root = Path(root)
    if not root.is_dir():
        raise CollectionError(f"{root}: not a folder. A collection is a folder with {IMAGES_FILE} (and {CONNECTIONS_FILE}).")
    images_file = root / IMAGES_FILE
    if not images_file.exists():
        raise CollectionError(f"{images_file}: missing. Write a CSV with columns uid,path (path relative to {root}).")
    images = read_images(images_file)
    conn_file = root / CONNECTIONS_FILE
    connections = read_connections(conn_file) if conn_file.exists() else []
    return Collection(root=root, images=images, connections=connections)


def write_images(path: Path, records: Iterable[ImageRecord]) -> None:
    """Write images.csv with uid,path,url and the union of metadata columns, in first-seen order."""
    records = list(records)
    meta_cols: list[str] = []
    for r in records:
        for k in r.meta:
            if k not in meta_cols:
                meta_cols.append(k)
    cols = ["uid", "path"] + (["url"] if any(r.url for r in records) else []) + meta_cols
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in records:
            row = {"uid": r.uid, "path": r.path or "", **r.meta}
            if "url" in cols:
                row["url"] = r.url or ""
            w.writerow(row)


def write_connections(path: Path, connections: Iterable[Connection]) -> None:
    """Write connections.csv with every optional column that any row uses."""
    connections = list(connections)
    cols = ["a", "b", "type"] + [c for c in ("split", "source", "annotated_at") if any(getattr(x, c) for x in connections)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for c in connections:
            w.writerow({k: getattr(c, k) or "" for k in cols})
