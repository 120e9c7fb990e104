"""Search by image and by detail (issue 15), measured: retrieval quality on the demo, and query latency at scale.

Two parts (`--part quality,latency`):

quality: an index of the collection (`model.index_build.build_index`) per weights and variant (PCA or not,
region scales), then
- crop queries: for each image (or `--crops N` of them, seeded), a crop of 20-40% of its area (seeded
  position and aspect, aspect ratio w/h of the crop's fractions in 1/2..2) saved as a JPEG and asked as
  `model search --image crop.jpg` is (`SearchService.ask(image=...)`; a file query leaves nothing out, so the
  source is among the candidates). Figures: the rank of the source (1 = first), recall@1/5/10 of the
  source, the median rank; the rank of the first image of the source's pattern group (the source or a
  connected copy: the demo pastes details of a source into other paintings, so a copy may rightly come
  first); the IoU of the box returned with the source with the crop's true box in the source's pixels (box
  None = the whole image); for scale, the IoU the whole image would give (the crop's area fraction) and
  the best IoU any region of the grid could give (the grid's ceiling). Diagnostics of why a box is or is
  not returned: the IoU of the source's best-scoring region (as if regions alone were compared) and the
  mean of (best region - global) on the source, as cosines and as the Searcher's calibrated z-scores
  (negative: the whole image wins, box None); the same crops ranked by global vectors alone, by regions
  alone, and by the uncalibrated max(global, region) cosine (what the Searcher did before calibration).
- box queries: each crop whose source has a partner in its pattern group also asked as a box of its source
  (`SearchService.ask(uid=SOURCE, box=crop_box)`, as `model search --uid U --box` is: the source left out,
  the box pooled from the source's whole feature map), against the same crop asked as the file above with
  the source dropped from its hits: the rank of the first partner (an image of the source's group other
  than itself), whether that hit came with a box; and the crop embedded on its own with the source left
  out (how box queries were answered before the pooled box).
- whole-image queries: every image with a partner in its pattern group (POSITIVE components joined by
  DUPLICATE edges, exactly train's `assign_splits` groups) queried by uid (its stored global vector, itself
  left out, as `model search --uid` does), mAP and recall@k by `train.metrics.summarize_ranks` (the figures
  of `train evaluate`) for global-only scoring (`train.metrics.partner_ranks` on the index's global
  vectors) and for the Searcher's max(global, regions) scoring, calibrated (as searched) and not; over all
  such images and over the test split (the demo's trained weights never saw it).

latency: synthetic unit vectors (float16, 1 + 13 vectors per image: scales 2,3) written as an index with
`model.index.append_part`, then `Searcher.search` timed for the streaming searcher (resident=False: the CLI,
blocks read from the memory-mapped parts per query) and the resident one (resident=True: the annotation
app), a batch of 1 and of `--batch` queries: median of `--reps` after a warm-up call (compilation; the
resident searcher's first call also moves the index to the device, timed apart as `load_s`), with the
index's size in GB and the process's peak RSS (which counts the mapped index pages the streaming searcher
touched). The index is deleted after each size; a size the disk cannot hold is skipped and said so.

Prints one JSON line per figure and one human line. Importable without grain, tfds, umap or flask (the
quality part needs grain through `model index`; the latency part needs only jax and numpy).

    python benchmarks/search.py --quick                                      # a small CPU run of both parts
    python benchmarks/search.py --part quality --collection demo-output/collection \\
        --weights demo-output/run/weights --weights random --pca 0,128,256
    python benchmarks/search.py --part latency --sizes 10000,100000 --dims 512
    python benchmarks/search.py --part latency --sizes 1000000 --dims 512     # a GPU (benchmarks/gpu.sh)
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # scale.PeakRss

RECALL_AT = (1, 5, 10)


def emit(record: dict, human: str) -> None:
    print(json.dumps(record), flush=True)
    print(human, flush=True)


def _machine() -> str:
    import jax

    return f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} on {jax.devices()[0].platform}"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


# -- boxes ------------------------------------------------------------------------------------------------------


def iou(a, b) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def random_crop(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of 20-40% of the picture's area: fractions fw x fh of its sides with fw fh = area and fw / fh
    log-uniform in 1/2..2 (clipped to the picture), at a uniform position."""
    width, height = size
    area = rng.uniform(0.2, 0.4)
    ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    fw = min(1.0, np.sqrt(area * ratio))
    fh = min(1.0, area / fw)
    fw = min(1.0, area / fh)
    w, h = max(8, round(fw * width)), max(8, round(fh * height))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return x, y, w, h


# -- quality ----------------------------------------------------------------------------------------------------


def build_demo(folder: Path) -> Path:
    """`python -m data demo` into `folder` (what a user runs), the collection's path."""
    r = subprocess.run([sys.executable, "-m", "data", "demo", str(folder)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"python -m data demo failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return folder


def make_crops(coll, uids: list[str], folder: Path, seed: int) -> list[dict]:
    """One crop per readable uid, saved as a JPEG: {uid, file, box (in the source's pixels, EXIF applied), size}."""
    from data.image import ImageReadError, decode_image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for uid in uids:
        try:
            picture = decode_image(coll.image_path(uid)).image
        except ImageReadError:  # not in the index either (`model index` skips it)
            continue
        x, y, w, h = random_crop(picture.size, rng)
        path = folder / f"{len(out):05d}.jpg"
        picture.crop((x, y, x + w, y + h)).save(path, quality=92)
        out.append({"uid": uid, "file": path, "box": (x, y, w, h), "size": picture.size})
    return out


def _whole(size) -> list[int]:
    return [0, 0, int(size[0]), int(size[1])]


def _mates(uid: str, group_of: dict[str, str], members: dict[str, set[str]]) -> set[str]:
    """The uid's pattern group (itself included)."""
    return members.get(group_of.get(uid, ""), {uid}) | {uid}


def crop_figures(service, crops: list[dict], group_of: dict[str, str], members: dict[str, set[str]],
                 answers: dict[str, list] | None = None) -> dict:  # fmt: skip
    """Rank of each crop's source and of its group's first image, the IoU of the source's box (see the
    module docstring), over `crops` queried as image files; each crop's hits go into `answers` (by uid)."""
    from model.regions import box_in_pixels

    index = service.index
    grid = index.grid
    n = index.count
    cal = service.searcher.calibration
    ranks, group_ranks, ious, ious_top1, won, ceiling, whole = [], [], [], [], [], [], []
    margin, cal_margin, best_region_iou = [], [], []
    alt = {"global_only": [], "regions_only": [], "uncalibrated": []}
    all_glob, all_regions = _all_vectors(index)
    crops = [c for c in crops if index.number_of(c["uid"]) is not None]
    t0 = time.perf_counter()
    for c in crops:
        answer = service.ask(image=c["file"], k=n)
        hits = answer.hits
        if answers is not None:
            answers[c["uid"]] = hits
        order = [h.uid for h in hits]
        rank = order.index(c["uid"]) + 1
        mates = _mates(c["uid"], group_of, members)
        group_ranks.append(next(i + 1 for i, u in enumerate(order) if u in mates))
        hit = hits[rank - 1]
        size = index.size_of(hit.number)
        box = hit.box if hit.box is not None else _whole(size)
        ranks.append(rank)
        ious.append(iou(box, c["box"]))
        if rank == 1:
            ious_top1.append(ious[-1])
        won.append(hit.box is not None)
        whole.append(iou(_whole(size), c["box"]))
        region_ious = [iou(box_in_pixels(g, size), c["box"]) for g in grid]
        ceiling.append(max([whole[-1], *region_ious]))
        glob, regions = index.vectors_of(hit.number)
        scores = regions @ answer.query.vector
        margin.append(float(scores.max() - glob @ answer.query.vector))
        g_mean, g_inv, r_mean, r_inv = cal.z()  # the Searcher's scores: z-scores against unrelated images
        cal_margin.append(float((scores.max() - r_mean) * r_inv - (glob @ answer.query.vector - g_mean) * g_inv))
        best_region_iou.append(region_ious[int(scores.argmax())])
        src = index.number_of(c["uid"])
        g_all, r_all = all_glob @ answer.query.vector, (all_regions @ answer.query.vector).max(1)
        for name, sc in (("global_only", g_all), ("regions_only", r_all), ("uncalibrated", np.maximum(g_all, r_all))):
            alt[name].append(1 + int(np.sum(sc > sc[src])))
    secs = time.perf_counter() - t0
    r = np.asarray(ranks)
    out = {"crops": len(crops), "seconds_per_query": round(secs / max(1, len(crops)), 4)}
    out.update({f"recall@{k}": round(float(np.mean(r <= k)), 4) for k in RECALL_AT})
    out.update({
        "median_rank": float(np.median(r)), "mean_rank": round(float(np.mean(r)), 2),
        "mrr": round(float(np.mean(1.0 / r)), 4),
        "group_recall@1": round(float(np.mean(np.asarray(group_ranks) <= 1)), 4),
        "group_median_rank": float(np.median(group_ranks)),
        "iou_mean": round(float(np.mean(ious)), 4), "iou_median": round(float(np.median(ious)), 4),
        "iou_mean_at_rank1": round(float(np.mean(ious_top1)), 4) if ious_top1 else None,
        "region_won": round(float(np.mean(won)), 4),
        "iou_whole_image_mean": round(float(np.mean(whole)), 4),
        "iou_grid_ceiling_mean": round(float(np.mean(ceiling)), 4),
        "iou_best_region_mean": round(float(np.mean(best_region_iou)), 4),
        "best_region_minus_global_mean": round(float(np.mean(margin)), 4),
        "calibrated_best_region_minus_global_mean": round(float(np.mean(cal_margin)), 4),
        "calibration": cal.as_json(),
    })  # fmt: skip
    for name, alt_ranks in alt.items():  # the same crops scored by one kind of vector alone
        a = np.asarray(alt_ranks)
        out[name] = {**{f"recall@{k}": round(float(np.mean(a <= k)), 4) for k in RECALL_AT},
                     "median_rank": float(np.median(a))}
    return out


def _first_partner(hits: list, partners: set[str]) -> tuple[int, bool]:
    """(1-based rank among `hits` of the first hit in `partners`, whether that hit came with a box); rank
    len(hits) + 1, no box, when none is returned."""
    for i, h in enumerate(hits):
        if h.uid in partners:
            return i + 1, h.box is not None
    return len(hits) + 1, False


def _partner_stats(found: list[tuple[int, bool]]) -> dict:
    r = np.asarray([f[0] for f in found])
    return {**{f"partner_recall@{k}": round(float(np.mean(r <= k)), 4) for k in RECALL_AT},
            "partner_median_rank": float(np.median(r)), "partner_mrr": round(float(np.mean(1.0 / r)), 4),
            "box_returned": round(float(np.mean([f[1] for f in found])), 4)}  # fmt: skip


def box_figures(service, crops: list[dict], group_of: dict[str, str], members: dict[str, set[str]],
                file_answers: dict[str, list]) -> dict:  # fmt: skip
    """Each crop asked as a box of its source (`ask(uid=SOURCE, box=crop)`, the source left out) against the
    same crop asked as a file (`file_answers`, the source dropped from its hits): the rank of the first
    other image of the source's pattern group and whether that hit came with a box, over crops whose source
    has one; and, for comparison, the crop embedded on its own (what a box query was before it was pooled from
    the whole picture's feature map), the source left out."""
    from model.query import make_query

    n = service.index.count
    found: dict[str, list[tuple[int, bool]]] = {"file": [], "box": [], "box_crop_vector": []}
    crops = [c for c in crops if c["uid"] in file_answers and len(_mates(c["uid"], group_of, members)) > 1]
    t0 = time.perf_counter()
    for c in crops:
        partners = _mates(c["uid"], group_of, members) - {c["uid"]}
        answer = service.ask(uid=c["uid"], box=c["box"], k=n)
        found["box"].append(_first_partner(answer.hits, partners))
        crop = make_query(service.index, image=c["file"], encoder=service.encoder).vector
        alone = service.searcher.search(crop[None], n, [answer.query.exclude])[0]
        found["box_crop_vector"].append(_first_partner(alone, partners))
        found["file"].append(_first_partner([h for h in file_answers[c["uid"]] if h.uid != c["uid"]], partners))
    secs = time.perf_counter() - t0
    out = {"box_queries": len(crops), "seconds_per_box_query": round(secs / max(1, len(crops)), 4)}
    out.update({name: _partner_stats(f) for name, f in found.items() if f})
    return out


def _all_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """Every image's global (n, D) and regional (n, R, D) vectors as float32 (a small index only)."""
    return (np.concatenate([np.asarray(p.global_, np.float32) for p in index.parts]),
            np.concatenate([np.asarray(p.regions, np.float32) for p in index.parts]))


def _rank_table(numbers: np.ndarray, n: int) -> np.ndarray:
    """(Q, k) result numbers (-1: none) -> (Q, n) 1-based rank of every image (n + 1: not returned)."""
    table = np.full((len(numbers), n), n + 1, np.int64)
    for q, row in enumerate(numbers):
        ok = row >= 0
        table[q, row[ok]] = np.arange(1, ok.sum() + 1)
    return table


def group_figures(index, coll) -> dict:
    """mAP etc. (train.metrics) of whole-image uid queries, global-only vs the Searcher's global+regions."""
    from data.splits import assign_splits, load_previous
    from model.search import Calibration, Searcher
    from train.metrics import partner_ranks, split_queries, summarize_ranks

    assignment = assign_splits(coll, load_previous(coll))
    group = {m: name for name, members in assignment.groups.items() for m in members}
    uids = index.uids
    glob = np.concatenate([np.asarray(p.global_, np.float32) for p in index.parts])
    searchers = {"global+regions": Searcher(index, resident=True),  # calibrated where the index is PCA-whitened
                 "global+regions uncalibrated": Searcher(index, resident=True, calibration=Calibration())}
    out = {}
    for split in ("all", "test"):
        split_of = {u: "all" for u in uids} if split == "all" else assignment.split_of
        queries, partners = split_queries(uids, group, split_of, split)
        if not len(queries):
            continue
        keep = ("num_queries", "mAP", "recall@1", "recall@5", "recall@10", "hit@1", "median_first_rank")
        g_only = summarize_ranks(partner_ranks(glob, queries, partners))
        out[split] = {"global": {k: round(g_only[k], 4) for k in keep}}
        for name, searcher in searchers.items():
            _, numbers, _ = searcher.top_k(glob[queries], len(uids), exclude=[int(q) for q in queries])
            table = _rank_table(numbers, len(uids))
            both = summarize_ranks([np.sort(table[i, p]) for i, p in enumerate(partners)])
            out[split][name] = {k: round(both[k], 4) for k in keep}
    return out


def load_net(weights: str, arch: str, seed: int):
    from model.weights import load_or_init

    return load_or_init(weights, None if weights != "random" else arch, seed=seed)


def _resolution(weights: str, resolution: int | None) -> int:
    from model.weights import recorded_resolution

    if resolution:
        return resolution
    return (recorded_resolution(weights) if weights != "random" else None) or 224


def quality(coll_dir: Path, weights_list: list[str], variants: list[tuple[int, tuple[int, ...]]], args: dict,
            work: Path) -> None:  # fmt: skip
    from data.collection import load_collection
    from data.graph import pattern_groups
    from model.index_build import IndexSettings, build_index
    from model.search_service import SearchService

    coll = load_collection(coll_dir, quiet=True)
    rng = np.random.default_rng(args["seed"])
    uids = list(coll.uids)
    if args["crops"] and args["crops"] < len(uids):
        uids = sorted(rng.choice(uids, size=args["crops"], replace=False).tolist())
    crops = make_crops(coll, uids, work / "crops", args["seed"])
    group_of = pattern_groups(coll, with_duplicates=True)
    members: dict[str, set[str]] = {}
    for u, g in group_of.items():
        members.setdefault(g, set()).add(u)
    for weights in weights_list:
        res = _resolution(weights, args["resolution"])
        net = load_net(weights, args["arch"], args["seed"])
        wname = weights if weights == "random" else str(Path(weights).absolute())
        for pca, scales in variants:
            out = work / f"index-{len(list(work.glob('index-*')))}"
            settings = IndexSettings(resolution=res, scales=scales, pca_dim=pca or None, batch_size=16, workers=0,
                                     seed=args["seed"], progress=False)  # fmt: skip
            recorded = {"weights": wname, **({"seed": args["seed"]} if weights == "random" else {})}
            t0 = time.perf_counter()
            build_index(coll, net, out, settings, weights=recorded)
            build_s = round(time.perf_counter() - t0, 1)
            service = SearchService(out, resident=True)
            base = {"bench": "search", "part": "quality", "collection": str(Path(coll_dir).absolute()),
                    "images": service.index.count, "weights": wname, "arch": net.arch, "resolution": res,
                    "pca": pca or None, "scales": list(scales), "regions": len(service.index.grid),
                    "index_build_s": build_s, "machine": args["machine"]}  # fmt: skip
            label = f"{net.arch} {'random' if weights == 'random' else 'trained'} {res}px, " \
                    f"{'PCA ' + str(pca) if pca else 'no PCA'}, scales {','.join(map(str, scales))}"
            file_answers: dict[str, list] = {}
            c = crop_figures(service, crops, group_of, members, file_answers)
            emit({**base, "query": "crop", **c},
                 f"crops ({label}): source recall@1 {c['recall@1']:.3f} @5 {c['recall@5']:.3f} "
                 f"@10 {c['recall@10']:.3f}, median rank {c['median_rank']:g}, group recall@1 "
                 f"{c['group_recall@1']:.3f}; box IoU mean {c['iou_mean']:.3f} (whole image "
                 f"{c['iou_whole_image_mean']:.3f}, grid ceiling {c['iou_grid_ceiling_mean']:.3f}, the source's "
                 f"best region {c['iou_best_region_mean']:.3f}), region won {c['region_won']:.2f} (best region - "
                 f"global cosine {c['best_region_minus_global_mean']:+.3f}, z-score "
                 f"{c['calibrated_best_region_minus_global_mean']:+.2f}); scored by global alone recall@1 "
                 f"{c['global_only']['recall@1']:.3f}, by regions alone {c['regions_only']['recall@1']:.3f} "
                 f"(median rank {c['regions_only']['median_rank']:g}), uncalibrated max recall@1 "
                 f"{c['uncalibrated']['recall@1']:.3f}")  # fmt: skip
            b = box_figures(service, crops, group_of, members, file_answers)
            del file_answers
            if b["box_queries"]:
                emit({**base, "query": "box", **b},
                     f"box queries ({label}, {b['box_queries']} crops whose source has a partner; source left out): "
                     f"first partner recall@1 as uid+box {b['box']['partner_recall@1']:.3f} (the crop embedded "
                     f"alone {b['box_crop_vector']['partner_recall@1']:.3f}) vs as the crop file "
                     f"{b['file']['partner_recall@1']:.3f}; median rank {b['box']['partner_median_rank']:g} vs "
                     f"{b['file']['partner_median_rank']:g}; that hit with a box {b['box']['box_returned']:.2f} vs "
                     f"{b['file']['box_returned']:.2f}")  # fmt: skip
            g = group_figures(service.index, coll)
            for split, figs in g.items():
                emit({**base, "query": "whole-image", "split": split, **figs},
                     f"whole-image uid queries ({label}), {split} ({figs['global']['num_queries']:g} queries): mAP "
                     f"global {figs['global']['mAP']:.3f}, global+regions {figs['global+regions']['mAP']:.3f} "
                     f"(uncalibrated {figs['global+regions uncalibrated']['mAP']:.3f}); recall@1 "
                     f"{figs['global']['recall@1']:.3f} vs {figs['global+regions']['recall@1']:.3f}")
            del service
            shutil.rmtree(out, ignore_errors=True)
            gc.collect()


# -- latency ----------------------------------------------------------------------------------------------------

SIDE, SCALES = 7, (2, 3)  # resnet's 7 x 7 map at 224 px, the default scales: 13 regions


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(size=shape, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)


def synthetic_index(folder: Path, n: int, dim: int, seed: int, part_images: int = 65536) -> None:
    """An index of n images of random unit vectors. Parts of `part_images` images, each a rolled copy of one
    random pool (generating 10^6 x 14 x D normals would take longer than the search it serves)."""
    from model.index import FORMAT, VERSION, append_part, write_manifest
    from model.regions import region_grid

    grid = region_grid(SIDE, SCALES)
    manifest = {"format": FORMAT, "version": VERSION, "arch": "synthetic", "pooling": "mean", "resolution": 224,
                "scales": list(SCALES), "feature_side": SIDE, "grid": grid.round(6).tolist(), "raw_dim": dim,
                "dim": dim, "dtype": "float16", "pca": None, "weights": {"weights": "synthetic"},
                "parameters_sha256": "synthetic", "parts": []}  # fmt: skip
    folder.mkdir(parents=True)
    write_manifest(folder, manifest)
    rng = np.random.default_rng(seed)
    pool = min(n, part_images)
    glob, regions = _unit(rng, (pool, dim)), _unit(rng, (pool, len(grid), dim))
    sizes = np.tile(np.asarray([[1024, 768]], np.int32), (pool, 1))
    for k, a in enumerate(range(0, n, part_images)):
        b = min(n, a + part_images)
        shift = (k * 7919) % pool
        g, r = np.roll(glob, shift, 0)[: b - a], np.roll(regions, shift, 0)[: b - a]
        manifest = append_part(folder, manifest, [f"im{i:08d}" for i in range(a, b)], g, r, sizes[: b - a],
                               collection="synthetic")  # fmt: skip


def _timed_queries(searcher, queries: np.ndarray, k: int, reps: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of `reps` calls after it)."""
    t0 = time.perf_counter()
    searcher.search(queries, k)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        searcher.search(queries, k)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def latency_one(index, n: int, dim: int, resident: bool, batches: list[int], args: dict) -> list[dict]:
    from scale import PeakRss

    from model.search import Searcher

    rng = np.random.default_rng(args["seed"] + 1)
    out = []
    with PeakRss() as mem:
        searcher = Searcher(index, resident=resident)
        load_s = None
        if resident:
            t0 = time.perf_counter()
            searcher.top_k(_unit(rng, (1, dim)).astype(np.float32), 1)  # moves the blocks and compiles
            load_s = round(time.perf_counter() - t0, 3)
        for q in batches:
            first, median = _timed_queries(searcher, _unit(rng, (q, dim)).astype(np.float32), args["k"], args["reps"])
            out.append({"batch": q, "first_call_s": round(first, 4), "median_s": round(median, 5),
                        "per_query_ms": round(1000 * median / q, 3)})
        del searcher
        gc.collect()
    for r in out:
        r.update({"load_s": load_s, "peak_rss_gb": round(mem.peak / 2**30, 3),
                  "rss_before_gb": round(mem.before / 2**30, 3)})
    return out


def latency(sizes: list[int], dims: list[int], batches: list[int], args: dict, work: Path) -> None:
    from model.index import SearchIndex
    from model.search import block_images

    results: dict[tuple, float] = {}
    for dim in dims:
        for n in sizes:
            nbytes = n * (1 + _regions()) * dim * 2  # float16 vectors
            gb = nbytes / 1e9
            free = shutil.disk_usage(work).free / 1e9
            if gb > args["max_index_gb"] or gb * 1.1 > free:
                emit({"bench": "search", "part": "latency", "n": n, "d": dim, "index_gb": round(gb, 2),
                      "skipped": f"index of {gb:.1f} GB; --max-index-gb {args['max_index_gb']}, {free:.0f} GB free"},
                     f"latency n={n:,} D={dim}: skipped ({gb:.1f} GB index, limit {args['max_index_gb']} GB, "
                     f"{free:.0f} GB free)")  # fmt: skip
                continue
            folder = work / f"synthetic-{n}-{dim}"
            t0 = time.perf_counter()
            synthetic_index(folder, n, dim, args["seed"])
            write_s = round(time.perf_counter() - t0, 1)
            try:
                index = SearchIndex.open(folder)
                for resident in (False, True):
                    for r in latency_one(index, n, dim, resident, batches, args):
                        mode = "resident" if resident else "streaming"
                        results[(dim, mode, r["batch"], n)] = r["median_s"]
                        emit({"bench": "search", "part": "latency", "n": n, "d": dim, "regions": _regions(),
                              "index_gb": round(gb, 3), "vector_bytes": nbytes, "block_images": block_images(index), "mode": mode,
                              "k": args["k"], "write_s": write_s, **r, "machine": args["machine"]},
                             f"latency n={n:,} D={dim} ({gb:.2f} GB), {mode}, batch {r['batch']}: "
                             f"{r['median_s'] * 1000:.1f} ms per call ({r['per_query_ms']:.2f} ms per query), "
                             f"first call {r['first_call_s']:.2f} s"
                             + (f", load {r['load_s']:.2f} s" if r["load_s"] is not None else "")
                             + f", peak RSS {r['peak_rss_gb']:.2f} GB")  # fmt: skip
                del index
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                gc.collect()
    _growth(results, sizes)


def _regions() -> int:
    from model.regions import region_cells

    return len(region_cells(SIDE, SCALES))


def _growth(results: dict[tuple, float], sizes: list[int]) -> None:
    """How the time per call grows with n, between consecutive measured sizes."""
    for (dim, mode, batch, n), secs in sorted(results.items()):
        prev = [m for m in sizes if m < n and (dim, mode, batch, m) in results]
        if not prev:
            continue
        m = max(prev)
        ratio = secs / results[(dim, mode, batch, m)]
        emit({"bench": "search", "part": "latency-growth", "d": dim, "mode": mode, "batch": batch, "from_n": m,
              "to_n": n, "n_ratio": round(n / m, 2), "time_ratio": round(ratio, 2)},
             f"latency growth D={dim} {mode} batch {batch}: n x{n / m:g} -> time x{ratio:.2f}")


@click.command()
@click.option("--part", "parts", default="quality,latency", show_default=True, help="quality, latency, or both.")
@click.option("--quick", is_flag=True, help="A small CPU run: 40 crops at 128 px, no PCA variant, n=5000 at D=512.")
@click.option("--collection", type=click.Path(file_okay=False), default=None,
              help="The collection (default: `python -m data demo` built into a temp folder).")
@click.option("--weights", "weights_list", multiple=True, help="Weights folder or 'random' (repeatable; default random).")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture of --weights random.")
@click.option("--resolution", type=int, default=None, help="Default: the weights' own, 224 for random.")
@click.option("--pca", "pcas", default="0,128", show_default=True, help="Variants: PCA dimensions, 0 for none.")
@click.option("--scales", "scale_sets", multiple=True, help="Region scales of a variant (repeatable; default 2,3).")
@click.option("--crops", type=int, default=0, help="Crop queries (0: one per image).")
@click.option("--sizes", default="10000,100000", show_default=True, help="Latency: index sizes (images).")
@click.option("--dims", default="512", show_default=True, help="Latency: vector dimensions.")
@click.option("--batch", "batch", default=32, show_default=True, help="Latency: the larger query batch (and 1).")
@click.option("--reps", default=5, show_default=True, help="Latency: timed calls after the warm-up.")
@click.option("-k", "k", default=20, show_default=True, help="Latency: results per query.")
@click.option("--max-index-gb", default=8.0, show_default=True, help="Latency: skip larger synthetic indexes.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None, help="Where temp files go.")
@click.option("--seed", default=0, show_default=True)
def main(parts, quick, collection, weights_list, arch, resolution, pcas, scale_sets, crops, sizes, dims, batch, reps,
         k, max_index_gb, work_dir, seed) -> None:  # fmt: skip
    names = [p for p in parts.split(",") if p]
    # `timeout` (benchmarks/gpu.sh) stops with SIGTERM: exit through the temp folder's cleanup, not past it
    # (a 1M-image synthetic index is 14 GB).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if quick:
        crops, resolution, pcas, sizes, reps = crops or 40, resolution or 128, "0", "2000,5000", 3
    args = {"seed": seed, "crops": crops, "resolution": resolution, "arch": arch, "k": k, "reps": reps,
            "max_index_gb": max_index_gb, "machine": _machine()}  # fmt: skip
    variants = [(p, tuple(_ints(s))) for s in (scale_sets or ("2,3",)) for p in _ints(pcas)]
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="search-bench-") as tmp:
        work = Path(tmp)
        if "quality" in names:
            coll = Path(collection) if collection else build_demo(work / "demo")
            quality(coll, list(weights_list) or ["random"], variants, args, work)
        if "latency" in names:
            latency(_ints(sizes), _ints(dims), sorted({1, batch}), args, work)


if __name__ == "__main__":
    main()
