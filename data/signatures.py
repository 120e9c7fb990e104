"""The signatures file: the one format shared by `model embed`, `train` and `cluster`.

`signatures.npz` holds
- `uids`: unicode strings, in images.csv order (skipped images left out);
- `vectors`: float32 (n, d), one unit-norm row per uid;
- `skipped`: the uids that could not be read (reported, never replaced by zeros);
- `meta`: a JSON string (architecture, resolution, weights, ...), for provenance.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.atomic import atomic_write


@dataclass
class Signatures:
    uids: list[str]
    vectors: np.ndarray
    skipped: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
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

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.uids)}


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


def save_signatures(path: str | Path, sig: Signatures) -> None:
    """Write atomically (`data.atomic`) so a killed writer never leaves half a file."""
    atomic_write(
        path,
        lambda tmp: np.savez(
            tmp,
            uids=np.asarray(sig.uids, dtype=np.str_),
            vectors=sig.vectors.astype(np.float32),
            skipped=np.asarray(sig.skipped, dtype=np.str_),
            meta=np.asarray(json.dumps(sig.meta, sort_keys=True)),
        ),
    )


def _refuse_non_finite(path: Path, sig: Signatures) -> None:
    """NaN/inf rows would flow on as a wrong mAP or a clustering crash far from their cause: stop here.

    (The unit-norm check below cannot catch them: every comparison with NaN is False.)
    """
    bad = np.flatnonzero(~np.isfinite(sig.vectors).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{path}: {bad.size} of {len(sig)} signature rows are not finite (NaN or inf; first: uid "
            f"{sig.uids[bad[0]]!r}). The network that wrote them was broken (a run whose loss became NaN?): "
            f"recompute them with `python -m model embed` or from a good run's weights."
        )


def load_signatures(path: str | Path, *, check_norm: bool = True) -> Signatures:
    """Read a signatures file; rows must be finite and, with `check_norm`, of unit L2 norm (within 1e-3)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            uids = [str(u) for u in z["uids"]]
            vectors = z["vectors"]
            skipped = [str(u) for u in z["skipped"]] if "skipped" in z else []
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
        _refuse_duplicates(path, uids)
        sig = Signatures(uids=uids, vectors=vectors, skipped=skipped, meta=meta)
    except DuplicateUidError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # BadZipFile: a truncated file
        raise ValueError(
            f"{path}: not a signatures file, or a damaged one ({e}). Make it again with `python -m model embed` "
            f"or `python -m train`."
        ) from e
    _refuse_non_finite(path, sig)
    if check_norm and len(sig):
        norms = np.linalg.norm(sig.vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if bad.size:
            raise ValueError(
                f"{path}: {bad.size} of {len(sig)} rows are not unit-norm (first: uid {uids[bad[0]]!r}, norm "
                f"{norms[bad[0]]:.4g}); signatures are L2-normalised rows, as `python -m model embed` and "
                f"`python -m train` write them. Make the file again with one of them, or, if the vectors come "
                f"from another tool, divide each row by its length before saving it."
            )
    return sig
