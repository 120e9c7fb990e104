"""The map at archive scale: `cluster map` end to end and the viewer in a real (headless) browser.

For each n (default 100,000 and 300,000): a synthetic collection of small generated JPEGs (64 x 48, so that
thumbnails cost little; `thumbs_check.py` times full-size scans) with archive-like signatures
(scale.archive_like: unrelated images ~0.5 apart in cosine distance, planted groups within ~0.05), clustered
by `cluster optics --max-eps 0.13` (its kNN lists kept beside clusters.csv: "the kNN graph that clustering
made"), then timed:
- `map`: `python -m cluster map` as a user runs it (a fresh process: imports, UMAP's compilation, the layout,
  the thumbnail cache made cold with 2 workers, the PNG, the viewer's files), wall time and peak RSS;
- `page`: map.html opened from the folder in headless Chromium (WebGL on SwiftShader, i.e. on the CPU):
  time until the points are drawn, until every metadata column is loaded; pan and zoom frame rate (the camera
  moved every animation frame for 3 s, frames drawn counted); a hover's thumbnail loaded; console errors.
And the viewer alone at 1,000,000 points (coordinates without thumbnails or images): its data files written
directly, then the same page measurements.

Prints one JSON line per measurement and a human line. Everything it makes is in a temp folder, removed at
the end (--keep keeps it). Needs Debian's chromium and chromedriver and the test extra (selenium).

    python benchmarks/map_scale.py                  # 100k and 300k, then the 1M viewer
    python benchmarks/map_scale.py --sizes 20000 --viewer 200000   # a quick look
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

D = 128  # signature width: the map's cost does not depend on it once the kNN lists exist


def _images(args) -> None:
    folder, start, stop, seed = args
    from PIL import Image

    rng = np.random.default_rng(seed + start)
    for i in range(start, stop):
        base = rng.integers(0, 256, size=3)
        px = np.clip(base + rng.integers(-40, 40, size=(48, 64, 1)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(Path(folder) / f"{i // 10000:03d}" / f"im{i:07d}.jpg", quality=80)


def make_collection(root: Path, n: int, seed: int = 0) -> Path:
    """images.csv (uid, path, title, author, date) and n small JPEGs in folders of 10,000."""
    img = root / "img"
    for k in range((n + 9999) // 10000):
        (img / f"{k:03d}").mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_images, [(str(img), s, min(n, s + step), seed) for s in range(0, n, step)]))
    rng = np.random.default_rng(seed)
    authors = [f"Painter {k}" for k in range(2000)]
    with open(root / "images.csv", "w", encoding="utf-8") as fh:
        fh.write("uid,path,title,author,date\n")
        for i in range(n):
            fh.write(f'im{i:07d},img/{i // 10000:03d}/im{i:07d}.jpg,"Study {i}, after a lost original",'
                     f"{authors[rng.integers(len(authors))]},c. {1300 + int(rng.integers(600))}\n")
    return root


def timed(cmd: list[str], **kw) -> dict:
    """Wall time and peak RSS of a command (GNU time), failing loudly."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return {"seconds": round(wall, 2), "peak_rss_gb": round(int(r.stderr.strip().splitlines()[-1]) / 2**20, 3),
            "stderr_tail": r.stderr.strip().splitlines()[-4:-1]}  # fmt: skip


def emit(record: dict, human: str) -> None:
    print(json.dumps(record), flush=True)
    print(human, flush=True)


FPS_JS = """
const done = arguments[arguments.length - 1], mode = arguments[0], sp = MAP.sp;
sp.zoomToOrigin();
let frames = 0, t0 = null;
const un = sp.subscribe('draw', () => { frames++; });
function step(t) {
  if (t0 === null) t0 = t;
  const s = (t - t0) / 1000;
  if (s > 3) { sp.unsubscribe(un); done({frames, seconds: s}); return; }
  if (mode === 'pan') sp.set({cameraTarget: [0.5 * Math.sin(s * 2), 0.3 * Math.cos(s * 2)]});
  else sp.set({cameraDistance: 1 / (1 + 3 * Math.abs(Math.sin(s)))});
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
"""


def measure_page(page: Path, label: str, n: int) -> dict:
    """Open the map from its folder in headless Chromium and measure what a user feels."""
    from tests.cluster.map_browser import chromium, severe, wait_for

    out: dict = {"stage": "page", "label": label, "n": n}
    with chromium(1400, 900) as driver:
        driver.set_script_timeout(60)
        t = time.perf_counter()
        driver.get(page.resolve().as_uri())
        wait_for(driver, "window.MAP && MAP.drawn", 300)
        out["drawn_s"] = round(driver.execute_script("return MAP.drawn") / 1000, 2)  # since navigation start
        out["drawn_wall_s"] = round(time.perf_counter() - t, 2)
        wait_for(driver, "!document.getElementById('status').textContent.includes('loading')", 600)
        out["metadata_s"] = round(time.perf_counter() - t, 2)
        for mode in ("pan", "zoom"):
            r = driver.execute_async_script(FPS_JS, mode)
            out[f"{mode}_fps"] = round(r["frames"] / r["seconds"], 1)
        driver.execute_script("MAP.sp.zoomToOrigin(); MAP.sp.hover(0);")
        if driver.execute_script("return MAP.thumbURL(0)"):
            wait_for(driver, "(i => i && i.complete && i.naturalWidth)(document.querySelector('#tip img'))", 30)
            out["hover_thumbnail"] = True
        t = time.perf_counter()
        driver.execute_script("MAP.lastSearch = null; MAP.search('study 12345')")
        wait_for(driver, "Array.isArray(MAP.lastSearch)", 60)
        out["search_s"] = round(time.perf_counter() - t, 2)
        out["errors"] = [e["message"] for e in severe(driver)]
    return out


def viewer_only(folder: Path, n: int, seed: int = 0) -> Path:
    """The viewer's files for n points without images (coordinates as a map of n would have them)."""
    from cluster.map_data import MapPoints, write_map_data
    from cluster.mapping import install_viewer

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 20 + 1, 2)) * 10
    lab = rng.integers(-1, len(centres), size=n)
    xy = np.where((lab >= 0)[:, None], centres[np.maximum(lab, 0)] + rng.normal(size=(n, 2)) * 0.1,
                  rng.normal(size=(n, 2)) * 10)  # fmt: skip
    uids = [f"im{i:07d}" for i in range(n)]
    meta = {"title": [f"Study {i}, after a lost original" for i in range(n)],
            "author": [f"Painter {k}" for k in rng.integers(2000, size=n)],
            "date": [f"c. {y}" for y in rng.integers(1300, 1900, size=n)]}  # fmt: skip
    pts = MapPoints(uids=uids, coords=xy, labels=lab, groups={}, links=[])
    write_map_data(folder, pts, meta, thumbs_dir=None, thumb_names={}, unreadable={}, title=f"{n} points")
    install_viewer(folder, f"{n} points")
    return folder / "map.html"


@click.command()
@click.option("--sizes", default="100000,300000", show_default=True, help="Collection sizes for `cluster map`.")
@click.option("--viewer", "viewer_n", default=1_000_000, show_default=True, help="Points for the viewer alone (0: skip).")
@click.option("--keep", is_flag=True, help="Keep the temp folder (its path is printed).")
def main(sizes: str, viewer_n: int, keep: bool) -> None:
    from scale import archive_like

    from data.signatures import Signatures, save_signatures

    tmp = Path(tempfile.mkdtemp(prefix="map-scale-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    try:
        for n in [int(s) for s in sizes.split(",") if s.strip()]:
            work = tmp / f"n{n}"
            coll = make_collection(work / "coll", n)
            x, _ = archive_like(n, D)
            save_signatures(work / "sig.npz", Signatures(uids=[f"im{i:07d}" for i in range(n)], vectors=x))
            del x
            clusters = work / "clusters" / "clusters.csv"
            c = timed([py, "-m", "cluster", "optics", str(work / "sig.npz"), "--min-samples", "2", "--max-eps", "0.13",
                       "--out", str(clusters)], env=env)  # fmt: skip
            emit({"stage": "optics (given)", "n": n, "d": D, **c}, f"n={n:,}: cluster optics {c['seconds']} s")
            m = timed([py, "-m", "cluster", "map", str(work / "sig.npz"), "--collection", str(coll), "--clusters",
                       str(clusters), "--out", str(work / "map"), "--workers", "2"], env=env)  # fmt: skip
            emit({"stage": "map", "n": n, "d": D, **m},
                 f"n={n:,}: cluster map {m['seconds']} s, peak {m['peak_rss_gb']} GB ({'; '.join(m['stderr_tail'])})")
            p = measure_page(work / "map" / "map.html", "cluster map", n)
            emit(p, f"n={n:,}: page drawn {p['drawn_s']} s, metadata {p['metadata_s']} s, pan {p['pan_fps']} fps, "
                    f"zoom {p['zoom_fps']} fps, {len(p['errors'])} errors")  # fmt: skip
            shutil.rmtree(work, ignore_errors=True) if not keep else None
        if viewer_n:
            t = time.perf_counter()
            page = viewer_only(tmp / "viewer", viewer_n)
            emit({"stage": "viewer files", "n": viewer_n, "seconds": round(time.perf_counter() - t, 2)},
                 f"n={viewer_n:,}: viewer files written in {time.perf_counter() - t:.1f} s")
            p = measure_page(page, "viewer alone", viewer_n)
            emit(p, f"n={viewer_n:,} (viewer alone): drawn {p['drawn_s']} s, metadata {p['metadata_s']} s, "
                    f"pan {p['pan_fps']} fps, zoom {p['zoom_fps']} fps, {len(p['errors'])} errors")  # fmt: skip
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
