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
