"""The search index: for every image its global signature and its regional signatures, on disk, memory-mapped.

Layout of an index folder (`model index --out INDEX`):

    INDEX/manifest.json         what was indexed and how (network, resolution, region grid, PCA), the parts
    INDEX/pca.npz               optional PCA-whitening learned on the collection (mean, projection)
    INDEX/parts/part-00000/     one part per chunk of images, written whole (`data.atomic.atomic_dir`):
        uids.json               the part's uids, in images.csv order
        global.npy              (n, D) float16: unit-norm whole-image signatures
        regions.npy             (n, R, D) float16: unit-norm region signatures, R = len(manifest["grid"])
        sizes.npy               (n, 2) int32: each picture's width and height as a person sees it (EXIF
                                orientation applied), to turn a region's fractions into pixels

Why parts: new images are appended as new parts without touching the old ones, and a killed `model index`
loses at most the part it was writing (the manifest is rewritten atomically after each part, so it lists
only complete parts; a part folder it does not list is a killed run's and is removed). Why float16: 10^6
images x 14 vectors x 512 dimensions (after PCA) is 14 GB in float16, 28 GB in float32; unit-norm rows keep
every cosine within ~1e-3 of its float32 value. Why one (n, R, D) array rather than a flat list of regions:
every image has the same grid (images are squash-resized to a square), so the owner of a region is its row.

Reading opens each array with `np.load(mmap_mode="r")`: nothing is read until a block is asked for, so
memory is O(block) whatever the index's size (`SearchIndex.blocks`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.atomic import atomic_dir, atomic_write, atomic_write_text

FORMAT = "visual-signatures-index"
VERSION = 1
STORE_DTYPE = np.float16


class IndexError_(ValueError):  # noqa: N801 - IndexError is a builtin with another meaning
    """An index folder that cannot be read or written as asked (the message says which file and what to do)."""


@dataclass(frozen=True)
class Pca:
    """PCA-whitening learned on the collection: x -> (x - mean) @ projection, then L2 (see `model.index_build`)."""

    mean: np.ndarray  # (raw_dim,) float32
    projection: np.ndarray  # (raw_dim, dim) float32: components divided by the square root of their variance

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Rows of raw signatures -> whitened unit rows (NumPy; the index's forward does the same on the device)."""
        y = (np.asarray(x, np.float32) - self.mean) @ self.projection
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


@dataclass
class Part:
    name: str
    folder: Path
    uids: list[str]
    global_: np.ndarray  # memory-mapped (n, D) float16
    regions: np.ndarray  # memory-mapped (n, R, D) float16
    sizes: np.ndarray  # (n, 2) int32

    @property
    def count(self) -> int:
        return len(self.uids)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise IndexError_(f"{path}: cannot read this part of the index ({e}); build the index again "
                          f"(`python -m model index ... --out` a new folder).") from None


def _read_part(folder: Path, regions: int, dim: int) -> Part:
    try:
        uids = json.loads((folder / "uids.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexError_(f"{folder / 'uids.json'}: cannot read it ({e}); build the index again.") from None
    part = Part(folder.name, folder, uids, _load_array(folder / "global.npy"), _load_array(folder / "regions.npy"),
                np.asarray(_load_array(folder / "sizes.npy")))
    n = len(uids)
    if (part.global_.shape != (n, dim) or part.regions.shape != (n, regions, dim) or part.sizes.shape != (n, 2)):
        raise IndexError_(f"{folder}: its arrays do not have the shapes the manifest says ({n} images, {regions} "
                          f"regions, {dim} dimensions); the index is damaged, build it again.")
    return part


@dataclass
class SearchIndex:
    """An index folder opened for reading (and appending): the manifest, the PCA, every part memory-mapped."""

    folder: Path
    manifest: dict
    pca: Pca | None
    parts: list[Part] = field(default_factory=list)
    _numbers: dict[str, int] | None = field(default=None, repr=False)

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path) -> SearchIndex:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            hint = (" (it is a signatures store, made by `model embed`; an index is made by `model index`)"
                    if folder.is_file() else "")
            target = folder if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())) else "NEW_FOLDER"
            raise IndexError_(f"{folder}: not a search index, no manifest.json{hint}. Make one with "
                              f"`python -m model index --collection C --weights W --out {target}`.")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise IndexError_(f"{path}: cannot read it ({e}); build the index again.") from None
        if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
            raise IndexError_(f"{path}: not an index this version reads (format {manifest.get('format')!r}, "
                              f"version {manifest.get('version')!r}); build it again with this version.")
        pca = None
        if manifest.get("pca"):
            try:
                with np.load(folder / "pca.npz") as z:
                    pca = Pca(z["mean"].astype(np.float32), z["projection"].astype(np.float32))
            except (OSError, ValueError, KeyError) as e:
                raise IndexError_(f"{folder / 'pca.npz'}: cannot read the index's PCA ({e}); the index is damaged: "
                                  f"build it again into a new --out.") from None
        index = cls(folder, manifest, pca)
        r, d = len(manifest["grid"]), manifest["dim"]
        index.parts = [_read_part(folder / "parts" / p["name"], r, d) for p in manifest["parts"]]
        return index

    # -- what it holds ----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def grid(self) -> np.ndarray:
        return np.asarray(self.manifest["grid"], np.float64).reshape(-1, 4)

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def uids(self) -> list[str]:
        return [u for p in self.parts for u in p.uids]

    def blocks(self, block: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first image number, (b, D) global, (b, R, D) regions) float16 blocks of at most `block` images, in
        order; each is read from the mapping only when reached."""
        start = 0
        for part in self.parts:
            for a in range(0, part.count, block):
                b = min(part.count, a + block)
                yield start + a, np.asarray(part.global_[a:b]), np.asarray(part.regions[a:b])
            start += part.count

    def size_of(self, number: int) -> tuple[int, int]:
        part, row = self.part_of(number)
        return int(part.sizes[row, 0]), int(part.sizes[row, 1])

    def uid_of(self, number: int) -> str:
        part, row = self.part_of(number)
        return part.uids[row]

    def number_of(self, uid: str) -> int | None:
        """The image's place in the index (0-based over all parts), or None when it is not indexed."""
        if self._numbers is None:
            self._numbers = {u: i for i, u in enumerate(self.uids)}
        return self._numbers.get(uid)

    def part_of(self, number: int) -> tuple[Part, int]:
        """(part, row in it) of the image at `number`."""
        for part in self.parts:
            if number < part.count:
                return part, number
            number -= part.count
        raise KeyError(number)

    def vectors_of(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """((D,), (R, D)) float32: the global and regional vectors of the image at `number`."""
        part, row = self.part_of(number)
        return np.asarray(part.global_[row], np.float32), np.asarray(part.regions[row], np.float32)

    def collection_of(self, number: int) -> str | None:
        part, _ = self.part_of(number)
        return next((p.get("collection") for p in self.manifest["parts"] if p["name"] == part.name), None)


# -- writing ----------------------------------------------------------------------------------------------------


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def write_pca(folder: Path, pca: Pca) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=pca.mean, projection=pca.projection)

    atomic_write(folder / "pca.npz", write)


def remove_unlisted_parts(folder: Path, manifest: dict) -> list[str]:
    """Part folders (and temp folders) the manifest does not list: a killed run's, removed; their names."""
    listed = {p["name"] for p in manifest.get("parts", [])}
    parts = folder / "parts"
    gone = []
    if parts.is_dir():
        for child in sorted(parts.iterdir()):
            if child.name not in listed:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
                gone.append(child.name)
    return gone


def append_part(folder: Path, manifest: dict, uids: list[str], global_: np.ndarray, regions: np.ndarray,
                sizes: np.ndarray, *, collection: str) -> dict:
    """Write one part (complete or absent after a kill), then list it in the manifest; the new manifest.
    `collection`: the folder its images came from (a box query on an indexed uid reads the image there)."""
    name = f"part-{len(manifest['parts']):05d}"

    def write(tmp: Path) -> None:
        (tmp / "uids.json").write_text(json.dumps(uids), encoding="utf-8")
        np.save(tmp / "global.npy", np.asarray(global_, STORE_DTYPE))
        np.save(tmp / "regions.npy", np.asarray(regions, STORE_DTYPE))
        np.save(tmp / "sizes.npy", np.asarray(sizes, np.int32))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())

    atomic_dir(folder / "parts" / name, write)
    entry = {"name": name, "count": len(uids), "collection": collection}
    manifest = {**manifest, "parts": [*manifest["parts"], entry]}
    write_manifest(folder, manifest)
    return manifest
