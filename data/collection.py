"""Reading a collection folder: `images.csv`, `connections.csv` (and later `annotations.jsonl`).

A collection is a folder with
- `images.csv`: `uid,path` (or `uid,url`) plus any metadata columns; uid is unique;
- `connections.csv` (optional): `a,b,type` plus optional `split,source,annotated_at`;
  type is POSITIVE, NEGATIVE, DUPLICATE or SIMILAR; an empty type means POSITIVE.

This module only parses: it keeps every row with its line number so that validation
(`data.validate`) can name the file, the line and the uid of each problem. A file that
cannot be parsed at all (missing header column, unreadable file) raises `CollectionError`.

It is the one place that opens images.csv and connections.csv, so every command reads them alike:
UTF-8 (with or without BOM), UTF-16 with a BOM, and, for bytes that are not UTF-8, Windows-1252 (what
Excel on Windows saves as "CSV") with a warning naming the file and the first such byte; separated by
commas, semicolons or TABs (sniffed from the header line). It also keeps each file's layout
(`CsvFormat`) and every column it does not know (`ImageRecord.meta`, `Connection.extra`), so that a
writer that rewrites a user's file (`cluster accept`) keeps every column, in order. The uid rule is
`uid_problem`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from data.gc_policy import paused_collection

IMAGES_FILE = "images.csv"
CONNECTIONS_FILE = "connections.csv"
ANNOTATIONS_FILE = "annotations.jsonl"

POSITIVE = "POSITIVE"
NEGATIVE = "NEGATIVE"
DUPLICATE = "DUPLICATE"
SIMILAR = "SIMILAR"
CONNECTION_TYPES = (POSITIVE, NEGATIVE, DUPLICATE, SIMILAR)
SPLITS = ("train", "val", "test")
# Pairs of types that cannot both hold for one pair: `data check` errors, `cluster accept` refuses to add one.
CONTRADICTORY = frozenset({frozenset((POSITIVE, NEGATIVE)), frozenset((DUPLICATE, NEGATIVE))})
# type -> the types that already imply it: DUPLICATE (the same object) implies POSITIVE (the same pattern) and
# SIMILAR; POSITIVE implies SIMILAR. A row of an implied type on a pair that has the stronger one adds nothing
# (`data check` says so; `cluster accept` does not write it). The other way round the new type says more.
IMPLIED_BY = {POSITIVE: frozenset({DUPLICATE}), SIMILAR: frozenset({POSITIVE, DUPLICATE})}

IMAGE_COLUMNS = ("uid", "path", "url")
CONNECTION_COLUMNS = ("a", "b", "type", "split", "source", "annotated_at")


class CollectionError(ValueError):
    """A collection file that cannot be read; the message names the file, the line and what to do."""


@dataclass(frozen=True, slots=True)  # slots: ~100 bytes less per row (10^6 rows: ~0.1 GB)
class ImageRecord:
    """One row of images.csv. `line` is the 1-based line number in the file (header is line 1)."""

    uid: str
    path: str | None
    url: str | None
    meta: dict[str, str]
    line: int


@dataclass(frozen=True, slots=True)  # slots: ~100 bytes less per row (10^6 rows: ~0.1 GB)
class Connection:
    """One row of connections.csv, with its line number for error messages."""

    a: str
    b: str
    type: str
    split: str | None = None
    source: str | None = None
    annotated_at: str | None = None
    line: int = 0
    # the user's other columns (comment, reviewer, ...) by column key, kept when the file is rewritten
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    # the cells of the known columns as the file had them (an empty `type`, " positive "): a rewrite writes
    # them back unchanged wherever they still mean the row's values (see `write_connections`)
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

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
    images_format: CsvFormat | None = None  # the files' layouts, so that a rewrite keeps every column
    connections_format: CsvFormat | None = None
    notes: list[ReadNote] = field(default_factory=list)  # what the reader had to guess (warnings)
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

    @property
    def uid_index(self) -> Mapping[str, int]:
        """uid -> its row (the first, for a repeated uid), read-only: for membership tests over 10^6 uids, where
        `uid in collection` (a Python method call each) cost ~0.5 s per million."""
        return MappingProxyType(self._index)

    def record(self, uid: str) -> ImageRecord:
        try:
            return self.images[self._index[uid]]
        except KeyError:
            raise KeyError(f"uid {uid!r} is not in {self.images_file}") from None

    def index_of(self, uid: str) -> int:
        return self._index[uid]

    def image_path(self, uid_or_record: str | ImageRecord) -> Path:
        """Local file of an image: `path` relative to the collection folder, absolute, or `~/...` (the home
        folder, as a shell would read it).

        A row that only has a `url` maps to where `python -m data fetch` stores it.
        """
        rec = uid_or_record if isinstance(uid_or_record, ImageRecord) else self.record(uid_or_record)
        if rec.path:
            p = Path(rec.path).expanduser()
            return p if p.is_absolute() else self.root / p
        return self.root / fetched_path(rec.uid)

    def connections_of_type(self, *types: str) -> list[Connection]:
        return [c for c in self.connections if c.type in types]


MAX_UID_LENGTH = 256


def uid_problem(uid: str) -> str | None:
    """What is wrong with a uid, or None. The one rule for uids, enforced by `python -m data check`.

    A uid is 1 to 256 printable characters (`str.isprintable()`: no newline, tab or other control
    character, which would break a line-based log or a terminal message) with no leading or trailing
    whitespace (invisible in a spreadsheet, so two uids would look the same), and not `.` or `..` (a
    browser resolves those in an image's URL even when escaped). Commas, quotes, spaces,
    slashes and non-ASCII letters are allowed: every CSV is written with the csv module and every file
    name or URL made from a uid escapes it.
    """
    if not uid:
        return "empty uid; every row needs a unique uid."
    if len(uid) > MAX_UID_LENGTH:
        return f"uid of {len(uid)} characters is longer than {MAX_UID_LENGTH}; shorten it."
    bad = next((ch for ch in uid if not ch.isprintable()), None)
    if bad is not None:
        return (f"uid {uid!r} contains U+{ord(bad):04X}, a control character or other non-printable one "
                "(newline, tab, ...); uids must be printable text.")
    if uid != uid.strip():
        return f"uid {uid!r} has leading or trailing whitespace; remove it."
    if uid in (".", ".."):
        return f"uid {uid!r} is a path segment that web browsers and file systems treat specially; rename it."
    return None


def safe_file_stem(uid: str, keep: str = "-_.") -> str:
    """A file name (without suffix) for a uid, distinct for distinct uids and at most ~120 bytes.

    Plain uids (letters, digits and `keep`) are used as they are; any other uid has its other
    characters replaced and a hash of the whole uid appended, so `a/b` and `a_b` never share a file.
    """
    safe = "".join(ch if ch.isalnum() or ch in keep else "_" for ch in uid)
    if safe == uid and uid and len(uid.encode("utf-8")) <= 100:
        return uid
    digest = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:16]
    return f"{safe[:24]}-{digest}"


def fetched_path(uid: str) -> str:
    """Where a remote (url-only) image is stored inside the collection, relative to its root."""
    return f"images/fetched/{safe_file_stem(uid)}.jpg"


# -- reading ----------------------------------------------------------------------------------------
# Excel writes CSV as Windows-1252 ("CSV"), UTF-8 with a BOM ("CSV UTF-8") or UTF-16 with a BOM and TABs
# ("Unicode text"); European locales separate with semicolons. All of them are read here, the one place
# that opens images.csv and connections.csv.
LEGACY_ENCODING = "cp1252"
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class CsvFormat:
    """How a user's CSV file is laid out, so that a rewrite keeps every column, in order.

    `header`: the column names as written in the file; `keys`: one distinct key per column (the name
    stripped; a repeated or empty name gets `name#2`, ...), under which rows keep the column's values;
    `encoding`: what the file was read as (`utf-8`, `utf-8-sig`, `utf-16`, `cp1252`).
    """

    header: tuple[str, ...]
    keys: tuple[str, ...]
    delimiter: str = ","
    encoding: str = "utf-8"

    @property
    def legacy(self) -> bool:
        """True when a rewrite changes the encoding (writers always write UTF-8)."""
        return self.encoding not in ("utf-8", "utf-8-sig")


@dataclass(frozen=True)
class ReadNote:
    """Something the reader had to guess (e.g. the encoding), reported as a warning by every command."""

    file: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}" + (f":{self.line}" if self.line else "") + f": {self.message}"


@dataclass
class _Table:
    fmt: CsvFormat
    rows: Iterator[tuple[int, list[str]]]  # (line, raw cells in fmt.keys' order), read as consumed: once
    notes: list[ReadNote]


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """The line and the byte in it of `offset`, lines ending at \r\n, \r (old Mac Excel) or \n as `_lines`
    cuts them: counting \n alone called a CR-only file's every byte line 1."""
    line_start = max(data.rfind(b"\n", 0, offset), data.rfind(b"\r", 0, offset)) + 1
    ends = data.count(b"\n", 0, offset) + data.count(b"\r", 0, offset) - data.count(b"\r\n", 0, offset)
    return ends + 1, offset - line_start + 1


def _decode(path: Path, data: bytes) -> tuple[str, str, list[ReadNote]]:
    """The text of a CSV file and the encoding it was read as; see the comment above for the choices."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16", []
        except UnicodeDecodeError as e:
            raise CollectionError(
                f"{path}: starts like UTF-16 text but byte {e.start} is not UTF-16; save the file as CSV UTF-8."
            ) from None
    if b"\x00" in data:
        line, col = _line_and_column(data, data.index(b"\x00"))
        raise CollectionError(
            f"{path}:{line}: NUL byte at byte {col} of the line: this is UTF-16 text without a byte-order mark, "
            "or not a text file; save it as CSV UTF-8 (in Excel: Save As, 'CSV UTF-8')."
        )
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8"), "utf-8-sig" if bom else "utf-8", []
    except UnicodeDecodeError as e:
        bad = bom + e.start
    line, col = _line_and_column(data, bad)
    try:
        text = data[bom:].decode(LEGACY_ENCODING)
    except UnicodeDecodeError as e:
        where = bom + e.start
        line, col = _line_and_column(data, where)
        raise CollectionError(
            f"{path}:{line}: byte 0x{data[where]:02x} (byte {col} of the line) is neither UTF-8 nor "
            f"Windows-1252 text; open the file in a spreadsheet or editor and save it as CSV UTF-8."
        ) from None
    note = ReadNote(
        path, line,
        f"not UTF-8 (byte 0x{data[bad]:02x} at byte {col} of the line); read as Windows-1252 (Excel's 'CSV'); "
        "save it as UTF-8 to silence this ('CSV UTF-8' in Excel).",
    )
    return text, LEGACY_ENCODING, [note]


def read_text(path: Path) -> tuple[str, list[ReadNote]]:
    """The text of a spreadsheet export, decoded by the same rules as images.csv (see `_decode`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CollectionError(f"{path}: cannot open ({e.strerror}).") from e
    text, _, notes = _decode(path, data)
    return text.removeprefix("\ufeff"), notes


def _sniff_delimiter(text: str) -> str:
    """Comma, semicolon or TAB: whichever the header line holds most of (a comma on a tie). The header line ends
    where `_lines` ends it (at \r too: in a CR-only file, cutting at \n counted the whole file's separators)."""
    first = next(_lines(text), "")
    counts = {d: first.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])  # max keeps the first (the comma) on a tie
    return best if counts[best] else ","


def _column_keys(header: list[str]) -> tuple[str, ...]:
    keys: list[str] = []
    for name in header:
        base = name.strip()
        key, k = base, 2
        while key in keys:
            key, k = f"{base}#{k}", k + 1
        keys.append(key)
    return tuple(keys)


def _read_rows(path: Path, reader, n_columns: int, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of every row with a non-blank cell, padded or cut to n_columns (a cut cell must be blank),
    one at a time: the caller turns each into its record, so the rows are never all held at once.

    Per row only C-level work on the common path (a million rows of images.csv: the Python per cell was
    most of the reading time)."""
    line = start = reader.line_num + 1
    try:
        for row in reader:
            if len(row) != n_columns:
                if len(row) > n_columns:
                    if "".join(row[n_columns:]).strip():
                        raise CollectionError(
                            f"{path}:{line}: more fields than the header has columns; quote fields that contain "
                            "the separator, or name the extra column in the header."
                        )
                    row = row[:n_columns]
                else:
                    row += [""] * (n_columns - len(row))
            if "".join(row).strip():  # some cell is not blank
                yield line, row
            start, line = line, reader.line_num + 1
    except csv.Error as e:
        if "field limit" in str(e):  # a cell of more than 131,072 characters: all but always a quote never closed
            raise CollectionError(
                f"{path}:{line}: a cell of the row that starts on this line runs on to line {reader.line_num} "
                f"(over {csv.field_size_limit():,} characters): a quoted cell never closed makes the lines after it "
                "one cell; add the closing quote (\") or remove the opening one."
            ) from e
        raise CollectionError(f"{path}:{reader.line_num}: not valid CSV ({e}).") from e
    if line - 1 > start:  # the last row spans lines: a quoted cell with line breaks, or one never closed
        _check_closed(path, text, start, reader.dialect.delimiter)


def _check_closed(path: Path, text: str, start: int, delimiter: str) -> None:
    """Refuse a last row whose quote is never closed. Why: csv.reader then reads everything after the quote,
    every later row, as one cell, without an error: the rows vanish and only later messages hint at it.
    (csv's strict mode says so, but also refuses `"a" b`, which Excel reads.) Only this row is read again."""
    lines = itertools.islice(_lines(text), start - 1, None)
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" not in str(e):  # strict mode's other complaints (`"a" b`): read as before
            return
        raise CollectionError(
            f"{path}:{start}: a quoted cell that starts on this line is never closed, so every line after it "
            "was read as part of that cell; add the closing quote (\") or remove the opening one."
        ) from None


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` with their endings, split at \r\n, \r (old Mac Excel) and \n as
    `io.StringIO(text, newline="")` splits them, one at a time: StringIO keeps a 4-byte-per-character copy of
    the whole text (+325 MB at 10^6 rows of images.csv)."""
    return (m.group() for m in _LINE.finditer(text))


def _read_csv(path: Path) -> _Table:
    """Read a CSV with a header in any of Excel's encodings and separators; rows keep every column.

    Line numbers are physical line numbers of the start of each record, so quoted
    multi-line fields still give the line a person finds in an editor.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CollectionError(f"{path}: cannot open ({e.strerror}).") from e
    text, encoding, notes = _decode(path, data)
    del data  # the text is all that is read from now on (10^6 rows: 115 MB less at the peak)
    text = text.removeprefix("\ufeff")
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(_lines(text), delimiter=delimiter)
    try:
        header = next(reader, [])
    except csv.Error as e:
        raise CollectionError(f"{path}:1: not valid CSV ({e}).") from e
    keys = _column_keys(header)
    rows = _read_rows(path, reader, len(header), text)
    fmt = CsvFormat(header=tuple(header), keys=keys, delimiter=delimiter, encoding=encoding)
    return _Table(fmt=fmt, rows=rows, notes=notes)


def read_csv_format(path: Path) -> CsvFormat:
    """The layout of a CSV file (header, separator, encoding), e.g. to rewrite it the same way."""
    return _read_csv(Path(path)).fmt


def _images(path: Path, table: _Table) -> list[ImageRecord]:
    header = set(table.fmt.keys)
    if "uid" not in header or not ({"path", "url"} & header):
        raise CollectionError(
            f"{path}:1: the header must have a 'uid' column and a 'path' or 'url' column; found "
            f"{list(table.fmt.header)} (separated by {table.fmt.delimiter!r})."
        )
    keys = table.fmt.keys
    uid_at = keys.index("uid")
    path_at, url_at = (keys.index(k) if k in header else None for k in ("path", "url"))
    meta_at = [(k, i) for i, k in enumerate(keys) if k not in IMAGE_COLUMNS]
    out = []
    for line, row in table.rows:
        path = row[path_at].strip() if path_at is not None else ""
        url = row[url_at].strip() if url_at is not None else ""
        out.append(ImageRecord(uid=row[uid_at].strip(), path=path or None, url=url or None,
                               meta={k: row[i].strip() for k, i in meta_at}, line=line))
    return out


def _connections(path: Path, table: _Table) -> list[Connection]:
    if not {"a", "b"} <= set(table.fmt.keys):
        raise CollectionError(
            f"{path}:1: the header must have columns 'a' and 'b' (and optionally 'type'); found "
            f"{list(table.fmt.header)} (separated by {table.fmt.delimiter!r})."
        )
    keys = table.fmt.keys
    known_at = [(k, i) for i, k in enumerate(keys) if k in CONNECTION_COLUMNS]
    extra_at = [(k, i) for i, k in enumerate(keys) if k not in CONNECTION_COLUMNS]
    missing = {k: _parse_cell(k, "") for k in CONNECTION_COLUMNS if k not in keys}
    out = []
    for line, row in table.rows:
        raw = {k: row[i] for k, i in known_at}
        out.append(Connection(**{k: _parse_cell(k, v) for k, v in raw.items()}, **missing, line=line,
                              extra={k: row[i] for k, i in extra_at}, raw=raw))
    return out


def _parse_cell(key: str, cell: str) -> str | None:
    """The value of a known connections.csv cell: uids stripped, an empty type POSITIVE, other empties None."""
    text = cell.strip()
    if key in ("a", "b"):
        return text
    if key == "type":
        return (text or POSITIVE).upper()
    return text or None


def read_images(path: Path) -> list[ImageRecord]:
    path = Path(path)
    return _images(path, _read_csv(path))


def read_connections(path: Path) -> list[Connection]:
    path = Path(path)
    return _connections(path, _read_csv(path))


def load_collection(root: str | Path, *, quiet: bool = False) -> Collection:
    """Parse a collection folder. connections.csv is optional (a collection may have no known connections yet).

    What the reader had to guess (a Windows-1252 file) is kept in `notes` and, unless `quiet`, printed
    to stderr as `warning: ...` lines, so every command that reads a collection says it.
    """
    root = Path(root)
    if not root.is_dir():
        raise CollectionError(f"{root}: not a folder. A collection is a folder with {IMAGES_FILE} (and {CONNECTIONS_FILE}).")
    images_file = root / IMAGES_FILE
    if not images_file.exists():
        raise CollectionError(f"{images_file}: missing. Write a CSV with columns uid,path (path relative to {root}).")
    with paused_collection():  # millions of rows, no garbage (data.gc_policy): about half the time
        images_table = _read_csv(images_file)
        images = _images(images_file, images_table)
        notes = list(images_table.notes)
        conn_file = root / CONNECTIONS_FILE
        connections: list[Connection] = []
        conn_fmt = None
        if conn_file.exists():
            conn_table = _read_csv(conn_file)
            connections = _connections(conn_file, conn_table)
            conn_fmt = conn_table.fmt
            notes += conn_table.notes
    if not quiet:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    return Collection(root=root, images=images, connections=connections, images_format=images_table.fmt,
                      connections_format=conn_fmt, notes=notes)


# -- writing ----------------------------------------------------------------------------------------
# Writers always write UTF-8 (with a BOM when asked, so that Excel still reads it as UTF-8) and, when
# they rewrite a user's file, its `CsvFormat`: every column in its order, the user's columns' values
# kept, the tool's columns that rows use and the header lacks appended at the end.


def _columns(fmt: CsvFormat | None, needed: Iterable[str]) -> tuple[list[str], list[str]]:
    header = list(fmt.header) if fmt else []
    keys = list(fmt.keys) if fmt else []
    for k in needed:
        if k not in keys:
            keys.append(k)
            header.append(k)
    return header, keys


def _write_rows(path: Path, header: list[str], rows: Iterable[list[str]], fmt: CsvFormat | None, bom: bool) -> None:
    delimiter = fmt.delimiter if fmt else ","
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def _first_seen(dicts: Iterable[dict[str, str]]) -> list[str]:
    out: dict[str, None] = {}
    for d in dicts:
        out.update(dict.fromkeys(d))
    return list(out)


def write_images(path: Path, records: Iterable[ImageRecord], *, fmt: CsvFormat | None = None,
                 bom: bool = False) -> None:
    """Write images.csv: `fmt`'s columns (a rewrite) or uid,path,url, then metadata columns in first-seen order."""
    records = list(records)
    needed = ["uid", "path"] + (["url"] if any(r.url for r in records) else []) + _first_seen(r.meta for r in records)
    header, keys = _columns(fmt, needed)
    known = {"uid": lambda r: r.uid, "path": lambda r: r.path or "", "url": lambda r: r.url or ""}
    rows = ([known[k](r) if k in known else r.meta.get(k, "") for k in keys] for r in records)
    _write_rows(path, header, rows, fmt, bom)


def write_connections(path: Path, connections: Iterable[Connection], *, fmt: CsvFormat | None = None,
                      bom: bool = False) -> None:
    """Write connections.csv: `fmt`'s columns (a rewrite), then a,b,type, the optional columns any row
    uses and the rows' extra columns, each appended only where missing."""
    connections = list(connections)
    optional = [c for c in ("split", "source", "annotated_at") if any(getattr(x, c) for x in connections)]
    header, keys = _columns(fmt, ["a", "b", "type", *optional, *_first_seen(c.extra for c in connections)])
    rows = ([_known_cell(c, k) if k in CONNECTION_COLUMNS else c.extra.get(k, "") for k in keys]
            for c in connections)
    _write_rows(path, header, rows, fmt, bom)


def _known_cell(c: Connection, key: str) -> str:
    """The cell to write for a known column: the file's own text (an empty `type` stays empty) while it still
    means the row's value, else the value (a row that was changed, or a new one)."""
    value = getattr(c, key)
    raw = c.raw.get(key)
    if raw is not None and _parse_cell(key, raw) == value:
        return raw
    return value or ""
