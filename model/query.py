"""A search query as a vector: an indexed image by uid, an image file, or a box (a detail) of either.

A uid without a box is answered from the index alone: its stored global signature is the query, and the
image itself is left out of the results. An image file, or a box, needs the pixels and the network: the
picture is decoded as every stage decodes it (`data.image`: EXIF orientation applied, so a box is in the
pixels a person sees), squash-resized to the index's resolution and embedded; the vector is whitened with
the index's PCA when it has one.

An image file without a box is embedded whole (a photograph of a detail is a picture of its own). A box is
pooled from the whole picture's feature map, exactly as the index pools its regions (each cell weighted by
how much of it the box covers), not cropped and embedded on its own: the pooled box sees the detail in its
context and at the scale of the picture, as the index's regions do. Measured on the demo (benchmarks/
RESULTS.md, box queries): another image of the source's pattern group came first for 37-64% of boxes
pooled, 7-12% of the same boxes cropped and embedded, and using both lost a little to the pooled box
alone; a user's trial found a box exactly on a stored region at cosine 0.37 from it as a crop, ~1 pooled.

The network is the one the index was built with (its manifest records the weights and a hash of every
parameter); a changed weights folder is refused, because its vectors could not be compared with the index's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.index import IndexError_, SearchIndex


class QueryError(ValueError):
    """A query that cannot be answered as given (the message says what to pass instead)."""


def parse_box(text: str) -> tuple[int, int, int, int]:
    """"X,Y,W,H" (pixels of the query image; spaces allowed) -> a box; W and H at least 1."""
    parts = [p.strip() for p in str(text).replace(" ", "").split(",")]
    try:
        x, y, w, h = (round(float(p)) for p in parts)
    except ValueError:
        raise QueryError(f"--box {text!r}: expected X,Y,W,H in pixels of the query image, e.g. --box 120,80,300,240") from None
    if w < 1 or h < 1:
        raise QueryError(f"--box {text!r}: width and height must be at least 1 pixel")
    return x, y, w, h


def clip_box(box: tuple[int, int, int, int], size: tuple[int, int], name: str) -> tuple[tuple[int, int, int, int], str | None]:
    """The box inside a (width, height) picture, and a warning when it had to be cut; refused when nothing of
    it lies inside or what is left is under 8 pixels a side (too small to mean anything to the network)."""
    x, y, w, h = box
    width, height = size
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise QueryError(f"--box {x},{y},{w},{h} leaves less than 8 x 8 pixels inside {name} ({width} x {height} "
                         f"pixels, as shown with its EXIF orientation); give a box inside the picture.")
    clipped = (x0, y0, x1 - x0, y1 - y0)
    note = None if clipped == box else (f"--box {x},{y},{w},{h} reaches outside {name} ({width} x {height}); "
                                        f"searching {clipped[0]},{clipped[1]},{clipped[2]},{clipped[3]}")
    return clipped, note


@dataclass(frozen=True)
class Query:
    vector: np.ndarray  # (D,) float32, unit norm, in the index's space
    uid: str | None
    image: str | None  # the query's file
    box: tuple[int, int, int, int] | None  # in the query image's pixels (after clipping)
    size: tuple[int, int] | None  # the query image's (width, height), when its pixels were read
    exclude: int | None  # the query's own place in the index (left out of the results)
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {"uid": self.uid, "image": self.image, "box": list(self.box) if self.box else None,
                "size": list(self.size) if self.size else None}


class Encoder:
    """The index's network, loaded on first use, turning pictures into query vectors."""

    def __init__(self, index: SearchIndex, weights: str | None = None) -> None:
        self.index = index
        self.weights = weights
        self._fn = None

    def _load(self):
        import jax
        from flax import nnx

        from model.embed import make_embed_fn, parameters_sha256
        from model.weights import WeightsError, load_or_init

        m = self.index.manifest
        recorded = m.get("weights") or {}
        weights = self.weights or recorded.get("weights")
        if not weights:
            raise QueryError(f"{self.index.folder}: the index does not record its weights; pass --weights W.")
        if weights != "random" and not Path(weights).exists():
            raise QueryError(f"{weights}: the weights this index was built with are not there any more; pass "
                             f"--weights with where they are now.")
        try:
            net = load_or_init(weights, m["arch"], seed=int(recorded.get("seed", 0)), pooling=m["pooling"],
                               dtype=m.get("compute_dtype", "float32"))
        except (WeightsError, ValueError) as e:
            raise QueryError(str(e)) from e
        if parameters_sha256(net) != m["parameters_sha256"]:
            raise QueryError(f"{weights}: not the weights the index {self.index.folder} was built with (their "
                             f"parameters differ), so a query's vector could not be compared with the index's; "
                             f"pass the index's weights with --weights, or index again with these.")
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        fn = make_embed_fn(graphdef)
        self._fn = lambda x: np.asarray(fn(params, rest, jax.numpy.asarray(x)), np.float32)
        self._fmap_fn = _feature_map_fn(graphdef)
        self._fmap = lambda x: np.asarray(self._fmap_fn(params, rest, jax.numpy.asarray(x)), np.float32)
        self._gem_p = None
        if net.pooling == "gem":
            self._gem_p = float(np.asarray(net.pool.p[...] if net.pool.learnable else net.pool.p))

    def _space(self, vec: np.ndarray) -> np.ndarray:
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
        if self.index.pca is not None:
            vec = self.index.pca.apply(vec[None])[0]
        return vec.astype(np.float32)

    def _pixels(self, picture) -> np.ndarray:
        from data.preprocess import squash_resize

        if self._fn is None:
            self._load()
        return np.asarray(squash_resize(picture, int(self.index.manifest["resolution"])), np.uint8)[None]

    def encode(self, picture) -> np.ndarray:
        """A PIL RGB picture -> its (D,) query vector in the index's space."""
        pixels = self._pixels(picture)  # loads the network on first use
        return self._space(self._fn(pixels)[0])

    def encode_pooled(self, picture, box: tuple[int, int, int, int]) -> np.ndarray:
        """The whole picture's feature map pooled over `box` (its pixels) like the index's regions -> (D,)."""
        pixels = self._pixels(picture)
        fmap = self._fmap(pixels)[0]  # (s, s, C)
        weights = box_weights(box, picture.size, fmap.shape[0])
        if self._gem_p is None:
            pooled = np.einsum("hwc,hw->c", fmap, weights)
        else:
            p = self._gem_p
            pooled = np.einsum("hwc,hw->c", np.maximum(fmap, 1e-6) ** p, weights) ** (1.0 / p)
        return self._space(pooled)


def box_weights(box: tuple[int, int, int, int], size: tuple[int, int], side: int) -> np.ndarray:
    """(side, side) weights summing to 1: how much of each feature-map cell the box covers (the map covers the
    whole picture, squashed to a square)."""
    x, y, w, h = box
    width, height = size

    def cover(a: float, b: float) -> np.ndarray:  # overlap of [a, b) (fractions) with each cell's span
        edges = np.arange(side + 1) / side
        return np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)

    wx, wy = cover(x / width, (x + w) / width), cover(y / height, (y + h) / height)
    weights = np.outer(wy, wx)
    return (weights / max(weights.sum(), 1e-12)).astype(np.float32)


def _feature_map_fn(graphdef):
    """jit(params, rest, uint8 images) -> the backbone's last feature map, in inference mode."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from data.preprocess import normalize
    from model.signature import set_mode

    def fmap(params, rest, images):
        net = nnx.merge(graphdef, params, rest)
        set_mode(net, training=False)
        return net.backbone(normalize(images, xp=jnp)).astype(jnp.float32)

    return jax.jit(fmap)


def _read_picture(path: Path, name: str):
    from data.image import ImageReadError, decode_image

    try:
        return decode_image(path, name=name).image
    except ImageReadError as e:
        raise QueryError(f"{e}; pass another image.") from None


def _candidate_folders(index: SearchIndex, number: int | None, collection: str | None) -> list[str]:
    """Where to look for a uid's image: --collection, else the indexed image's collection, else every
    collection the index was built from (a uid of images.csv that was never indexed: unreadable, or new)."""
    if collection:
        return [collection]
    if number is not None:
        return [f for f in [index.collection_of(number)] if f]
    return list(dict.fromkeys(p["collection"] for p in index.manifest["parts"] if p.get("collection")))


def _indexed_image_path(index: SearchIndex, uid: str, number: int | None, collection: str | None) -> Path:
    from data.collection import CollectionError, load_collection

    folders = _candidate_folders(index, number, collection)
    for folder in folders:
        try:
            coll = load_collection(folder, quiet=True)
        except (CollectionError, OSError) as e:
            raise QueryError(f"{folder}: cannot read the collection to find the image of uid {uid!r} ({e}); has it "
                             f"moved? Pass --collection with where it is now.") from None
        if uid in coll:
            return coll.image_path(uid)
    where = " or ".join(f"{f}/images.csv" for f in folders) or "no collection the index records"
    if number is not None:
        raise QueryError(f"uid {uid!r} is indexed, but {where} no longer lists it, so its picture cannot be read "
                         f"for a box; pass --collection C with a collection that lists it, or --image FILE.")
    raise QueryError(f"uid {uid!r} is in neither the index {index.folder} nor {where}; check the uid, or pass "
                     f"--collection C to read its image from C.")


def make_query(index: SearchIndex, *, uid: str | None = None, image: str | Path | None = None,
               box: tuple[int, int, int, int] | None = None, collection: str | None = None,
               encoder: Encoder | None = None) -> Query:
    """The query vector for `--uid` or `--image`, restricted to `box` when given (see the module docstring)."""
    if (uid is None) == (image is None):
        raise QueryError("pass exactly one of --uid UID or --image FILE.")
    number = index.number_of(uid) if uid is not None else None
    if uid is not None and box is None and number is not None:
        glob, _ = index.vectors_of(number)
        return Query(glob / max(np.linalg.norm(glob), 1e-12), uid, None, None, index.size_of(number), number)
    if image is not None:
        path, name = Path(image), str(image)
        if not path.is_file():
            raise QueryError(f"--image {image}: no such file.")
    else:
        path = _indexed_image_path(index, uid, number, collection)
        name = f"the image of uid {uid} ({path})"
    picture = _read_picture(path, name)
    size = picture.size
    notes: tuple[str, ...] = ()
    encoder = encoder or Encoder(index)
    try:
        if box is not None:
            box, note = clip_box(box, picture.size, name)
            notes = (note,) if note else ()
            vec = encoder.encode_pooled(picture, box)
        else:
            vec = encoder.encode(picture)
    except IndexError_ as e:
        raise QueryError(str(e)) from e
    return Query(vec, uid, str(path) if image is not None else None, box, size, number, notes)
