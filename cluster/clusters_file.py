"""`clusters.csv` (+ its sidecar `clusters.json`): the one clustering result format.

Every clustering command writes it and every consumer (evaluate, map, annotate, accept) reads it.

clusters.csv has one row per image, in the order of the signatures file:

    uid,cluster,order,reachability,core_distance

- `cluster`: integer label, -1 = noise (never a cluster);
- `order`: 0-based position of the image in the OPTICS ordering (methods without an ordering
  write the row index, see the `ordering` entry of the parameters);
- `reachability`, `core_distance`: floats; infinity is written `inf`, "not defined by this
  method" is written `nan` (e.g. DBSCAN has neither).

clusters.json holds the parameters that produced it (method, min_samples, max_eps, xi, metric,
pca, the signatures file path and sha256, n, ...), so a result can always be traced back.

uids are written and read with the csv module, so commas, quotes and spaces in a uid survive (the uid
rule is `data.collection.uid_problem`). Both files are written atomically (temp file, fsync, rename): a reader never sees half a file.

Every file present belongs to one clustering: a new one written over an older one first removes the older
clusters.csv, then its clusters.json and the reachability plot it names (`remove_previous`), and only then
writes clusters.json, clusters.csv and the plot, in that order. A kill at any moment leaves some of the old
files or some of the new ones, never an old plot beside a new clusters.csv. clusters.json records the plot
(`plot`, relative to its folder; null when the method draws none) so that the next run and `cluster report`
know which plot goes with it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_text, fsync_dir
from data.gc_policy import paused_collection

COLUMNS = ("uid", "cluster", "order", "reachability", "core_distance")


class ClustersFileError(ValueError):
    """A clusters.csv that cannot be used; the message names the file, the line and what to do."""


@dataclass
class ClusterTable:
    """A clustering result, row i = image i of the signatures file."""

    uids: list[str]
    labels: np.ndarray  # int64 (n,), -1 = noise
    order: np.ndarray  # int64 (n,), position of each row in the OPTICS ordering
    reachability: np.ndarray  # float64 (n,)
    core_distance: np.ndarray  # float64 (n,)
    params: dict = field(default_factory=dict)
    # the kNN lists the engine searched (indices, distances; not in clusters.csv: clusters.knn.npz beside it)
    neighbours: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.uids = [str(u) for u in self.uids]
        n = len(self.uids)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.order = np.asarray(self.order, dtype=np.int64)
        self.reachability = np.asarray(self.reachability, dtype=np.float64)
        self.core_distance = np.asarray(self.core_distance, dtype=np.float64)
        for name in ("labels", "order", "reachability", "core_distance"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"ClusterTable: {name} has shape {arr.shape}, expected ({n},) like uids.")
        if len(set(self.uids)) != n:
            raise ValueError("ClusterTable: duplicate uids; each image must appear once.")
        if n and np.any(self.labels < -1):
            raise ValueError("ClusterTable: labels must be >= -1 (-1 = noise).")

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def ordering(self) -> np.ndarray:
        """Row indices in OPTICS order (the inverse permutation of `order`)."""
        out = np.empty_like(self.order)
        out[self.order] = np.arange(len(self.order))
        return out

    def clusters(self) -> dict[int, list[str]]:
        """Members (uids) of each non-noise cluster, keyed by label; noise is left out."""
        out: dict[int, list[str]] = {}
        for u, lab in zip(self.uids, self.labels.tolist(), strict=True):
            if lab >= 0:
                out.setdefault(lab, []).append(u)
        return out


def sidecar_path(path: str | Path) -> Path:
    """clusters.csv -> clusters.json (same folder, same stem)."""
    path = Path(path)
    return path.with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))  # shortest round-trip representation: reading back gives the same float


def write_clusters(path: str | Path, table: ClusterTable) -> None:
    """Write clusters.csv and clusters.json atomically (the CSV last, so its presence means both are complete)."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # a uid may hold commas and quotes: the csv module quotes them
    w.writerow(COLUMNS)
    for u, lab, o, r, c in zip(
        table.uids,
        table.labels.tolist(),
        table.order.tolist(),
        table.reachability.tolist(),
        table.core_distance.tolist(),
        strict=True,
    ):
        w.writerow([u, lab, o, _fmt(r), _fmt(c)])
    params = dict(table.params)
    params.setdefault("n", len(table))
    atomic_write_text(sidecar_path(path), json.dumps(params, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(path, buf.getvalue())


def recorded_plot(path: str | Path) -> Path | None:
    """The reachability plot that clusters.json next to `path` names (None: none was drawn).

    Without a readable clusters.json, or one that predates the record, it is `reachability.png` beside
    clusters.csv: an older version always drew it there.
    """
    path = Path(path)
    try:
        params = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        params = None
    if not isinstance(params, dict) or "plot" not in params:
        return path.with_name("reachability.png")
    plot = params["plot"]
    return path.parent / plot if isinstance(plot, str) and plot else None


def _first_row(path: Path) -> list[str]:
    """The first CSV row of a file (undecodable bytes replaced), [] for an empty one."""
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff")
    return [h.strip() for h in next(csv.reader(io.StringIO(head.splitlines()[0] if head else "")), [])]


def check_out(path: str | Path) -> None:
    """Refuse an --out whose writing would replace a file that is not a clustering's: a clustering run again
    replaces its clusters.csv and clusters.json, and `--out COLLECTION/images.csv` once replaced a museum's
    images.csv. Raises ClustersFileError naming the file and what to pass instead."""
    path = Path(path)
    side = sidecar_path(path)
    if side == path:
        raise ClustersFileError(f"--out {path}: its clusters.json would be the file itself; pass --out a .csv "
                                f"file (e.g. {path.with_suffix('.csv')}).")
    if path.is_file() and _first_row(path) != list(COLUMNS):
        raise ClustersFileError(f"--out {path}: the file exists and is not a clusters.csv (its first line is not "
                                f"{','.join(COLUMNS)}), and clustering would replace it; pass --out a new file or "
                                "a clusters.csv written by `python -m cluster optics`.")
    if side.is_file():
        try:
            ours = isinstance(json.loads(side.read_text(encoding="utf-8")), dict)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ClustersFileError(f"--out {path}: {side} exists and is not a clusters.json, and clustering would "
                                    "replace it; pass --out a file in another folder or with another name.")


def remove_previous(path: str | Path, *also: Path) -> list[Path]:
    """Remove an earlier clustering written at `path`: clusters.csv first (so a clusters.json or plot never sits
    beside a clusters.csv of another run), then its clusters.json and plot, then `also` (the files the new run
    is about to write). Returns what was removed."""
    path = Path(path)
    old_plot = recorded_plot(path)
    removed = []
    for p in dict.fromkeys([path, sidecar_path(path), *([old_plot] if old_plot else []), *also]):
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except IsADirectoryError:  # not ours to remove; writing will say so
            continue
        removed.append(p)
    for folder in {p.parent for p in removed}:
        fsync_dir(folder)
    return removed


def _parse_float(text: str, path: Path, line: int, col: str) -> float:
    try:
        return float(text)  # accepts inf, -inf, nan
    except ValueError:
        raise ClustersFileError(
            f"{path}:{line}: column {col!r} is {text!r}, not a number (or inf/nan)."
        ) from None


def _parse_int(text: str, path: Path, line: int, col: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ClustersFileError(f"{path}:{line}: column {col!r} is {text!r}, not an integer.") from None


def _columns_at_once(reader):
    """(uids, labels, order, reachability, core distances) of a clean file's rows, or None if any row is not:
    a wrong number of fields, an empty or repeated uid, a number that does not parse, a label below -1 or an
    order that is not a permutation all leave it to `_columns_row_by_row`. One pass, the cells straight into
    five columns: no row is kept (10^6 rows held as lists were ~0.2 GB more at the peak)."""
    u: list[str] = []
    lab: list[str] = []
    o: list[str] = []
    r: list[str] = []
    c: list[str] = []
    appends = (u.append, lab.append, o.append, r.append, c.append)
    for row in reader:
        if len(row) != len(COLUMNS):
            if "".join(row).strip():
                return None
            continue  # a blank line
        for add, cell in zip(appends, row, strict=True):
            add(cell)
    if not u:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    uids = [x.strip() for x in u]
    n = len(uids)
    try:  # Python's own int() and float(), as the row-by-row reader: the same values, the same refusals
        labels, order = (np.fromiter(map(int, col), np.int64, n) for col in (lab, o))
        reach, core = (np.fromiter(map(float, col), np.float64, n) for col in (r, c))
    except (ValueError, OverflowError):
        return None
    if (not all(uids) or len(set(uids)) != n or labels.min() < -1
            or not np.array_equal(np.sort(order), np.arange(n))):  # fmt: skip
        return None
    return uids, labels, order, reach, core


def _columns_row_by_row(path: Path):
    """The columns of clusters.csv read row by row: raises ClustersFileError naming the first bad line."""
    uids: list[str] = []
    labels: list[int] = []
    order: list[int] = []
    reach: list[float] = []
    core: list[float] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if not row or not any(x.strip() for x in row):
                continue
            if len(row) != len(COLUMNS):
                raise ClustersFileError(f"{path}:{line}: {len(row)} fields, expected {len(COLUMNS)}.")
            u, lab, o, r, c = (x.strip() for x in row)
            if not u:
                raise ClustersFileError(f"{path}:{line}: empty uid.")
            uids.append(u)
            lab_i = _parse_int(lab, path, line, "cluster")
            if lab_i < -1:
                raise ClustersFileError(
                    f"{path}:{line}: cluster {lab_i} for uid {u!r}; labels are >= -1 (-1 = noise)."
                )
            labels.append(lab_i)
            order.append(_parse_int(o, path, line, "order"))
            reach.append(_parse_float(r, path, line, "reachability"))
            core.append(_parse_float(c, path, line, "core_distance"))
    seen: dict[str, int] = {}
    for i, u in enumerate(uids):
        if u in seen:
            raise ClustersFileError(f"{path}: uid {u!r} appears twice (rows {seen[u] + 1} and {i + 1}).")
        seen[u] = i
    n = len(uids)
    if n and sorted(order) != list(range(n)):
        raise ClustersFileError(f"{path}: the 'order' column must be a permutation of 0..{n - 1}.")
    return (uids, np.asarray(labels, np.int64), np.asarray(order, np.int64), np.asarray(reach, np.float64),
            np.asarray(core, np.float64))


def read_clusters(path: str | Path) -> ClusterTable:
    """Read clusters.csv (and clusters.json when present). Errors name the file and the line.

    A file that parses cleanly goes through whole columns at once (10^6 rows: ~0.8 s instead of ~5.6 s of
    Python per cell); anything the fast path cannot take is read again row by row, which finds the first bad
    line and says what is wrong with it."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh, paused_collection():  # 10^6 rows, no garbage
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != list(COLUMNS):
                raise ClustersFileError(f"{path}:1: the header must be {','.join(COLUMNS)}; found {header}.")
            columns = _columns_at_once(reader)
    except OSError as e:
        raise ClustersFileError(
            f"{path}: cannot open ({e.strerror}). Make it with `python -m cluster optics SIGNATURES --out {path}`."
        ) from e
    if columns is None:
        columns = _columns_row_by_row(path)  # raises, naming the line, where the fast path gave up
    uids, labels, order, reach, core = columns
    params: dict = {}
    side = sidecar_path(path)
    if side.exists():
        try:
            params = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ClustersFileError(
                f"{side}: not valid JSON ({e}); delete it or re-run the clustering."
            ) from e
    return ClusterTable(
        uids=uids,
        labels=np.asarray(labels, dtype=np.int64),
        order=np.asarray(order, dtype=np.int64),
        reachability=np.asarray(reach, dtype=np.float64),
        core_distance=np.asarray(core, dtype=np.float64),
        params=params,
    )
