"""`model embed` reads pictures as a person sees them and says what it corrected (issue 11, defect 3).

A line drawing on a transparent background was embedded as a black square, a phone photo sideways.
"""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from data.signatures import load_signatures
from model.__main__ import cli
from tests.data import image_kinds as K


def test_embed_sees_corrected_pictures_and_warns_by_uid_and_file(tmp_path):
    root = tmp_path / "coll"
    root.mkdir()
    K.line_drawing(root / "draw.png")
    K.oriented_jpeg(root / "phone.jpg", 6)
    # what a person sees in each: the drawing on white paper, the photo upright
    with Image.open(root / "draw.png") as im:
        seen = Image.new("RGB", im.size, K.WHITE)
        seen.paste(im, mask=im.getchannel("A"))
        seen.save(root / "draw_seen.png")
    with Image.open(root / "phone.jpg") as im:
        im.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(root / "phone_seen.png")
    (root / "images.csv").write_text("uid,path\ndraw,draw.png\ndraw_seen,draw_seen.png\n"
                                     "phone,phone.jpg\nphone_seen,phone_seen.png\n")
    (root / "connections.csv").write_text("a,b,type\n")
    res = CliRunner().invoke(cli, ["embed", "--arch", "resnet18", "--weights", "random", "--collection", str(root),
                                   "--resolution", "32", "--out", str(tmp_path / "sig.npz"), "--no-progress",
                                   "--no-compile-cache"])
    assert res.exit_code == 0, res.output
    assert f"warning: uid draw ({root / 'draw.png'}): transparent areas put on white" in res.stderr
    assert f"warning: uid phone ({root / 'phone.jpg'}): rotated by EXIF orientation 6" in res.stderr
    assert "uid draw_seen" not in res.stderr and "uid phone_seen" not in res.stderr
    sig = load_signatures(tmp_path / "sig.npz")
    v = dict(zip(sig.uids, sig.vectors, strict=True))
    np.testing.assert_allclose(v["draw"], v["draw_seen"], atol=1e-5)
    np.testing.assert_allclose(v["phone"], v["phone_seen"], atol=1e-5)
