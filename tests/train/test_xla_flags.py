from train.xla_flags import TRAIN_FLAGS, set_train_flags, with_train_flags


def test_flags_added_once_and_user_values_kept():
    assert with_train_flags(None).split() == list(TRAIN_FLAGS)
    once = with_train_flags("--xla_dump_to=/tmp/d")
    assert once.split() == ["--xla_dump_to=/tmp/d", *TRAIN_FLAGS]
    assert with_train_flags(once) == once
    mine = "--xla_gpu_enable_latency_hiding_scheduler=false"
    assert with_train_flags(mine) == mine  # the user's choice wins


def test_set_in_the_environment():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    set_train_flags(env)
    assert env["XLA_FLAGS"].split()[0] == "--xla_force_host_platform_device_count=2"
    assert TRAIN_FLAGS[0] in env["XLA_FLAGS"]
