import pytest

from train.config import TrainConfig, apply_overrides, load_config, preset, save_config


def test_thesis_preset_is_the_original():
    c = preset("thesis")
    assert (c.arch, c.resolution, c.batch_size, c.optimizer, c.lr, c.weight_decay) == (
        "resnext101_32x8d", 320, 4, "adam", 1e-6, 1e-4)
    assert (c.margin, c.beta, c.num_negatives, c.epochs, c.compute_dtype, c.schedule) == (
        0.01, 0.1, 10, 5, "float32", "constant")
    assert c.swap and c.intra and c.reduction == "sum" and c.decay_all


def test_default_is_fast_bf16():
    assert preset() == TrainConfig() and preset().compute_dtype == "bfloat16" and preset().batch_size > 4


def test_overrides_typed():
    c = apply_overrides(preset("demo"), ["lr=1e-4", "batch_size=8", "swap=false", "frozen_stages=stem,layer1"])
    assert c.lr == 1e-4 and c.batch_size == 8 and c.swap is False and c.frozen_stages == ("stem", "layer1")
    c2 = apply_overrides(c, {"batch-size": "2"})
    assert c2.batch_size == 2


@pytest.mark.parametrize("bad,msg", [(["nope=1"], "unknown config field"), (["lr"], "key=value"),
                                     (["swap=maybe"], "true/false"), (["optimizer=sgd"], "optimizer")])
def test_bad_overrides(bad, msg):
    with pytest.raises(ValueError, match=msg):
        apply_overrides(preset(), bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_roundtrip(tmp_path):
    c = apply_overrides(preset("demo"), ["slow_stages=layer1"])
    save_config(c, tmp_path / "config.json", {"preset": "demo"})
    assert load_config(tmp_path / "config.json") == c


def test_start_config_takes_the_weights_arch():
    from train.config import start_config

    cfg, name = start_config(None, weights_arch="resnet50")
    assert (name, cfg.arch) == ("fast", "resnet50") and cfg.resolution == preset("fast").resolution
    cfg, _ = start_config("demo", arch="resnet50", weights_arch="resnet50", overrides=["lr=1e-3"])
    assert (cfg.arch, cfg.lr, cfg.resolution) == ("resnet50", 1e-3, preset("demo").resolution)
    with pytest.raises(ValueError, match="resnet50 weights but the arch asked for is resnet18"):
        start_config(None, arch="resnet18", weights_arch="resnet50")
    with pytest.raises(ValueError, match="drop --arch / --set arch"):
        start_config(None, overrides=["arch=resnet18"], weights_arch="resnet50")
    cfg, _ = start_config(None, arch="resnet18")  # random weights: the asked-for arch
    assert cfg.arch == "resnet18"


def test_start_config_defaults_to_the_source_runs_preset():
    from train.config import start_config

    cfg, name = start_config(None, source={"preset": "demo", "config": {"lr": 5.0}}, weights_arch="resnet18")
    assert name == "demo" and cfg == apply_overrides(preset("demo"), {})  # the preset, not the run's --set values
    cfg, name = start_config("thesis", source={"preset": "demo"}, weights_arch="resnet18")
    assert name == "thesis" and cfg.arch == "resnet18" and cfg.batch_size == 4
    assert start_config(None, source={})[1] == "fast"


def test_throughput_fields():
    c = preset("fast")
    assert c.prefetch == 2 and c.remat is False and c.compile_cache is True
    assert apply_overrides(c, ["remat=true", "prefetch=4"]).remat
    with pytest.raises(ValueError, match="prefetch"):
        apply_overrides(c, ["prefetch=0"])


def test_annotated_negative_share_is_a_field_with_bounds():
    """Issue 16: the share of an anchor's negatives that annotated NEGATIVE pairs may fill (train/mining.py)."""
    assert preset("fast").annotated_negative_share == 0.5
    assert apply_overrides(preset("demo"), ["annotated_negative_share=0.25"]).annotated_negative_share == 0.25
    with pytest.raises(ValueError, match="annotated_negative_share must be between 0 and 1"):
        apply_overrides(preset("demo"), ["annotated_negative_share=1.5"])
