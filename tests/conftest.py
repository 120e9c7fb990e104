"""Session-wide test settings (owned by the lead; package fixtures live in tests/<pkg>/conftest.py)."""

import os
from pathlib import Path

# CPU only and quiet; matplotlib without a display.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# A persistent XLA compile cache per checkout: a second local run skips recompiling the large networks.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".jax_cache"))
