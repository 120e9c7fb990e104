"""The one decoder of every stage (`data.image`): what a person sees, and a word for every correction.

Issue 11, defect 3 (16-bit PNGs white, transparent drawings black, EXIF orientation ignored) and the image
items of defect 10 (one pixel limit, bounded concurrent decodes, damaged JPEGs decoded without a word).
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import data.image as image_mod
from data.__main__ import cli
from data.image import (
    ImageReadError,
    ImageTooLargeError,
    PixelBudget,
    decode_image,
    decode_rgb,
    jpeg_thumbnail,
)
from data.preprocess import load_uint8
from tests.data import image_kinds as K


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit gradient came out ~99.6% white (values clipped at 255); it is mid-grey on average."""
    path = K.gradient16(tmp_path / "g16.png")
    img = decode_rgb(path)
    a = np.asarray(img, dtype=np.float64)
    assert img.mode == "RGB" and abs(a.mean() - 127.5) < 2
    assert a[:, 0].max() < 5 and a[:, -1].min() > 250  # black on the left, white on the right
    assert "16-bit greyscale scaled to 8-bit" in decode_image(path).notes


@pytest.mark.parametrize("make", [K.line_drawing, K.palette_transparent, K.grey_alpha])
def test_transparent_areas_are_white_like_paper(tmp_path, make):
    """Line drawings on a transparent background were black squares."""
    path = make(tmp_path / "t.png")
    img = decode_rgb(path)
    assert img.mode == "RGB"
    assert K.mean_rgb(img, (0, 0, 4, 4)).min() > 250  # a transparent corner is white
    opaque = {K.line_drawing: (0, 0, 0), K.palette_transparent: K.RED, K.grey_alpha: K.GREY}[make]
    assert np.abs(K.mean_rgb(img, (23, 23, 25, 25) if make is K.line_drawing else (12, 12, 20, 20))
                  - opaque).max() < 2  # the drawn parts keep their colour
    dec = decode_image(path)
    assert dec.notes == ("transparent areas put on white",)


@pytest.mark.parametrize(("orientation", "red_at"), [(6, (24, 8)), (8, (8, 40))])
def test_exif_orientation_is_applied(tmp_path, orientation, red_at):
    """Stored 48 x 32 with a red top-left corner: orientation 6 (turn clockwise) puts it top-right,
    8 (counter-clockwise) bottom-left; phone photos were embedded sideways."""
    path = K.oriented_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    dec = decode_image(path)
    img = dec.image
    assert img.size == (32, 48)
    x, y = red_at
    assert np.abs(K.mean_rgb(img, (x - 4, y - 4, x + 4, y + 4)) - K.RED).max() < 12
    assert f"rotated by EXIF orientation {orientation}" in dec.notes


@pytest.mark.parametrize("adobe", [True, False])
def test_cmyk_jpegs_become_their_colour(tmp_path, adobe):
    """Cyan stays cyan: with Adobe's marker (inverted data) and without it (plain data, which PIL inverts)."""
    dec = decode_image(K.cmyk_jpeg(tmp_path / "c.jpg", adobe=adobe))
    assert np.abs(K.mean_rgb(dec.image) - K.CYAN).max() < 6, K.mean_rgb(dec.image)
    assert any("CMYK converted to RGB" in n for n in dec.notes)
    assert any("without Adobe marker" in n for n in dec.notes) == (not adobe)


def test_wide_modes_are_scaled(tmp_path):
    """32-bit integer and float pixels: scaled by what their range says, with a note."""
    ints = Image.fromarray(np.tile(np.linspace(0, 65535, 32).astype(np.int32), (4, 1)), "I")
    floats = Image.fromarray(np.tile(np.linspace(0, 1, 32).astype(np.float32), (4, 1)), "F")
    for im, word in ((ints, "16-bit values"), (floats, "[0, 1]")):
        path = tmp_path / f"{im.mode}.tif"
        im.save(path)
        dec = decode_image(path)
        a = np.asarray(dec.image, dtype=np.float64)
        assert abs(a.mean() - 127.5) < 3 and a.max() > 250 and a.min() < 5
        assert any(word in n for n in dec.notes), dec.notes


@pytest.mark.parametrize("kind", ["16-bit", "drawing", "phone"])
def test_thumbnails_get_the_same_corrections(tmp_path, kind):
    """A reduced decode (JPEG draft mode for thumbnails) is corrected the same way."""
    path = {"16-bit": lambda: K.gradient16(tmp_path / "x.png"), "drawing": lambda: K.line_drawing(tmp_path / "x.png"),
            "phone": lambda: K.oriented_jpeg(tmp_path / "x.jpg", 6)}[kind]()
    full, small = decode_image(path), decode_image(path, max_side=16)
    assert max(small.image.size) == 16 and small.notes == full.notes and len(small.notes) == 1
    corner = K.mean_rgb(small.image, (0, 0, 2, 2))
    if kind == "16-bit":
        assert abs(np.asarray(small.image, dtype=np.float64).mean() - 127.5) < 4
    elif kind == "drawing":
        assert corner.min() > 245
    else:
        assert small.image.height > small.image.width and np.abs(K.mean_rgb(small.image, (9, 0, 11, 2)) - K.RED).max() < 20
    ratio = full.image.width / full.image.height
    assert abs(small.image.width / small.image.height - ratio) < 0.2
    resized = full.image.resize(small.image.size, Image.Resampling.BILINEAR)
    assert np.abs(K.mean_rgb(small.image) - K.mean_rgb(resized)).max() < 8


def test_damaged_jpeg_is_reported_and_an_intact_one_is_not(tmp_path):
    """Zeros written over the middle of a JPEG: PIL decodes garbage without a word; libjpeg's warning
    ('Corrupt JPEG data: 694 extraneous bytes before marker 0xd9' for this file) is reported."""
    dec = decode_image(K.damaged_jpeg(tmp_path / "bad.jpg"))
    assert len(dec.notes) == 1 and dec.notes[0].startswith("damaged data:"), dec.notes
    assert "replace the file" in dec.notes[0]
    assert image_mod.is_damaged(decode_image(tmp_path / "bad.jpg", max_side=40).notes)
    # with restart markers libjpeg resynchronises at the next one ('192 extraneous bytes before marker 0xd1')
    dec = decode_image(K.damaged_jpeg(tmp_path / "bad_rst.jpg", restart_markers=True))
    assert dec.notes and dec.notes[0].startswith("damaged data: 1 of 36 restart intervals"), dec.notes
    # no false alarm: intact JPEGs of every encoder setting decode to PIL's own pixels, without a note
    img = K.textured(160, seed=3)
    for i, kw in enumerate([{}, {"quality": 95, "subsampling": 0}, {"progressive": True},
                            {"restart_marker_blocks": 4}, {"quality": 40}]):
        path = tmp_path / f"{i}.jpg"
        img.save(path, **kw)
        dec = decode_image(path)
        with Image.open(path) as ref:
            assert np.array_equal(np.asarray(dec.image), np.asarray(ref.convert("RGB"))), kw
        assert dec.notes == () and decode_image(path, max_side=40).notes == (), kw
    img.convert("L").save(tmp_path / "grey.jpg")
    assert decode_image(tmp_path / "grey.jpg").notes == ()
    # a file that cannot be decoded stays an error (reported and skipped, never zeros)
    for bad in ("truncated", "garbage", "missing"):
        path = tmp_path / f"{bad}.jpg"
        if bad == "truncated":
            K.truncated_jpeg(path)
        elif bad == "garbage":
            path.write_bytes(b"not an image at all")
        with pytest.raises(ImageReadError, match=f"{bad}.jpg"):
            decode_image(path)


def test_pixel_limit_is_one_message_with_file_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(image_mod, "MAX_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("RGB", (50, 40), K.RED).save(path)
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(path)
    msg = str(e.value)
    assert str(path) in msg and "50 x 40 px" in msg and "limit" in msg and "downscaled" in msg
    assert "point images.csv at it" in msg
    with pytest.raises(ImageTooLargeError):
        decode_image(path, max_side=16)  # the same limit for thumbnails


@pytest.mark.parametrize(("w", "h"), [(20000, 16000), (40000, 30000)])
def test_real_limit_refuses_huge_scans_before_decoding(tmp_path, w, h):
    """Above the limit (320 Mpx) and above PIL's own guard at twice it (1200 Mpx): the same message,
    from the header alone (the pixels are never allocated)."""
    path = K.huge_jpeg_header(tmp_path / "scan.jpg", w, h)
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and f"{w * h / 1e6:.4g} Mpx" in msg
    assert f"over the limit of {image_mod.MAX_PIXELS / 1e6:.4g} Mpx that every stage uses" in msg


def test_pixel_budget_bounds_concurrent_decodes(tmp_path, monkeypatch):
    """Six 'huge' images decoded by six threads: never more pixels at once than the budget."""
    budget = PixelBudget(2 * 64 * 64)
    monkeypatch.setattr(image_mod, "DECODE_BUDGET", budget)
    path = tmp_path / "x.png"
    Image.new("RGB", (64, 64), K.RED).save(path)
    peak, lock = [0], threading.Lock()

    def finish(img):  # runs while the image's pixels count against the budget
        with lock:
            peak[0] = max(peak[0], budget.used)
        time.sleep(0.05)
        return img

    threads = [threading.Thread(target=decode_image, args=(path,), kwargs={"finish": finish}) for _ in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < peak[0] <= 2 * 64 * 64 and budget.used == 0
    assert time.monotonic() - t0 >= 0.15  # at most two at a time: at least three rounds of 50 ms
    with budget.hold(10):  # an image larger than the whole budget waits, then runs alone
        done = threading.Event()
        t = threading.Thread(target=lambda: (budget.hold(10**6).__enter__(), done.set()))
        t.start()
        assert not done.wait(0.1)
    assert done.wait(2)
    t.join()




# -- through the CLI --------------------------------------------------------------------------------------


def _collection(root, files: dict[str, str]):
    lines = ["uid,path"] + [f"{uid},{name}" for uid, name in files.items()]
    (root / "images.csv").write_text("\n".join(lines) + "\n")
    (root / "connections.csv").write_text("a,b,type\n")
    return root


def test_check_reports_every_correction_by_uid_and_line(tmp_path):
    K.gradient16(tmp_path / "g16.png")
    K.line_drawing(tmp_path / "draw.png")
    K.oriented_jpeg(tmp_path / "phone.jpg", 6)
    K.damaged_jpeg(tmp_path / "bad.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    _collection(tmp_path, {"g": "g16.png", "d": "draw.png", "p": "phone.jpg", "x": "bad.jpg", "ok": "plain.png"})
    res = CliRunner().invoke(cli, ["check", str(tmp_path)])
    assert res.exit_code == 0, res.output  # corrections are warnings, not errors
    out = res.output
    assert "WARNING images.csv:2: uid g: image read with corrections: 16-bit greyscale scaled to 8-bit" in out
    assert "WARNING images.csv:3: uid d: image read with corrections: transparent areas put on white" in out
    assert "WARNING images.csv:4: uid p: image read with corrections: rotated by EXIF orientation 6" in out
    assert "WARNING images.csv:5: uid x: damaged data:" in out and "replace the file" in out
    assert "uid ok:" not in out


def test_check_and_every_stage_use_one_pixel_limit(tmp_path, monkeypatch):
    """check accepted up to 800 Mpx while the annotation page failed above 179 Mpx: one limit, one message."""
    monkeypatch.setattr(image_mod, "MAX_PIXELS", 1000)
    Image.new("RGB", (50, 40), K.RED).save(tmp_path / "big.png")
    Image.new("RGB", (20, 20), K.RED).save(tmp_path / "small.png")
    _collection(tmp_path, {"big": "big.png", "small": "small.png"})
    res = CliRunner().invoke(cli, ["check", str(tmp_path)])
    assert res.exit_code == 1, res.output
    expected = image_mod.too_large_message(str(tmp_path / "big.png"), (50, 40))
    assert f"ERROR images.csv:2: uid big: {expected}" in res.output
    assert "uid small" not in res.output


def test_prepare_stores_the_corrected_picture_and_says_so(tmp_path):
    """`data prepare` (what train reads): the drawing on white, the phone photo upright, a warning each."""
    from data.pipeline import open_prepared

    K.line_drawing(tmp_path / "draw.png")
    K.oriented_jpeg(tmp_path / "phone.jpg", 6)
    Image.new("RGB", (8, 8), K.RED).save(tmp_path / "plain.jpg")
    _collection(tmp_path, {"d": "draw.png", "p": "phone.jpg", "ok": "plain.jpg"})
    res = CliRunner().invoke(cli, ["prepare", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"warning: uid d ({tmp_path / 'draw.png'}): transparent areas put on white" in res.stderr
    assert f"warning: uid p ({tmp_path / 'phone.jpg'}): rotated by EXIF orientation 6" in res.stderr
    assert "uid ok" not in res.stderr
    src = open_prepared(tmp_path / "prepared")
    pos = {u: i for i, u in enumerate(src.uids)}
    drawing = decode_rgb(src[pos["d"]][1])
    assert K.mean_rgb(drawing, (0, 0, 4, 4)).min() > 245
    phone = decode_rgb(src[pos["p"]][1])
    assert phone.size == (32, 48)
    assert np.abs(K.mean_rgb(phone, (20, 4, 28, 12)) - K.RED).max() < 20
    assert load_uint8(src[pos["ok"]][1], 8).shape == (8, 8, 3)


def test_jpeg_thumbnail_is_the_corrected_picture_fitted_into_max_side(tmp_path):
    """The one thumbnail maker: decoded like every stage (EXIF orientation applied, the note kept), fitted."""
    K.oriented_jpeg(tmp_path / "phone.jpg", 6)
    thumb = jpeg_thumbnail(tmp_path / "phone.jpg", 24)
    with Image.open(io.BytesIO(thumb.jpeg)) as im:
        assert im.format == "JPEG" and max(im.size) == 24 and im.height > im.width
    assert any("orientation" in n for n in thumb.notes)
    with pytest.raises(ImageReadError):
        jpeg_thumbnail(b"not an image", 24)


def test_an_empty_file_and_a_foreign_file_are_named_for_what_they_are(tmp_path):
    """Trial of issue 14: the reason read `cannot identify image file <_io.BufferedReader name=...>`."""
    from data.image import ImageReadError, decode_image, read_header

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for read in (decode_image, read_header):
        with pytest.raises(ImageReadError, match="the file is empty") as e:
            read(tmp_path / "empty.jpg")
        assert "BufferedReader" not in str(e.value)
        with pytest.raises(ImageReadError, match="not an image format that PIL reads"):
            read(tmp_path / "text.jpg")
