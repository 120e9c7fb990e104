"""The one image decoder of every stage: check, fetch, prepare (train), embed, thumbnails, the annotation page.

Why one: each stage used to decode on its own, and each got the same files wrong in its own way (a 16-bit
greyscale PNG came out white, transparent drawings black, phone photos sideways). `decode_image` turns
any file PIL reads into the RGB picture a person sees in an image viewer, and says what it had to
correct or guess (`DecodedImage.notes`), so the stages can tell the user:

- 16-bit and 32-bit greyscale (PIL modes I;16*, I, F) are scaled to 8 bits, not clipped at 255;
- transparent areas (RGBA, LA, PA, palette or greyscale/RGB images with a transparent colour) are put
  on white, like paper, not on black;
- the EXIF orientation (phone photos, many scans) is applied;
- CMYK is converted to RGB; a CMYK JPEG without Adobe's marker is read with plain polarity (PIL
  assumes Adobe's inverted polarity for every CMYK JPEG);
- only the first frame of an animation or multi-page file is used;
- a JPEG whose compressed data is damaged (libjpeg only warns about that, and PIL silences the
  warning) is detected by feeding the decoder the data in steps (see `_load_jpeg_checked`); the
  picture is used as decoded and the note says it is garbled. A file that cannot be decoded at all
  (truncated, not an image) raises `ImageReadError`: the stages report and skip it, never use zeros.

Memory: one pixel limit (`MAX_PIXELS`) for every stage, checked from the header before any pixel is
decoded, and a process-wide budget (`DECODE_BUDGET`) on the pixels being decoded at once, so the
annotation server's threads, `check`'s thread pool and `embed`'s prefetch cannot decode many huge
scans together. `decode_image(..., finish=...)` runs the caller's downscale inside the budget, so the
full-size picture is gone before the budget is given back.
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# The largest image any stage decodes (width x height). Archive scans are big (an A1 sheet at 600 dpi is
# ~280 Mpx), so PIL's default bomb guard (~89 Mpx) would reject real scans; above this the decoded
# picture alone (4 bytes a pixel in PIL) passes 1.2 GB, and the networks only ever see <= 1024 px.
MAX_PIXELS = 300_000_000
# PIL's own guard stays on as a backstop (it raises above twice its limit); its warning between one and
# two times the limit is silenced because `decode_image` refuses those images itself, with a message
# that says what to do.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

WHITE = (255, 255, 255)
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a phone JPEG with more pictures after the first
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_DAMAGE_ADVICE = "the picture is garbled from the damage on; replace the file with a good copy"
DAMAGED = "damaged data"  # how every note about damaged (but decodable) data begins


class ImageReadError(ValueError):
    """An image file that cannot be decoded. The caller reports it by uid and path and skips it."""


class ImageTooLargeError(ImageReadError):
    """An image over `MAX_PIXELS` (the same limit and message in every stage)."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully loaded (after `finish`, if one was given)
    notes: tuple[str, ...]  # what was corrected or guessed, one phrase each; empty for a plain RGB image
    format: str | None  # the file's format as PIL names it (JPEG, PNG, TIFF, ...)
    mode: str  # the file's pixel mode before conversion (RGB, L, I;16, RGBA, P, CMYK, ...)
    size: tuple[int, int]  # the file's width and height as stored (before orientation or reduction)


# -- the pixel budget ---------------------------------------------------------------------------------------


class PixelBudget:
    """At most `total` pixels being decoded at once in this process; first come, first served.

    An image larger than the whole budget waits until it can run alone. Nothing that holds pixels
    waits for more, so the budget cannot deadlock.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(1, min(int(pixels), self.total))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.used + pixels > self.total:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: do not block the ones behind
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.used += pixels
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


# One image of the largest allowed size, or many smaller ones, at a time.
DECODE_BUDGET = PixelBudget(MAX_PIXELS)


# -- the limit ----------------------------------------------------------------------------------------------


def _mpx(pixels: float) -> str:
    return f"{pixels / 1e6:.4g} Mpx"


def too_large_message(name: str, size: tuple[int, int] | None, pixels: int | None = None) -> str:
    """The one message for an image over the limit: what it is, the limit, and what to do."""
    limit = f"the limit of {_mpx(MAX_PIXELS)} that every stage uses"
    if size is not None:
        w, h = size
        side = int(max(w, h) * math.sqrt(MAX_PIXELS / (w * h)))
        side = side // 100 * 100 if side >= 1000 else side
        return (f"{name}: {w} x {h} px ({_mpx(w * h)}) is over {limit}; store a copy downscaled to at most "
                f"{side} px on the longest side and point images.csv at it.")
    what = _mpx(pixels) if pixels else f"more than {_mpx(2 * MAX_PIXELS)}"
    return f"{name}: {what} is over {limit}; store a copy downscaled below {_mpx(MAX_PIXELS)} and point images.csv at it."


def _bomb_message(name: str, err: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(err))
    return too_large_message(name, None, int(m.group(1)) if m else None)


# -- JPEG: damaged data -------------------------------------------------------------------------------------

# In entropy-coded data, 0xFF is followed by 0x00 (a stuffed byte) or a restart marker 0xD0-0xD7; 0xFF
# fill bytes may precede a marker. Anything else ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_RST = re.compile(rb"\xff([\xd0-\xd7])")
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential, Huffman coded
_EOI = 0xD9
# A complete scan needs all its bytes: cut this many before its end, the decoder cannot finish. Small
# camera quirks ("2 extraneous bytes before marker 0xd9") stay below it and are not called damage.
_EARLY_END = 8
# ... and after its end the decoder needs at most its bit-buffer lookahead (8 bytes with libjpeg-turbo's
# 64-bit buffer); zero bytes decode as valid data, so a scan still unfinished after this many is short.
_LOOKAHEAD = 12


@dataclass(frozen=True)
class _JpegLayout:
    sof: int  # the SOFn marker byte
    single_scan: bool  # the first scan holds every component (a sequential file has no other)
    mcus: int  # minimum coded units in that scan
    mcu_px: tuple[int, int]  # width and height of one unit in pixels
    restart_interval: int  # 0: no restart markers
    sof_at: int  # positions of the SOF marker, the DRI marker (-1: none) and the first SOS marker
    dri_at: int
    sos_at: int
    scan_start: int  # first byte of entropy-coded data
    scan_end: int  # position of the marker that ends the first scan (len(data) if none)

    @property
    def sequential(self) -> bool:
        """One sequential Huffman-coded scan: the stepwise checks apply."""
        return self.sof in _SEQUENTIAL_SOF and self.single_scan


def _scan_units(size: tuple[int, int], comps: list[tuple[int, int]], interleaved: bool) -> tuple[int, tuple[int, int]]:
    """(units in the scan, unit size in px): an interleaved unit spans the largest sampling factors; a
    one-component scan's unit is one 8 x 8 block of that component."""
    hmax, vmax = max(h for h, _ in comps), max(v for _, v in comps)
    px = (8 * hmax, 8 * vmax) if interleaved else (8 * hmax // comps[0][0], 8 * vmax // comps[0][1])
    return math.ceil(size[0] / px[0]) * math.ceil(size[1] / px[1]), px


def _jpeg_layout(data: bytes) -> _JpegLayout | None:
    """Markers up to the first scan (None when the header cannot be walked: PIL then decides alone)."""
    sof = sof_at = None
    comps: list[tuple[int, int]] = []
    size, dri, dri_at, i = (0, 0), 0, -1, 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        seg = data[i + 4 : i + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(seg) >= 6:
            sof, sof_at, size = marker, i, (int.from_bytes(seg[3:5], "big"), int.from_bytes(seg[1:3], "big"))
            comps = [(seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(seg[5]) if 8 + 3 * k < len(seg)]
        elif marker == 0xDD and len(seg) >= 2:
            dri, dri_at = int.from_bytes(seg[:2], "big"), i
        elif marker == 0xDA:
            if sof is None or not seg or not comps or min(min(c) for c in comps) < 1:
                return None
            m = _SCAN_END.search(data, i + 2 + length)
            mcus, px = _scan_units(size, comps, seg[0] > 1)
            return _JpegLayout(sof, seg[0] == len(comps), mcus, px, dri, sof_at, dri_at, i, i + 2 + length,
                               m.start() if m else len(data))
        i += 2 + length
    return None


def _structure_notes(data: bytes, lay: _JpegLayout) -> list[str]:
    """What the marker structure of the first scan says about damage (no decoding involved)."""
    notes = []
    if lay.scan_end < len(data):
        marker = data[lay.scan_end + 1]
        if marker < 0xC0:
            notes.append(f"{DAMAGED}: invalid marker 0xFF{marker:02X} inside the image data at byte "
                         f"{lay.scan_end}")
        elif lay.sequential and marker not in (_EOI, 0xDC):
            notes.append(f"{DAMAGED}: unexpected marker 0xFF{marker:02X} inside the image data at byte "
                         f"{lay.scan_end}")
    if lay.restart_interval and lay.sequential:
        found = [b[0] - 0xD0 for b in _RST.findall(data, lay.scan_start, lay.scan_end)]
        expected = math.ceil(lay.mcus / lay.restart_interval) - 1
        if len(found) != expected or any(r != k % 8 for k, r in enumerate(found)):
            notes.append(f"{DAMAGED}: {len(found)} restart markers where {expected} belong, or out of order")
    return notes


def _feed(decoder, buf: bytes) -> bytes | None:
    """Give the decoder `buf`: None once the image is complete, else the bytes it has not used yet."""
    n, err = decoder.decode(buf)
    if n < 0:
        if err < 0:
            raise OSError(f"broken data stream (decoder error {err})")
        return None
    return buf[n:]


def _load_jpeg_checked(im: Image.Image, data: bytes, lay: _JpegLayout) -> list[str]:
    """Decode a sequential single-scan JPEG in steps that show what libjpeg only warns about.

    libjpeg decodes a damaged scan to the end and only warns ("Corrupt JPEG data: N extraneous bytes
    before marker 0xd9", "premature end of data segment"), and PIL silences its warnings. Damage
    desynchronises the Huffman decoder, so the blocks end before or after the data does. So: feed the
    data without its last `_EARLY_END` bytes - a complete image there means its blocks ended early;
    then the rest and `_LOOKAHEAD` zero bytes - an image still incomplete needed more data than the
    file has. Mirrors `PIL.ImageFile.Parser` (same decoder calls), one decode in all.
    """
    im.load_prepare()
    codec, extents, _offset, args = im.tile[0]
    decoder = Image._getdecoder(im.mode, codec, args, im.decoderconfig)
    decoder.setimage(im.im, extents)
    notes: list[str] = []
    try:
        cut = max(lay.scan_start, lay.scan_end - _EARLY_END)
        rest = _feed(decoder, data[:cut])
        if rest is None:
            notes.append(f"{DAMAGED}: the image's blocks end before its compressed data does (libjpeg: "
                         f"'Corrupt JPEG data: extraneous bytes'); {_DAMAGE_ADVICE}")
        else:
            rest = _feed(decoder, rest + data[cut : lay.scan_end] + bytes(_LOOKAHEAD))
            if rest is not None:
                if lay.scan_end >= len(data):
                    raise OSError("truncated: the file ends inside the image data")
                notes.append(f"{DAMAGED}: the compressed data ends before the image's last blocks (libjpeg: "
                             f"'Corrupt JPEG data: premature end of data segment'); {_DAMAGE_ADVICE}")
                if _feed(decoder, rest + data[lay.scan_end :]) is not None:
                    raise OSError("truncated: the file ends inside the image data")
    finally:
        decoder.cleanup()
    im.tile = []
    im.load_end()
    return notes


def _interval_header(data: bytes, lay: _JpegLayout, size: tuple[int, int]) -> bytes:
    """The file's header up to its first scan for a frame of `size` without restart markers (the
    application segments but Adobe's, which says how colours are coded, left out)."""
    out, i = bytearray(b"\xff\xd8"), 2
    while i < lay.scan_start:
        if data[i + 1] == 0xFF:  # a fill byte before a marker
            i += 1
            continue
        marker, end = data[i + 1], i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        seg = bytearray(data[i:end])
        if i == lay.sof_at:
            seg[5:9] = size[1].to_bytes(2, "big") + size[0].to_bytes(2, "big")
        elif i == lay.dri_at:
            seg[4:6] = b"\0\0"
        if not (0xE0 <= marker <= 0xEF and marker != 0xEE or marker == 0xFE):
            out += seg
        i = end
    return bytes(out)


def _interval_size(units: int, px: tuple[int, int]) -> tuple[int, int] | None:
    """A frame of exactly `units` coding units (a JPEG side is at most 65535 px), or None."""
    for rows in range(1, units + 1):
        if units % rows == 0 and units // rows * px[0] <= 65535:
            return (units // rows * px[0], rows * px[1]) if rows * px[1] <= 65535 else None
    return None


def _interval_damaged(mini: bytes) -> bool:
    """Whether one restart interval, as a JPEG of its own, shows damage (decoded at 1/8 scale: only its
    compressed data matters)."""
    try:
        im = Image.open(io.BytesIO(mini))
        im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
        lay = _jpeg_layout(mini)
        return lay is None or bool(_load_jpeg_checked(im, mini, lay))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
        return True


def _restart_notes(data: bytes, lay: _JpegLayout) -> list[str]:
    """Damage inside restart intervals, which libjpeg warns about and then resynchronises at the next
    marker (so the end of the scan looks fine): each interval is checked as a JPEG of its own, the
    file's header with a frame just that interval wide and no restart marker, then the interval's data."""
    starts = [lay.scan_start] + [m.end() for m in _RST.finditer(data, lay.scan_start, lay.scan_end)]
    ends = [m.start() for m in _RST.finditer(data, lay.scan_start, lay.scan_end)] + [lay.scan_end]
    headers: dict[int, bytes | None] = {}
    damaged = 0
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        units = lay.restart_interval if k < len(starts) - 1 else lay.mcus - lay.restart_interval * k
        if units not in headers:
            size = _interval_size(units, lay.mcu_px)
            headers[units] = _interval_header(data, lay, size) if size else None
        if headers[units] is not None and _interval_damaged(headers[units] + data[a:b] + b"\xff\xd9"):
            damaged += 1
    if not damaged:
        return []
    return [f"{DAMAGED}: {damaged} of {len(starts)} restart intervals (libjpeg: 'Corrupt JPEG data'); the "
            "picture is garbled in those bands; replace the file with a good copy"]


def _load(im: Image.Image, data: bytes | None) -> list[str]:
    """Decode `im` fully; for a JPEG (whose bytes are `data`), also report damaged data."""
    lay = _jpeg_layout(data) if data is not None and len(im.tile) == 1 else None
    if lay is None or im.tile[0][0] != "jpeg" or im.tile[0][2] != 0:
        im.load()
        return []
    notes = _structure_notes(data, lay)
    if lay.sequential and not notes and not lay.restart_interval:
        return _load_jpeg_checked(im, data, lay)
    im.load()
    if lay.sequential and not notes and lay.restart_interval:
        notes = _restart_notes(data, lay)
    return notes


# -- pixel modes --------------------------------------------------------------------------------------------


def _scale_wide(im: Image.Image) -> tuple[Image.Image, str]:
    """16/32-bit greyscale and float pixels -> 8-bit L, and a note saying how."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray((a >> 8).astype(np.uint8), "L"), "16-bit greyscale scaled to 8-bit"
    a = np.nan_to_num(a.astype(np.float64, copy=False)) if im.mode == "F" else a
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        out, note = a * 255.0, "floating-point pixels in [0, 1] scaled to 8-bit"
    elif lo >= 0 and hi <= 255:
        out, note = a, f"{'floating-point' if im.mode == 'F' else '32-bit'} pixels already in 0-255 used as 8-bit"
    elif im.mode == "I" and lo >= 0 and hi <= 65535:
        out, note = a / 257.0, "32-bit pixels holding 16-bit values scaled to 8-bit"
    else:
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0.0
        note = f"pixel values {lo:g}..{hi:g} stretched to 0-255"
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L"), note


def _on_white(im: Image.Image) -> tuple[Image.Image, str | None]:
    """RGBA (or anything with alpha) -> RGB with transparent areas composited on white."""
    rgba = im.convert("RGBA")
    alpha = rgba.getchannel("A")
    lo, _ = alpha.getextrema()
    if lo == 255:
        return rgba.convert("RGB"), None
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=alpha)
    return out, "transparent areas put on white"


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    if im.mode == "P":
        return "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
    return im.mode in ("L", "RGB") and "transparency" in im.info


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any PIL mode -> RGB as an image viewer shows it, with a note for each correction."""
    notes: list[str] = []
    if im.mode == "RGB" and "transparency" not in im.info:
        return im, notes
    if im.mode.startswith("I") or im.mode == "F":
        im, note = _scale_wide(im)
        notes.append(note)
    if im.mode == "La":
        im = im.convert("LA")
    elif im.mode == "RGBa":
        im = im.convert("RGBA")
    if _has_alpha(im):
        out, note = _on_white(im)
        return out, notes + ([note] if note else [])
    if im.mode == "CMYK":
        if im.format in _JPEG_FORMATS and "adobe" not in im.info:
            from PIL import ImageChops

            im = ImageChops.invert(im)  # PIL read it as Adobe's inverted CMYK; this file is plain CMYK
            notes.append("CMYK JPEG without Adobe marker read as plain (not inverted) CMYK")
        notes.append("CMYK converted to RGB (approximate colours, no colour profile applied)")
    elif im.mode not in ("L", "1", "P", "RGB", "YCbCr"):
        notes.append(f"{im.mode} pixels converted to RGB")
    return im.convert("RGB"), notes


# -- orientation and frames ---------------------------------------------------------------------------------


def _orientation(im: Image.Image) -> tuple[int, list[str]]:
    """The EXIF orientation (1 when absent), or 1 and a note when the EXIF block cannot be read."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds on a corrupt EXIF block
        return 1, [f"EXIF block unreadable ({e}); orientation not applied"]
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 1
    if value not in (1, *_TRANSPOSE):
        return 1, [f"EXIF orientation {value} is not a valid value; ignored"]
    return value, []


def _frame_note(im: Image.Image) -> list[str]:
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format != "MPO":  # MPO: a phone JPEG with a preview or depth map after it
        return [f"first of {frames} frames/pages used"]
    return []


# -- the decoder --------------------------------------------------------------------------------------------


def _unidentified(fh: BinaryIO) -> str:
    """Why PIL recognised no image format: an empty file, or bytes of no format it reads."""
    try:
        fh.seek(0, 2)
        empty = fh.tell() == 0
    except (OSError, ValueError):
        empty = False
    return "the file is empty" if empty else "its bytes are not an image format that PIL reads"


def _open(fh: BinaryIO, name: str) -> Image.Image:
    """The image's header, refused over the pixel limit before any pixel is decoded."""
    try:
        im = Image.open(fh)
    except Image.DecompressionBombError as e:  # PIL's own guard, at twice the limit
        raise ImageTooLargeError(_bomb_message(name, e)) from e
    except UnidentifiedImageError as e:  # PIL's text names its file object, not the file: say what it means
        raise ImageReadError(f"{name}: not a readable image ({_unidentified(fh)})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: not a readable image ({e})") from e
    if im.width * im.height > MAX_PIXELS:
        raise ImageTooLargeError(too_large_message(name, im.size))
    return im


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size of the picture fitted into max_side x max_side: what a JPEG's draft mode must still cover
    (asking for max_side on both sides would make a wide scan decode at twice the scale it needs)."""
    w, h = size
    scale = min(1.0, max_side / max(w, h, 1))
    return max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))


def _thumbnail(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def _decode_loaded(im: Image.Image, data: bytes | None, max_side: int | None,
                   finish: Callable[[Image.Image], Image.Image] | None) -> tuple[Image.Image, list[str]]:
    """Decode, correct, reduce and finish an opened image (inside the budget); the notes say what was done."""
    notes = _load(im, data)
    orientation, exif_notes = _orientation(im)
    img, mode_notes = _to_rgb(im)
    notes += exif_notes + mode_notes + _frame_note(im)
    if orientation != 1:
        img = img.transpose(_TRANSPOSE[orientation])
        notes.append(f"rotated by EXIF orientation {orientation}")
    if max_side:
        img = _thumbnail(img, max_side)
    return (finish(img) if finish is not None else img), notes


def decode_image(
    source: str | Path | bytes,
    *,
    max_side: int | None = None,
    finish: Callable[[Image.Image], Image.Image] | None = None,
    name: str | None = None,
) -> DecodedImage:
    """Decode a file (or its bytes) to the RGB picture a person sees, and say what was corrected.

    `max_side`: the result fits in max_side x max_side (aspect kept); JPEGs are decoded at a reduced
    scale first (draft mode), which is much faster for big scans. `finish`: applied to the corrected
    picture while its pixels count against the decode budget (e.g. the caller's resize), so the
    full-size picture is gone before the budget is given back. `name` names the source in messages
    (default: the path, or "<bytes>"). Raises ImageReadError (ImageTooLargeError over `MAX_PIXELS`).
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ImageReadError(f"{name}: cannot open ({e.strerror or e})") from e
    with fh:  # everything is read while it is open; the result never reads the file again
        im = _open(fh, name)
        fmt, mode, size = im.format, im.mode, im.size
        if max_side and fmt in _JPEG_FORMATS:
            im.draft(None, _fitted(im.size, max_side))
        with DECODE_BUDGET.hold(im.width * im.height):
            try:  # the damage checks walk a JPEG's compressed data (small next to its pixels)
                data = (source if isinstance(source, bytes) else _reread(fh)) if fmt in _JPEG_FORMATS else None
                img, notes = _decode_loaded(im, data, max_side, finish)
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
                raise ImageReadError(f"{name}: not a readable image ({e})") from e
    return DecodedImage(image=img, notes=tuple(notes), format=fmt, mode=mode, size=size)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding a pixel (`read_header`)."""

    format: str | None
    mode: str
    size: tuple[int, int]


# How much of a file's end `read_header` reads to see whether it ends like a complete file.
_TAIL = 64 * 1024
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk with its CRC: the last 8 bytes of every complete PNG


def _end_problem(fh: BinaryIO, fmt: str | None) -> str | None:
    """Why a JPEG or PNG file does not end like a complete one (None when it does, or for other formats).

    JPEG: entropy-coded data never holds 0xFF 0xD9 (a 0xFF there is followed by 0x00 or a restart marker),
    so a file cut inside its image data has no end-of-image marker after its last start-of-scan marker.
    Bytes after the marker (camera trailers) are allowed. PNG: the IEND chunk must be there.
    """
    if fmt not in (*_JPEG_FORMATS, "PNG"):
        return None
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _TAIL))
    tail = fh.read()
    if fmt == "PNG":
        return None if _PNG_END in tail else "truncated: the PNG file ends before its IEND chunk"
    if tail.rfind(b"\xff\xd9") > tail.rfind(b"\xff\xda"):
        return None
    return "truncated: no JPEG end-of-image marker (FFD9) after the image data; the file was cut short"


def read_header(path: str | Path, *, name: str | None = None) -> ImageHeader:
    """The header of an image file (format, pixel mode, size) under the pixel limit, and whether a JPEG or PNG
    ends like a complete file: what `data check --quick` looks at, reading the header and the last 64 KiB.

    Catches: files that are not images or in a format PIL cannot read, damaged headers, images over
    `MAX_PIXELS`, empty files, and JPEG/PNG files cut short (an interrupted copy or download). Misses what
    only decoding shows: damaged data inside the compressed stream (the picture decodes garbled), a cut
    TIFF or other format, a file cut after a JPEG's end-of-image marker. Raises ImageReadError like
    `decode_image` (ImageTooLargeError over the limit).
    """
    name = name or str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ImageReadError(f"{name}: cannot open ({e.strerror or e})") from e
    with fh:
        im = _open(fh, name)
        fmt, mode, size = im.format, im.mode, im.size
        try:
            problem = _end_problem(fh, fmt)
        except OSError as e:
            raise ImageReadError(f"{name}: not a readable image ({e})") from e
    if problem:
        raise ImageReadError(f"{name}: not a readable image ({problem})")
    return ImageHeader(format=fmt, mode=mode, size=size)


def _reread(fh: BinaryIO) -> bytes:
    fh.seek(0)
    return fh.read()


@dataclass(frozen=True)
class Thumbnail:
    """A small JPEG of an image, and what the decoder corrected or found damaged (`DecodedImage.notes`)."""

    jpeg: bytes
    notes: tuple[str, ...]


def jpeg_thumbnail(source: str | Path | bytes, max_side: int, *, quality: int = 85) -> Thumbnail:
    """The picture fitted into max_side x max_side as JPEG bytes: the one thumbnail of every page and map.

    Decoded by `decode_image` (orientation, transparency on white, 16-bit, the pixel limit); raises
    ImageReadError like it.
    """
    dec = decode_image(source, max_side=max_side)
    buf = io.BytesIO()
    dec.image.save(buf, format="JPEG", quality=quality)
    return Thumbnail(jpeg=buf.getvalue(), notes=dec.notes)


def discard_pixels(img: Image.Image) -> Image.Image:
    """A `finish` for callers that only check a file: a 1 x 1 stand-in, so nothing big outlives the budget."""
    return img.resize((1, 1), Image.Resampling.NEAREST)


def decode_rgb(source: str | Path | bytes, *, name: str | None = None) -> Image.Image:
    """The decoded RGB picture alone, for callers that decode images they made themselves."""
    return decode_image(source, name=name).image


def is_damaged(notes: tuple[str, ...] | list[str]) -> bool:
    """Whether the decoder found damaged data (the picture is garbled), not only a correction."""
    return any(n.startswith(DAMAGED) for n in notes)


def note_lines(items: list[tuple[str, str, tuple[str, ...] | list[str]]], *, shown: int = 20,
               collection: str | Path | None = None) -> list[str]:
    """`warning:` lines for (uid, file, notes) triples, damaged files first, at most `shown` of them."""
    items = [it for it in items if it[2]]
    items.sort(key=lambda it: not is_damaged(it[2]))
    lines = [f"warning: uid {uid} ({path}): {'; '.join(notes)}" for uid, path, notes in items[:shown]]
    if len(items) > shown:
        where = f" {collection}" if collection is not None else " COLLECTION"
        lines.append(f"warning: ... and {len(items) - shown} more images decoded with corrections "
                     f"(`python -m data check{where}` lists them all)")
    return lines
