"""The persistent XLA compilation cache of real runs (`python -m train`, `python -m model embed`).

Why: compiling the train step of a ResNeXt-101 takes minutes (on XLA:CPU, with split grouped convs,
longer still); a resumed run, the next annotation round or a second embedding of the same model
compiles exactly the same programs. With the cache on disk they are loaded instead.

Where: `$VISUAL_SIGNATURES_CACHE` if set (a directory; "off" or "" disables the cache), else an
explicit `JAX_COMPILATION_CACHE_DIR` (JAX's own variable, e.g. the test suite's), else
`~/.cache/visual-signatures/jax`. Only programs that took at least `MIN_COMPILE_SECONDS` to compile
are stored: small helper functions compile faster than they load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

ENV_VAR = "VISUAL_SIGNATURES_CACHE"
MIN_COMPILE_SECONDS = 1.0
_OFF = ("", "off", "0", "none", "false")


def cache_dir(environ=None) -> Path | None:
    """The cache directory the environment asks for (None: disabled); see the module docstring."""
    env = os.environ if environ is None else environ
    if ENV_VAR in env:
        value = env[ENV_VAR].strip()
        return None if value.lower() in _OFF else Path(value).expanduser()
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(env["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "visual-signatures" / "jax"


def enable_compilation_cache(enabled: bool = True, *, environ=None) -> Path | None:
    """Point JAX's persistent compilation cache at `cache_dir()`; returns the directory (None: off).

    Call before the first compilation. `enabled=False` (a CLI switch) leaves JAX's settings alone.
    """
    path = cache_dir(environ) if enabled else None
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"compilation cache off: cannot create {path} ({e}); set {ENV_VAR} to a writable directory.",
              file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
