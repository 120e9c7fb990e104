"""Where the persistent compilation cache goes, and that enabling it configures JAX."""

import jax
import pytest

from data.compile_cache import ENV_VAR, MIN_COMPILE_SECONDS, cache_dir, enable_compilation_cache


@pytest.fixture
def restore_jax_cache_config():
    keep = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", keep[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", keep[1])


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir({}) == tmp_path / "home/.cache/visual-signatures/jax"
    assert cache_dir({"JAX_COMPILATION_CACHE_DIR": "/x/jax"}).as_posix() == "/x/jax"
    assert cache_dir({ENV_VAR: "/y", "JAX_COMPILATION_CACHE_DIR": "/x/jax"}).as_posix() == "/y"
    for off in ("off", "", "0", "OFF"):
        assert cache_dir({ENV_VAR: off}) is None


def test_enable_sets_jax_config(tmp_path, restore_jax_cache_config):
    target = tmp_path / "cache"
    assert enable_compilation_cache(environ={ENV_VAR: str(target)}) == target
    assert target.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(target)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == MIN_COMPILE_SECONDS


def test_disabled_leaves_jax_alone(tmp_path, restore_jax_cache_config):
    before = jax.config.jax_compilation_cache_dir
    assert enable_compilation_cache(False, environ={ENV_VAR: str(tmp_path / "c")}) is None
    assert enable_compilation_cache(environ={ENV_VAR: "off"}) is None
    assert jax.config.jax_compilation_cache_dir == before and not (tmp_path / "c").exists()


def test_unwritable_dir_is_reported_not_fatal(tmp_path, restore_jax_cache_config, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    before = jax.config.jax_compilation_cache_dir
    assert enable_compilation_cache(environ={ENV_VAR: str(blocker / "cache")}) is None
    assert ENV_VAR in capsys.readouterr().err and jax.config.jax_compilation_cache_dir == before


def test_threshold_is_the_callers(tmp_path, restore_jax_cache_config):
    """cluster optics stores every program (its ~13 small ones compile in ~0.2 s and load in ~0.03 s)."""
    enable_compilation_cache(environ={ENV_VAR: str(tmp_path / "c")}, min_compile_seconds=0.0)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_a_cache_dir_that_cannot_be_written_is_one_message_not_a_warning_per_program():
    """VISUAL_SIGNATURES_CACHE naming a folder that exists but is read-only (a shared, read-only cache, `/`):
    one `compilation cache off` line and the cache off (was: JAX's `UserWarning: Error writing persistent
    compilation cache entry` with a traceback-like source line for every program compiled, ~13 per `cluster
    optics`). Runs as an unprivileged user where the tests run as root (root writes anywhere)."""
    import os
    import shutil
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no folder is read-only")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    code = ("import jax, jax.numpy as jnp\n"
            "from data.compile_cache import enable_compilation_cache\n"
            "print(enable_compilation_cache(min_compile_seconds=0.0))\n"
            "jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)).block_until_ready()\n")
    env = {**os.environ, ENV_VAR: "/", "HOME": "/", "PYTHONPATH": os.getcwd()}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    res = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/",
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None", res.stdout
    assert "Error writing persistent compilation cache" not in res.stderr, res.stderr
    assert res.stderr.count("compilation cache off: cannot write in /") == 1, res.stderr
