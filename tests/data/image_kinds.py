"""Small image files of every kind the decoder must get right, and what a person sees in each.

Shared by the data, model and cluster tests (issue 11, defect 3 and the image items of defect 10).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREY, WHITE, CYAN = (220, 30, 30), (128, 128, 128), (255, 255, 255), (0, 255, 255)


def gradient16(path: Path) -> Path:
    """A 16-bit greyscale PNG (mode I;16), black to white left to right: a person sees mid-grey on average."""
    a = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (16, 1))
    Image.fromarray(a).save(path)
    return path


def line_drawing(path: Path) -> Path:
    """RGBA: a black cross on a fully transparent background (a line drawing on nothing, i.e. on paper)."""
    a = np.zeros((48, 48, 4), np.uint8)
    a[22:26, :, 3] = 255
    a[:, 22:26, 3] = 255
    Image.fromarray(a, "RGBA").save(path)
    return path


def palette_transparent(path: Path) -> Path:
    """A palette PNG whose index 0 (black in the palette) is transparent; a red square in the middle."""
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    im.paste(1, (8, 8, 24, 24))
    im.save(path, transparency=0)
    return path


def grey_alpha(path: Path) -> Path:
    """LA: a grey square on a transparent background."""
    a = np.zeros((32, 32, 2), np.uint8)
    a[8:24, 8:24] = (GREY[0], 255)
    Image.fromarray(a, "LA").save(path)
    return path


def _strip_adobe(data: bytes) -> bytes:
    i = data.index(b"\xff\xee")
    return data[:i] + data[i + 2 + int.from_bytes(data[i + 2 : i + 4], "big") :]


def cmyk_jpeg(path: Path, *, adobe: bool) -> Path:
    """Cyan in CMYK. With Adobe's APP14 marker the data is stored inverted (Adobe's convention); without
    it plain, as other software writes CMYK."""
    if adobe:
        Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(path, quality=95)
    else:  # PIL always writes inverted data; write the inverse so the stored bytes are plain cyan
        buf = io.BytesIO()
        Image.new("CMYK", (32, 32), (0, 255, 255, 255)).save(buf, format="JPEG", quality=95)
        path.write_bytes(_strip_adobe(buf.getvalue()))
    return path


def oriented_jpeg(path: Path, orientation: int) -> Path:
    """Stored 48 x 32, grey with a red 16 x 16 top-left corner, with an EXIF orientation tag."""
    im = Image.new("RGB", (48, 32), GREY)
    im.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, subsampling=0, exif=exif)
    return path


def textured(size: int = 192, seed: int = 0) -> Image.Image:
    """A picture with detail everywhere (so its JPEG data is dense)."""
    rng = np.random.default_rng(seed)
    x = np.add.outer(np.arange(size), np.arange(size)) % 256
    a = np.stack([x, x[::-1], 255 - x], -1) // 2 + rng.integers(0, 128, (size, size, 3))
    return Image.fromarray(a.astype(np.uint8))


def damaged_jpeg(path: Path, *, restart_markers: bool = False) -> Path:
    """A baseline JPEG (with restart markers every 4 blocks, if asked) with 40 bytes in the middle of its
    data overwritten by zeros.

    PIL decodes it without an error or a warning (checked here): libjpeg only warns, PIL silences it."""
    buf = io.BytesIO()
    textured().save(buf, format="JPEG", quality=90, **({"restart_marker_blocks": 4} if restart_markers else {}))
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid : mid + 40] = bytes(40)
    path.write_bytes(bytes(data))
    with Image.open(path) as im:  # the premise: PIL says nothing
        im.load()
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in the middle of its data: not decodable, an error (never zeros)."""
    buf = io.BytesIO()
    textured().save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def mean_rgb(im: Image.Image, box=None) -> np.ndarray:
    a = np.asarray(im.convert("RGB"), dtype=np.float64)
    if box is not None:
        x0, y0, x1, y1 = box
        a = a[y0:y1, x0:x1]
    return a.reshape(-1, 3).mean(axis=0)


def huge_jpeg_header(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose header claims `width` x `height` (a huge scan, as far as any reader can tell
    before decoding; nothing of that size is ever allocated when the limit is checked first)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), GREY).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path
