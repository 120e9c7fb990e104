"""`python -m data import`: the original system's metadata export and morphograph -> a collection.

The files of the original system (the one built for the Cini photo archive):
- metadata export: semicolon-separated, ~38 columns, among them `uid`, Drawer, ImageNumber, Author,
  AuthorOriginal, Description, BeginDate, EndDate, City, Country, ImageURL; the local image was
  `{Drawer}/{Drawer}_{ImageNumber}.jpg` under the archive's image folder;
- morphograph: `uid, img1, img2, type, annotated` (edge id, the two image uids, the edge type, a
  timestamp), as CSV or parquet.

Nothing is guessed and nothing is lost: every metadata column is kept, and every morphograph column
beyond `uid,img1,img2,type,annotated` is kept in connections.csv; edges of a type we do not
train on (NON-DUPLICATE, PROPOSAL, ...), without a type, or naming an image that is not in the
metadata go to `connections_other.csv` with the reason, and are counted in the report. The inputs are
decoded like a collection's CSVs (`data.collection.read_text`: UTF-8, UTF-16 with BOM, or Windows-1252
with a warning in the report).
A pickle is never opened: unpickling runs arbitrary code, so the user converts a trusted one.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data.atomic import atomic_write
from data.collection import (
    CONNECTION_COLUMNS,
    CONNECTION_TYPES,
    IMAGES_FILE,
    CollectionError,
    Connection,
    ImageRecord,
    read_text,
    safe_file_stem,
    write_connections,
    write_images,
)

OTHER_FILE = "connections_other.csv"
_EDGE_COLUMNS = ("uid", "img1", "img2", "type", "annotated")  # morphograph columns that become ours
REPORT_FILE = "import_report.json"
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pck", ".p"}
# Renamed to our column names; every other column is kept under its original name.
_RENAME = {
    "Author": "author",
    "Description": "title",
    "BeginDate": "begin_date",
    "EndDate": "end_date",
    "City": "city",
    "Country": "country",
}


class ImportError_(ValueError):  # noqa: N801 - `ImportError` is a builtin with another meaning
    """An input the importer cannot use; the message names the file, the line and what to do."""


@dataclass
class ImportResult:
    out: Path
    images: int = 0
    local: int = 0
    remote: int = 0
    no_image: list[str] = field(default_factory=list)
    connections: Counter = field(default_factory=Counter)
    kept_out: Counter = field(default_factory=Counter)  # reason -> count
    duplicate_uids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings from reading the inputs (e.g. their encoding)

    def report_lines(self) -> list[str]:
        lines = [
            f"{self.out}: {self.images} images ({self.local} local files, {self.remote} by url; "
            f"run `python -m data fetch {self.out}` for those)",
            "connections: " + (", ".join(f"{t} {n}" for t, n in sorted(self.connections.items())) or "none"),
        ]
        if self.kept_out:
            lines.append(
                f"kept out of training, written to {OTHER_FILE}: "
                + ", ".join(f"{r} {n}" for r, n in sorted(self.kept_out.items()))
            )
        if self.no_image:
            lines.append(f"no local file and no ImageURL for {len(self.no_image)} uids (first: {self.no_image[:3]})")
        if self.duplicate_uids:
            lines.append(f"duplicate uids in the metadata, first row kept: {self.duplicate_uids[:5]}")
        return lines + self.notes

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "local": self.local,
            "remote": self.remote,
            "no_image": self.no_image,
            "connections": dict(self.connections),
            "kept_out": dict(self.kept_out),
            "duplicate_uids": self.duplicate_uids,
        }


def refuse_pickle(path: Path) -> None:
    """Raise if `path` is (or looks like) a pickle, with the conversion the user can run on a trusted file."""
    is_pickle = path.suffix.lower() in _PICKLE_SUFFIXES
    if not is_pickle:
        with open(path, "rb") as fh:
            head = fh.read(2)
        is_pickle = len(head) == 2 and head[0] == 0x80 and head[1] <= 5  # pickle protocol 2-5 opcode
    if is_pickle:
        raise ImportError_(
            f"{path}: this is a Python pickle. It is not opened here, because unpickling a file runs any code it "
            "contains. If you trust the file, convert it yourself, e.g.\n"
            f"    python -c \"import pandas as pd; pd.read_pickle('{path}').to_csv('{path.with_suffix('.csv')}', "
            "index=False)\"\n"
            "(use sep=';' for the metadata export) and pass the CSV."
        )


def _read_table(
    path: Path, delimiter: str, notes: list[str]
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    refuse_pickle(path)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError as e:
            raise ImportError_(
                f"{path}: reading parquet needs pyarrow (pip install pyarrow), or export the table as CSV."
            ) from e
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ImportError_(f"{path}: not a readable parquet file ({e}).") from e
        cols = table.column_names
        data = table.to_pydict()
        rows = []
        for i in range(table.num_rows):
            rows.append((i + 2, {c: "" if data[c][i] is None else str(data[c][i]).strip() for c in cols}))
        return cols, rows
    try:  # the same encodings as a collection's CSVs (UTF-8, UTF-16 with BOM, Windows-1252 with a warning)
        text, read_notes = read_text(path)
    except CollectionError as e:
        raise ImportError_(str(e)) from e
    notes.extend(f"warning: {n}" for n in read_notes)
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = []
        line = reader.line_num + 1
        try:
            for row in reader:
                if None in row:
                    raise ImportError_(f"{path}:{line}: more fields than the header has columns.")
                clean = {k: (v or "").strip() for k, v in row.items()}
                if any(clean.values()):
                    rows.append((line, clean))
                line = reader.line_num + 1
        except csv.Error as e:
            raise ImportError_(f"{path}:{line}: cannot parse ({e}).") from e
    return header, rows


def _edge_extra(row: dict[str, str]) -> dict[str, str]:
    """The morphograph's other columns, kept in connections.csv (renamed if they clash with ours)."""
    return {(f"morphograph_{k}" if k in CONNECTION_COLUMNS else k): v
            for k, v in row.items() if k not in _EDGE_COLUMNS}


def _check_metadata_header(metadata: Path, header: list[str]) -> None:
    if "uid" not in header:
        hint = " (it looks comma-separated; the export is semicolon-separated)" if len(header) == 1 else ""
        raise ImportError_(f"{metadata}:1: no 'uid' column{hint}; found {header[:8]}.")
    if not ({"Drawer", "ImageNumber"} <= set(header) or "ImageURL" in header):
        raise ImportError_(f"{metadata}:1: need Drawer and ImageNumber columns, or ImageURL; found {header[:8]}.")


def _image_meta(row: dict[str, str]) -> dict[str, str]:
    """Every metadata column (some renamed, `_RENAME`), plus `place` and `date` made from the original's."""
    meta = {_RENAME.get(k, k): v for k, v in row.items() if k not in ("uid",)}
    meta["place"] = ", ".join(x for x in (row.get("City", ""), row.get("Country", "")) if x)
    date, end = row.get("BeginDate", ""), row.get("EndDate", "")
    if end and end != date:
        date = f"{date}-{end}" if date else end
    meta["date"] = date
    return meta


def _image_location(row: dict[str, str], root: Path | None, res: ImportResult) -> tuple[str | None, str | None]:
    """(path, url) of an image: the local `{Drawer}/{Drawer}_{ImageNumber}.jpg` if it exists, else the
    ImageURL (`data fetch` downloads it); with neither, the path where the file should be, so `data check`
    reports it missing by uid. Counted in `res`."""
    drawer, number = row.get("Drawer", ""), row.get("ImageNumber", "")
    local = root / drawer / f"{drawer}_{number}.jpg" if root is not None and drawer and number else None
    if local is not None and local.exists():
        res.local += 1
        return str(local), None
    if row.get("ImageURL"):
        res.remote += 1
        return None, row["ImageURL"]
    res.no_image.append(row["uid"])
    return (str(local) if local is not None else f"images/{safe_file_stem(row['uid'])}.jpg"), None


def _image_records(metadata: Path, rows: list[tuple[int, dict[str, str]]], root: Path | None,
                   res: ImportResult) -> list[ImageRecord]:
    """One record per uid, in file order; a uid seen again is counted in `res.duplicate_uids` and skipped."""
    records: list[ImageRecord] = []
    seen: set[str] = set()
    for line, row in rows:
        uid = row.get("uid", "")
        if not uid:
            raise ImportError_(f"{metadata}:{line}: empty uid.")
        if uid in seen:
            res.duplicate_uids.append(uid)
            continue
        seen.add(uid)
        path, url = _image_location(row, root, res)
        records.append(ImageRecord(uid=uid, path=path, url=url, meta=_image_meta(row), line=len(records) + 2))
    return records


def _kept_out_reason(a: str, b: str, t: str, uids: set[str]) -> str | None:
    """Why a morphograph edge does not become a connection (None: it does)."""
    if not t:
        return "no type"
    if t not in CONNECTION_TYPES:
        return f"type {t}"
    if a not in uids or b not in uids:
        return "unknown uid"
    if a == b:
        return "self connection"
    return None


def _connections(rows: list[tuple[int, dict[str, str]]], uids: set[str],
                 res: ImportResult) -> tuple[list[Connection], list[dict[str, str]]]:
    """The morphograph's edges as connections, and the rows kept out (with their line and reason)."""
    kept: list[Connection] = []
    other: list[dict[str, str]] = []
    for line, row in rows:
        a, b, t = row.get("img1", ""), row.get("img2", ""), row.get("type", "").upper()
        reason = _kept_out_reason(a, b, t, uids)
        if reason:
            res.kept_out[reason] += 1
            other.append({"line": str(line), "reason": reason, **row})
            continue
        res.connections[t] += 1
        edge = row.get("uid", "")
        kept.append(
            Connection(a=a, b=b, type=t, source=f"morphograph:{edge}" if edge else "morphograph",
                       annotated_at=row.get("annotated") or None, line=line, extra=_edge_extra(row))
        )
    return kept, other


def _write_other(path: Path, other: list[dict[str, str]], header: list[str]) -> None:
    cols = ["line", "reason"] + [c for c in header if c not in ("line", "reason")]

    def write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(other)

    atomic_write(path, write)


def import_original(
    metadata: str | Path,
    morphograph: str | Path,
    out: str | Path,
    *,
    images_root: str | Path | None = None,
) -> ImportResult:
    """Write a collection in `out` from the original's files; see the module docstring."""
    metadata, morphograph, out = Path(metadata), Path(morphograph), Path(out)
    if (out / IMAGES_FILE).exists():
        raise ImportError_(f"{out}: already holds a collection ({IMAGES_FILE}); choose a new --out folder.")
    res = ImportResult(out=out)
    header, rows = _read_table(metadata, ";", res.notes)
    _check_metadata_header(metadata, header)
    root = Path(images_root).resolve() if images_root else None
    out.mkdir(parents=True, exist_ok=True)
    records = _image_records(metadata, rows, root, res)
    res.images = len(records)

    mheader, mrows = _read_table(morphograph, ",", res.notes)
    if not {"img1", "img2", "type"} <= set(mheader):
        raise ImportError_(f"{morphograph}:1: need columns uid,img1,img2,type,annotated; found {mheader}.")
    kept, other = _connections(mrows, {r.uid for r in records}, res)

    atomic_write(out / IMAGES_FILE, lambda p: write_images(p, records))
    atomic_write(out / "connections.csv", lambda p: write_connections(p, kept))
    if other:
        _write_other(out / OTHER_FILE, other, mheader)
    atomic_write(out / REPORT_FILE, lambda p: p.write_text(json.dumps(res.as_dict(), indent=1) + "\n"))
    return res
