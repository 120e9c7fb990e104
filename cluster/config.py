"""What `cluster optics` can be asked for: the OPTICS parameters, the choices and the command's defaults.

Why a module of its own: the click CLI reads its option lists and defaults from here when it starts, and
this module imports neither JAX nor scikit-learn (`cluster.optics` does), so `python -m cluster --help`,
`annotate` and `accept` start without them. Each choice and each default is written here once; the CLI,
the algorithm (`cluster.optics`) and the command's glue (`cluster.clustering`) use these names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METRICS = ("cosine", "euclidean")
# the library (cluster.optics) also takes scikit-learn's default metric, minkowski with p=2 (the distance by
# coordinate differences), so scikit-learn's own OPTICS test-suite runs against it; the CLI offers METRICS
LIBRARY_METRICS = (*METRICS, "minkowski")
ENGINES = ("auto", "knn", "graph", "dense", "stream")
CLUSTER_METHODS = ("xi", "dbscan")
PRECISIONS = ("float64", "float32")
METHODS = ("optics", "hdbscan", "dbscan")  # OPTICS, or scikit-learn's HDBSCAN / DBSCAN for comparison
DBSCAN_EPS = 0.08  # `--method dbscan`'s eps when none is given (a cosine distance, below the max_eps below)


def knn_metric(metric: str) -> str:
    """The metric of nearest-neighbour queries for an OPTICS metric: minkowski with p=2 (scikit-learn's default,
    which the library takes) is euclidean, as scikit-learn's NearestNeighbors and data.knn compute it (by
    coordinate differences); cosine and euclidean are themselves."""
    return "euclidean" if metric == "minkowski" else metric


@dataclass(frozen=True)
class OpticsConfig:
    """OPTICS parameters (scikit-learn's names and defaults) plus how to run it."""

    min_samples: int = 5
    max_eps: float = math.inf
    metric: str = "cosine"
    cluster_method: str = "xi"
    xi: float = 0.05
    eps: float | None = None  # for cluster_method="dbscan"; None = max_eps, as in scikit-learn
    min_cluster_size: int | float | None = None
    predecessor_correction: bool = True
    engine: str = "auto"
    precision: str = "float64"
    block_size: int = 2048
    memory_budget_mb: float = 2048.0  # everything beyond the input array: see `cluster.optics.memory_plan`
    knn_k: int = 32  # engine "knn": neighbours per row of the first query (rows that need more get more)
    approximate: bool = False  # engine "knn": run on truncated lists instead of refusing (cluster.knn_graph)

    @property
    def extraction_eps(self) -> float:
        """The eps of `cluster_method="dbscan"`: `eps`, or max_eps when it is not given (scikit-learn's rule)."""
        return self.max_eps if self.eps is None else self.eps

    def validate(self, n: int) -> None:
        """Refuse parameters scikit-learn would refuse (or that this port does not run), for n points."""
        for name, value, allowed in (("metric", self.metric, LIBRARY_METRICS), ("engine", self.engine, ENGINES),
                                     ("cluster_method", self.cluster_method, CLUSTER_METHODS),
                                     ("precision", self.precision, PRECISIONS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not supported; use one of {allowed}.")
        if not isinstance(self.min_samples, int | np.integer) or self.min_samples < 2:
            raise ValueError(f"min_samples must be an integer >= 2, got {self.min_samples!r}.")
        if self.min_samples > n:
            raise ValueError(f"min_samples ({self.min_samples}) is larger than the number of points ({n}).")
        if not self.max_eps >= 0:
            raise ValueError(f"max_eps must be >= 0, got {self.max_eps}.")
        if self.cluster_method == "dbscan" and self.eps is not None and self.eps > self.max_eps:
            raise ValueError(f"eps ({self.eps}) must not exceed max_eps ({self.max_eps}).")
        if self.block_size < 1:
            raise ValueError("block_size must be positive.")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be positive, got {self.knn_k}.")

    def to_dict(self) -> dict:
        return asdict(self)


# What `python -m cluster optics` runs when an option is not given. Two fields differ from scikit-learn's
# defaults, for signatures: min_samples 2, so that a pattern known from two images can be a cluster, and
# max_eps 0.13, the cosine distance the thesis's fine-tuned ResNeXt used (docs/archive.md: choosing max_eps),
# which also keeps the radius graph small.
COMMAND_DEFAULTS = OpticsConfig(min_samples=2, max_eps=0.13)

# Issue 16: the command's distance thresholds are by default derived from the signatures themselves
# (`cluster.settings_check.auto_thresholds`) on centred signatures (`cluster.clustering.centre_rows`); measured
# on the demo collection (docs/clustering.md, "Settings from the data"). COMMAND_DEFAULTS.max_eps (0.13) and
# DBSCAN_EPS stay what the library takes when it is given no value and no "auto".
AUTO = "auto"
COMMAND_MAX_EPS = AUTO  # `--max-eps`: "auto" or a number
COMMAND_EPS = AUTO  # `--eps` of --method dbscan (and of OPTICS' dbscan extraction when max_eps is auto)
# `--centre/--no-centre` when neither is given: centre unless an explicit distance threshold the method uses is
# given (--max-eps for OPTICS, --eps for DBSCAN), since such a value was chosen on the signatures' raw scale.
