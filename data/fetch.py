"""`python -m data fetch`: download the url-only images of a collection, resumably and safely.

Which URLs are IIIF (the rule, in order):
1. a IIIF Image API *request* (`.../{region}/{size}/{rotation}/{quality}.{format}`, e.g. the
   original's `.../full/300,/0/default.jpg`): its size is replaced by `!{max},{max}`;
2. a URL ending in `/info.json`: that suffix is dropped and it is treated as the base;
3. a URL whose last path segment has no image file extension (.jpg, .png, .tif, ...): a IIIF
   *base* (`https://host/iiif/2/ID`), requested as `{base}/full/!{max},{max}/0/default.jpg`;
4. anything else is a plain http(s) image; if larger than `max_side` it is downscaled here.
So only the needed resolution travels for IIIF servers.

Safety: a file is written to a temp name, fsynced, its bytes decoded in full, and only then renamed
into place (`os.replace`), so a killed or failed download never leaves a partial image where a good
one is expected. A second run skips every target that already decodes (without damaged data). Failures (after retries with
exponential backoff for timeouts, connection errors, 408/429/5xx and undecodable or damaged bodies) are
returned by uid.
"""

from __future__ import annotations

import io
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from data.atomic import atomic_write
from data.collection import Collection, fetched_path, load_collection
from data.image import ImageReadError, decode_image, discard_pixels, is_damaged

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".webp", ".jp2", ".bmp")
MAX_BYTES = 256 * 1024 * 1024
USER_AGENT = "visual-signatures-fetch/0.1"
_IIIF_REQUEST = re.compile(
    r"^(?P<base>.+)/(?P<region>full|square|\d+,\d+,\d+,\d+|pct:[\d.]+,[\d.]+,[\d.]+,[\d.]+)"
    r"/(?P<size>[^/]+)/(?P<rotation>!?\d+(?:\.\d+)?)/(?P<quality>default|color|gray|grey|bitonal|native)"
    r"\.(?P<format>jpg|jpeg|png|tif|gif|webp|jp2)$"
)


@dataclass
class FetchResult:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a good file was already there
    failed: dict[str, str] = field(default_factory=dict)


class _Retryable(Exception):
    pass


def request_url(url: str, max_side: int) -> tuple[str, bool]:
    """The URL to download and whether it is a IIIF request (see the module docstring for the rule)."""
    size = f"!{max_side},{max_side}"
    m = _IIIF_REQUEST.match(url)
    if m:
        return f"{m['base']}/{m['region']}/{size}/{m['rotation']}/{m['quality']}.{m['format']}", True
    if url.endswith("/info.json"):
        return f"{url[: -len('/info.json')]}/full/{size}/0/default.jpg", True
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].lower()
    if not last.endswith(IMAGE_EXTENSIONS):
        return f"{url.rstrip('/')}/full/{size}/0/default.jpg", True
    return url, False


def _good(path: Path) -> bool:
    """The file decodes, and without damaged data (a damaged download is fetched again)."""
    try:
        return not is_damaged(decode_image(path, finish=discard_pixels).notes)
    except ImageReadError:
        return False


def _download(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        msg = f"HTTP {e.code} {e.reason} for {url}"
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(msg) from e
        raise ValueError(msg) from e
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise _Retryable(f"{getattr(e, 'reason', e)} for {url}") from e
    if len(data) > MAX_BYTES:
        raise ValueError(f"{url}: larger than {MAX_BYTES} bytes")
    return data


def _to_stored_bytes(data: bytes, max_side: int, url: str) -> bytes:
    """Verify the body decodes; keep an RGB JPEG within max_side that needed no correction as is, else
    store the corrected picture (transparency on white, EXIF orientation applied, downscaled)."""
    try:
        dec = decode_image(data, finish=lambda img: _downscale(img, max_side), name=url)
    except ImageReadError as e:
        raise _Retryable(f"{url}: the server did not send a readable image ({e})") from e
    if is_damaged(dec.notes):
        raise _Retryable(f"{url}: the server sent damaged image data ({'; '.join(dec.notes)})")
    if not dec.notes and dec.format == "JPEG" and dec.mode == "RGB" and max(dec.size) <= max_side:
        return data
    buf = io.BytesIO()
    dec.image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _downscale(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    s = max_side / max(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)


def _write_atomic(path: Path, data: bytes) -> None:
    """`data.atomic.atomic_write`, renamed into place only once the bytes on disk decode."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        if not _good(tmp):  # the bytes on disk, not just in memory
            raise ValueError(f"{path}: written file does not decode")

    atomic_write(path, write)


def fetch_one(url: str, target: Path, *, max_side: int, retries: int, timeout: float, backoff: float) -> None:
    """Download one image into `target` (atomically), retrying transient failures; raises on failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http(s) URLs are fetched")
    get, _ = request_url(url, max_side)
    last: Exception | None = None
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            data = _to_stored_bytes(_download(get, timeout), max_side, get)
            _write_atomic(target, data)
            return
        except _Retryable as e:
            last = e
    raise RuntimeError(f"{last} (gave up after {max(1, retries)} attempts)")


def fetch_collection(
    collection: str | Path | Collection,
    *,
    max_side: int = 1024,
    workers: int = 8,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
) -> FetchResult:
    """Fetch every url-only image of a collection into `fetched_path(uid)`; see the module docstring."""
    coll = collection if isinstance(collection, Collection) else load_collection(collection)
    res = FetchResult()
    todo = []
    seen: set[str] = set()
    for rec in coll.images:
        if rec.path or not rec.url or rec.uid in seen:
            continue
        seen.add(rec.uid)
        target = coll.root / fetched_path(rec.uid)
        if target.exists() and _good(target):
            res.skipped.append(rec.uid)
        else:
            todo.append((rec.uid, rec.url, target))

    def run(item):
        uid, url, target = item
        try:
            fetch_one(url, target, max_side=max_side, retries=retries, timeout=timeout, backoff=backoff)
            return uid, None
        except Exception as e:  # noqa: BLE001 - every failure is reported by uid, none stops the others
            return uid, str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for uid, err in pool.map(run, todo):
            if err is None:
                res.fetched.append(uid)
            else:
                res.failed[uid] = err
    return res
