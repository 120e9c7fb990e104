"""The persistent XLA compilation cache of real runs (`python -m train`, `python -m model embed`,
`python -m cluster optics`).

Why: compiling the train step of a ResNeXt-101 takes minutes (on XLA:CPU, with split grouped convs,
longer still); a resumed run, the next annotation round or a second embedding of the same model
compiles exactly the same programs. With the cache on disk they are loaded instead.

Where: `$VISUAL_SIGNATURES_CACHE` if set (a directory; "off" or "" disables the cache), else an
explicit `JAX_COMPILATION_CACHE_DIR` (JAX's own variable, e.g. the test suite's), else
`~/.cache/visual-signatures/jax`. Training and embedding store only programs that took at least
`MIN_COMPILE_SECONDS` to compile (their many small helpers would fill the cache for little). `cluster
optics` stores all of its ~13 small programs (the kNN search and its helpers, ~70 KB together): they take
~0.2 s to compile and ~0.03 s to load, a tenth of the whole command at 8,000 signatures (measured on the
2-core CPU of benchmarks/RESULTS.md). A new number of signatures is a new shape, so new entries;
`jax_compilation_cache_max_size` (JAX's own setting) bounds the directory if that ever matters.

In data/ because jax programs are compiled in model/, train/ and data/ (data.knn, which cluster/ runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

from data.paths import unwritable_dir

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


def enable_compilation_cache(enabled: bool = True, *, environ=None,
                             min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Path | None:
    """Point JAX's persistent compilation cache at `cache_dir()`; returns the directory (None: off).

    Call before the first compilation. `enabled=False` (a CLI switch) leaves JAX's settings alone.
    min_compile_seconds: store programs that took at least this long to compile (0: every program).
    """
    path = cache_dir(environ) if enabled else None
    if path is None:
        return None
    problem = unwritable_dir(path)  # a read-only folder: JAX would warn once per program it compiles
    if problem is not None:
        print(f"compilation cache off: cannot write in {path} ({problem.strerror or problem}); set {ENV_VAR} to a "
              "writable directory (or to 'off').", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
