"""`train` trains on pictures as a person sees them and says, by uid and file, what was corrected
(issue 11, defect 3: a transparent drawing was trained on as a black square, without a word)."""

import pytest

from data.image import decode_rgb
from data.pipeline import open_prepared
from tests.data import image_kinds as K
from tests.train.conftest import build_tiny_collection
from train.config import apply_overrides, preset
from train.loop import run_training

CFG = apply_overrides(preset("demo"), {"resolution": 32, "batch_size": 8, "epochs": 1, "max_steps": 1,
                                       "num_negatives": 1, "eval_batch_size": 16, "slow_stages": (),
                                       "frozen_stages": ()})


@pytest.mark.slow
def test_train_warns_about_corrected_images_and_trains_on_the_corrected_pixels(tmp_path, capfd):
    root = build_tiny_collection(tmp_path / "coll")
    K.line_drawing(root / "img" / "distractor_000.png")  # an RGBA drawing on a transparent background
    run_training(root, tmp_path / "run", CFG, progress=False)
    err = capfd.readouterr().err
    assert f"warning: uid distractor_000 ({root / 'img' / 'distractor_000.png'}): transparent areas put on white" in err
    src = open_prepared(root / "prepared")  # what the run trained on
    uid, data = src[int(src.indices[src.uids.index("distractor_000")])]
    stored = decode_rgb(data)
    assert uid == "distractor_000" and K.mean_rgb(stored, (0, 0, 8, 8)).min() > 240  # paper, not black
    assert K.mean_rgb(stored, (23, 23, 25, 25)).max() < 60  # the line is still there
