"""The signature store: the one file format written by `model embed` and `train`, read by every stage.

A store is an uncompressed `.npz` (NumPy's zip of `.npy` members, what `np.savez` writes), `signatures.npz`:
- `uids`: unicode strings, in images.csv order (skipped images left out);
- `vectors`: (n, d), one unit-norm row per uid, float32, or float16 when written with `dtype="float16"`
  (half the disk and page cache: 1M x 2048 is 4 GB instead of 8 GB; rows keep a norm within 5e-4 of 1);
- `skipped`: the uids that could not be read (reported, never replaced by zeros);
- `meta`: a JSON string (architecture, resolution, weights, ...), for provenance.

Why this layout, not a folder of .npy files: it is the file every earlier version wrote (they all still
read, and this version's files read in NumPy alone: `np.load(path)["vectors"]`), it is ONE file (atomic
rename, sha256 provenance in clusters.json, command-line arguments that name a file), and a member stored
without compression is one contiguous byte range of the file, so `vectors` is memory-mapped straight out
of the zip. The writer pads the member's local header (an alignment extra field, as Android's zipalign
does) so that the rows start on a 64-byte boundary of the file.

Reading (`load_signatures`): the uids, skipped and meta are read; `vectors` becomes a read-only
`np.memmap` in the stored dtype, never read whole unless a caller asks. Consumers take float32 rows per
block (`Signatures.rows`, `Signatures.blocks`; a float32 store gives them without a copy, a float16 one
upcasts each block) or the whole matrix in float32 (`Signatures.dense`) when they need it. Upcasting per
block, not on load: a float32 copy of a float16 store is exactly the memory float16 was chosen to save.
The checks (finite rows, unit norm, one row per uid) stream through the file block by block with plain
reads, so loading costs O(block) memory and the mapping's pages are not touched.
Files compressed by another tool (`np.savez_compressed`) or holding another dtype are read whole (into
float32), as before.

Writing (`save_signatures`) streams the rows block by block into a temp file renamed into place
(`data.atomic`). A long writer (`model embed` over an archive) builds the store chunk by chunk in a
folder beside it, `signatures.npz.parts/` (`StoreParts`): each chunk covers a fixed range of images.csv
rows and is written atomically, a manifest records what is being computed (the fingerprint), and the
chunks are merged into the store once all exist; a killed writer resumes from the chunks on disk.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from data.atomic import atomic_write, atomic_write_text, fsync_dir, lock_folder, unlock_folder

STORE_DTYPES = ("float32", "float16")
NORM_TOLERANCE = 1e-3  # float16 storage moves a unit row's norm by at most 2**-11 ~ 4.9e-4
BLOCK_BYTES = 64 << 20  # what a blockwise reader holds at once (float32)
ALIGN = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)  # a fixed member time: the same signatures give the same bytes
_PAD_FIELD = 0xD935  # the zip extra field id Android's zipalign uses for alignment padding
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header (30 bytes)


def block_rows(dim: int) -> int:
    """Rows per block so that a float32 block is about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (4 * max(1, dim)))


@dataclass
class Signatures:
    """Signatures in memory, or memory-mapped from a store (`vectors` is then a read-only np.memmap).

    `vectors` is kept in its dtype when that is float32 or float16 (a store's dtype); anything else is
    converted to float32.
    """

    uids: list[str]
    vectors: np.ndarray
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # (file, byte offset) of C-ordered rows in a store: blocks are then read from the file, not the mapping
    source: tuple[Path, int] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        v = self.vectors
        if not (isinstance(v, np.ndarray) and v.dtype.name in STORE_DTYPES and v.dtype.isnative):
            v = np.asarray(v, dtype=np.float32)
        self.vectors = v
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.uids):
            raise ValueError(
                f"signatures: {len(self.uids)} uids but vectors of shape {self.vectors.shape}; expected ({len(self.uids)}, d)."
            )
        dup = first_duplicate(self.uids)
        if dup is not None:
            raise ValueError(f"signatures: uid {dup!r} appears twice; each image must appear once.")

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> str:
        """How the rows are stored: "float32" or "float16"."""
        return self.vectors.dtype.name

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.uids)}

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32: a read-only view of a float32 store, an upcast copy of a float16 one."""
        return np.asarray(self.vectors[start:stop], dtype=np.float32)

    def blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 rows) block by block, about BLOCK_BYTES each (or `rows` rows): memory O(block).

        A store's blocks are read from its file with plain reads, so the mapping's pages stay untouched
        (a whole pass over a 8 GB store leaves the process's resident memory where it was).
        """
        step = rows or block_rows(self.dim)
        for start in range(0, len(self), step):
            stop = min(len(self), start + step)
            yield start, self._read(start, stop) if self.source is not None else self.rows(start, stop)

    def _read(self, start: int, stop: int) -> np.ndarray:
        path, offset = self.source
        item = self.vectors.dtype.itemsize * self.dim
        with open(path, "rb") as fh:
            fh.seek(offset + start * item)
            raw = np.fromfile(fh, dtype=self.vectors.dtype, count=(stop - start) * self.dim)
        if raw.size != (stop - start) * self.dim:
            raise ValueError(f"{path}: the file ends inside the signature rows (a truncated copy?)")
        return raw.reshape(stop - start, self.dim).astype(np.float32, copy=False)

    def dense(self) -> np.ndarray:
        """All rows as one float32 array in memory (n x d x 4 bytes: ask for it only where it fits)."""
        if self.source is None:
            return np.array(self.vectors, dtype=np.float32)
        out = np.empty((len(self), self.dim), np.float32)  # filled block by block: no second copy
        for start, block in self.blocks():
            out[start:start + len(block)] = block
        return out


def first_duplicate(uids: list[str]) -> str | None:
    """The first uid that appears a second time (in file order), or None."""
    seen: set[str] = set()
    for u in uids:
        if u in seen:
            return u
        seen.add(u)
    return None


class DuplicateUidError(ValueError):
    """A signatures file with two rows for one uid; the message names the file and the uid."""


def _refuse_duplicates(path: Path, uids: list[str]) -> None:
    """Two rows for one uid: which one is the image? A file made by another tool or joined by hand."""
    dup = first_duplicate(uids)
    if dup is not None:
        rows = [i + 1 for i, u in enumerate(uids) if u == dup]
        raise DuplicateUidError(
            f"{path}: uid {dup!r} appears {len(rows)} times (rows {', '.join(map(str, rows[:5]))}); each image must "
            f"appear once. Was the file joined from two embeddings? Make it again with `python -m model embed` "
            f"(one row per image of images.csv)."
        )


# --- writing ------------------------------------------------------------------------------------------------


def store_dtype(dtype) -> np.dtype:
    """The stored dtype for a name or dtype; only float32 and float16 are store dtypes."""
    name = np.dtype(dtype).name
    if name not in STORE_DTYPES:
        raise ValueError(f"signatures are stored as {' or '.join(STORE_DTYPES)}, not {name}.")
    return np.dtype(name)


def _member_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _write_array(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    with zf.open(_member_info(f"{name}.npy"), "w", force_zip64=True) as fh:
        npy.write_array(fh, arr, allow_pickle=False)


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """A member whose data (after its local header and a 64-byte-multiple npy header) starts aligned."""
    info = _member_info(name)
    # local header, name, our field's 4 bytes, then the zip64 sizes field (20 bytes) zipfile adds
    header = _LOCAL_HEADER.size + len(name.encode("ascii")) + 4 + 20
    pad = (-(zf.fp.tell() + header)) % ALIGN
    info.extra = struct.pack("<HH", _PAD_FIELD, pad) + b"\0" * pad
    return info


def write_store(path: Path, uids: list[str], skipped: list[str], meta: dict, dtype, dim: int,
                blocks: Iterable[np.ndarray]) -> None:
    """Write a store to `path` (not atomically: callers pass a temp path) from rows given block by block."""
    dt = store_dtype(dtype)
    n = len(uids)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_array(zf, "uids", np.asarray(uids, dtype=np.str_))
        with zf.open(_aligned_info(zf, "vectors.npy"), "w", force_zip64=True) as fh:
            npy.write_array_header_1_0(fh, {"descr": npy.dtype_to_descr(dt), "fortran_order": False,
                                            "shape": (n, int(dim))})
            written = 0
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=dt)
                if block.ndim != 2 or block.shape[1] != dim:
                    raise ValueError(f"signature rows of shape {block.shape}; expected (k, {dim}).")
                fh.write(block.tobytes())
                written += len(block)
            if written != n:
                raise ValueError(f"{written} signature rows for {n} uids.")
        _write_array(zf, "skipped", np.asarray(skipped, dtype=np.str_))
        _write_array(zf, "meta", np.asarray(json.dumps(meta, sort_keys=True)))


def save_signatures(path: str | Path, sig: Signatures, *, dtype: str | None = None) -> None:
    """Write atomically (`data.atomic`) so a killed writer never leaves half a file; rows are streamed block
    by block (a memory-mapped store is copied without being loaded). `dtype`: "float32" or "float16";
    default: the dtype the rows are held in."""
    dt = store_dtype(dtype or sig.vectors.dtype)
    atomic_write(path, lambda tmp: write_store(tmp, sig.uids, sig.skipped, sig.meta, dt, sig.dim,
                                               (b for _, b in sig.blocks())))


# --- reading ------------------------------------------------------------------------------------------------


def _read_member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(f"{name}.npy") as fh:
        return npy.read_array(fh, allow_pickle=False)


def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy.read_magic(fh)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    return read(fh)


def _mapped_vectors(path: Path, zf: zipfile.ZipFile) -> tuple[np.ndarray, int | None]:
    """(vectors, byte offset of C-ordered rows or None): memory-mapped when the member is stored
    uncompressed, else read whole (a compressed file of another tool)."""
    info = zf.getinfo("vectors.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return _read_member(zf, "vectors"), None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            raise ValueError("the vectors' zip header is damaged")
        fields = _LOCAL_HEADER.unpack(head)
        start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
        fh.seek(start)
        shape, fortran, dtype = _npy_header(fh)
        offset = fh.tell()
    if dtype.hasobject or len(shape) != 2:
        raise ValueError(f"vectors of dtype {dtype} and shape {shape}; expected numbers of shape (n, d)")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if offset - start + nbytes != info.file_size or offset + nbytes > path.stat().st_size:
        raise ValueError("the vectors member is shorter than its header says (a truncated copy?)")
    if nbytes == 0:
        return np.zeros(shape, dtype), None
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    return mm, None if fortran else offset


def _read_store(path: Path) -> Signatures:
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        uids = [str(u) for u in _read_member(zf, "uids")]
        skipped = [str(u) for u in _read_member(zf, "skipped")] if "skipped.npy" in names else []
        meta = json.loads(str(_read_member(zf, "meta"))) if "meta.npy" in names else {}
        vectors, offset = _mapped_vectors(path, zf)
    _refuse_duplicates(path, uids)
    kept = vectors.dtype.name in STORE_DTYPES and vectors.dtype.isnative
    source = (path.absolute(), offset) if offset is not None and kept else None
    return Signatures(uids=uids, vectors=vectors, skipped=skipped, meta=meta, source=source)


def _refuse_non_finite(path: Path, sig: Signatures, first: int, count: int) -> None:
    """NaN/inf rows would flow on as a wrong mAP or a clustering crash far from their cause: stop here.

    (The unit-norm check cannot catch them: every comparison with NaN is False.)
    """
    raise ValueError(
        f"{path}: {count} of {len(sig)} signature rows are not finite (NaN or inf; first: uid "
        f"{sig.uids[first]!r}). The network that wrote them was broken (a run whose loss became NaN?): "
        f"recompute them with `python -m model embed` or from a good run's weights."
    )


def _refuse_not_unit(path: Path, sig: Signatures, first: int, norm: float, count: int) -> None:
    raise ValueError(
        f"{path}: {count} of {len(sig)} rows are not unit-norm (first: uid {sig.uids[first]!r}, norm "
        f"{norm:.4g}); signatures are L2-normalised rows, as `python -m model embed` and "
        f"`python -m train` write them. Make the file again with one of them, or, if the vectors come "
        f"from another tool, divide each row by its length before saving it."
    )


def check_rows(path: Path, sig: Signatures, *, check_norm: bool = True) -> None:
    """Every row finite and (with `check_norm`) of unit L2 norm within NORM_TOLERANCE, block by block.

    A NaN anywhere is reported before a wrong norm: it is the graver fault, and the count in each message
    is over the whole file.
    """
    non_finite, first_bad = 0, None
    not_unit, first_norm = 0, None
    for start, block in sig.blocks():
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            non_finite += bad.size
            first_bad = start + bad[0] if first_bad is None else first_bad
        if check_norm and non_finite == 0:
            norms = np.linalg.norm(block, axis=1)
            off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
            not_unit += off.size
            if off.size and first_norm is None:
                first_norm = (start + off[0], float(norms[off[0]]))
    if non_finite:
        _refuse_non_finite(path, sig, int(first_bad), non_finite)
    if not_unit:
        _refuse_not_unit(path, sig, first_norm[0], first_norm[1], not_unit)


def load_signatures(path: str | Path, *, check_norm: bool = True, check_rows_now: bool = True) -> Signatures:
    """Read a store (memory-mapped; see the module docstring); rows must be finite and, with `check_norm`,
    of unit L2 norm (within NORM_TOLERANCE). The checks read the file block by block: memory O(block).

    check_rows_now=False: no pass over the rows here, for a reader that touches only the few rows it needs of a
    file that was checked when it was made and clustered (the annotation page's nearest members: a whole pass
    is 8 GB at 10^6 x 2048); such a reader checks the rows it reads itself."""
    path = Path(path)
    try:
        sig = _read_store(path)
    except DuplicateUidError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # BadZipFile: a truncated file
        raise ValueError(
            f"{path}: not a signatures file, or a damaged one ({e}). Make it again with `python -m model embed` "
            f"or `python -m train`."
        ) from e
    if check_rows_now:
        check_rows(path, sig, check_norm=check_norm)
    return sig


# --- a store built chunk by chunk ---------------------------------------------------------------------------


PARTS_SUFFIX = ".parts"
PARTS_FORMAT = "visual-signatures-parts"
_CHUNK = re.compile(r"chunk-(\d{6,})\.npz")


class PartsMismatchError(ValueError):
    """An unfinished store beside the output was started with other settings; the message says which."""


class PartsBusyError(ValueError):
    """Another run is writing the same store now (it holds the lock on `OUT.parts/`)."""


def lock_parts(parts: StoreParts, out: str | Path) -> int | None:
    """Hold `OUT.parts/` for this run (an exclusive `flock` on the folder, released when the process ends or
    `unlock_parts` is called): two runs into one output would each compute every chunk, and one would merge
    and remove the folder under the other. A file system without locks (some network mounts) is not
    locked. Only the process that merges (process 0) takes it; the other hosts' processes share the folder."""
    return lock_folder(parts.folder, lambda: PartsBusyError(
        f"{parts.folder}: another `model embed` is writing {out} right now; wait for it to finish, or give this "
        f"run another --out."))


def unlock_parts(fd: int | None) -> None:
    unlock_folder(fd)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk k covers images.csv rows [k * chunk_rows, (k + 1) * chunk_rows); process p of P computes the
    chunks k with k % P == p, so a resume may use another number of processes."""

    rows: int
    chunk_rows: int

    @property
    def count(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def span(self, k: int) -> tuple[int, int]:
        return k * self.chunk_rows, min(self.rows, (k + 1) * self.chunk_rows)

    def mine(self, process: int, processes: int) -> list[int]:
        return [k for k in range(self.count) if k % processes == process]


@dataclass(frozen=True)
class Chunk:
    """One chunk's result: the rows read (uids, vectors), the rows skipped and why, the decoder's notes."""

    uids: list[str]
    vectors: np.ndarray
    skipped: list[str]
    notes: list[tuple[str, str, list[str]]]  # (uid, file, what the decoder corrected)
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (file, why) per skipped uid


@dataclass(frozen=True)
class StoreParts:
    """`OUT.parts/`: an unfinished store. `manifest.json` (what is computed, the chunk layout) is written
    before any chunk; each `chunk-NNNNNN.npz` is written atomically, so a chunk on disk is complete."""

    folder: Path

    @classmethod
    def beside(cls, out: str | Path) -> StoreParts:
        out = Path(out)
        return cls(out.with_name(out.name + PARTS_SUFFIX))

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    def chunk(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.npz"

    def start(self, fingerprint: dict, plan: ChunkPlan, dim: int) -> ChunkPlan:
        """Begin, or continue what a killed run began: the chunk plan in force (the manifest's on a resume).

        A folder made for other inputs (fingerprint) is refused: mixing its chunks with new ones would give
        a store of two networks, or of two collections. A folder without a manifest is what a finished
        merge's clean-up left when killed: its files are removed.
        """
        want = {"format": PARTS_FORMAT, "fingerprint": fingerprint, "rows": plan.rows,
                "chunk_rows": plan.chunk_rows, "dim": int(dim)}
        if self.manifest.exists():
            try:
                have = json.loads(self.manifest.read_text(encoding="utf-8"))
                old = have["fingerprint"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise PartsMismatchError(f"{self.manifest}: unreadable ({e}); delete the folder {self.folder} "
                                         f"to start again.") from e
            diff = _differences(old, fingerprint)
            if diff:
                raise PartsMismatchError(
                    f"{self.folder} holds an unfinished embedding made with other settings ({'; '.join(diff)}). "
                    f"Run the command as it was started to finish it, or delete the folder {self.folder} to "
                    f"start again with these settings.")
            return ChunkPlan(int(have["rows"]), int(have["chunk_rows"]))
        if self.folder.exists():
            self._clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest, json.dumps(want, indent=1, sort_keys=True))
        return plan

    def done(self) -> set[int]:
        """Chunks on disk (each complete: written atomically)."""
        if not self.folder.is_dir():
            return set()
        return {int(m.group(1)) for p in self.folder.iterdir() if (m := _CHUNK.fullmatch(p.name))}

    def write(self, k: int, chunk: Chunk, dtype) -> None:
        vectors = np.asarray(chunk.vectors, dtype=store_dtype(dtype))
        atomic_write(self.chunk(k), lambda tmp: np.savez(
            tmp, uids=np.asarray(chunk.uids, dtype=np.str_), vectors=vectors,
            skipped=np.asarray(chunk.skipped, dtype=np.str_),
            notes=np.asarray(json.dumps([list(n) for n in chunk.notes])),
            reasons=np.asarray(json.dumps([list(r) for r in chunk.reasons]))))

    def read(self, k: int, *, vectors: bool = True) -> Chunk:
        """Chunk k (without its vectors when `vectors` is False); a damaged chunk is a clear error."""
        path = self.chunk(k)
        try:
            with np.load(path, allow_pickle=False) as z:
                return Chunk([str(u) for u in z["uids"]], z["vectors"] if vectors else np.zeros((0, 0)),
                             [str(u) for u in z["skipped"]], [tuple(n) for n in json.loads(str(z["notes"]))],
                             [tuple(r) for r in json.loads(str(z["reasons"]))])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: damaged ({e}); delete this file and run the command again (its rows are "
                             f"computed again).") from e

    def merge(self, out: str | Path, count: int, meta: dict, dtype, dim: int) -> list[Chunk]:
        """Write the store `out` from chunks 0..count-1 (rows streamed chunk by chunk, memory O(chunk));
        returns each chunk's head (its vectors left out) for the report."""
        heads = [self.read(k, vectors=False) for k in range(count)]
        uids = [u for h in heads for u in h.uids]
        skipped = [u for h in heads for u in h.skipped]
        atomic_write(out, lambda tmp: write_store(tmp, uids, skipped, meta, dtype, dim,
                                                  (self.read(k).vectors for k in range(count))))
        return heads

    def _clear(self) -> None:
        for p in self.folder.iterdir():
            if p != self.manifest and p.is_file():
                p.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the folder, the manifest last: a kill here leaves either a resumable folder or, without a
        manifest, leftovers that the next `start` clears."""
        if not self.folder.exists():
            return
        self._clear()
        self.manifest.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            return
        fsync_dir(self.folder.parent)


def assemble(chunks: list[Chunk], dim: int, meta: dict) -> Signatures:
    """Signatures in memory from chunks in row order (the in-memory embedding's result)."""
    vectors = [c.vectors for c in chunks if len(c.uids)]
    return Signatures(uids=[u for c in chunks for u in c.uids],
                      vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32),
                      skipped=[u for c in chunks for u in c.skipped], meta=meta)
