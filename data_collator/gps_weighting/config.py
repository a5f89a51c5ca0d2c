"""Settings of GPS-weighted sampling and the pass criteria its validation report checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


# Radii of the pass criteria `min_fraction_within_50km` and `min_fraction_within_100km`.
NEAR_KM = 50.0
REGION_KM = 100.0


@dataclass
class RoadworkGPSWeightingConfig:
    r"""
    Settings of GPS-weighted sampling and of its validation. Every field is a command-line flag of its own name
    when the dataclass is parsed with `HfArgumentParser`; a failed validation names the fields to change.

    Args:
        num_clusters (`int`, *optional*, defaults to 5):
            Number of centres fitted on the target split's GPS points.
        bracket_edges_km (`list[float]`, *optional*, defaults to `[50.0, 200.0, 500.0]`):
            Upper edges (km, strictly increasing, finite) of the distance brackets. A row at distance
            `d` from its nearest centre falls in bracket `i` where `edges[i-1] <= d < edges[i]`, so a
            row at exactly 50 km is in the second bracket.
        bracket_weights (`list[float]`, *optional*, defaults to `[5.0, 2.5, 1.0, 0.3]`):
            Sampling weight of each bracket; one more entry than `bracket_edges_km` (the last one
            applies beyond the last edge). Must be positive.
        missing_weight (`float`, *optional*, defaults to 1.0):
            Weight of training rows without GPS. 0 means they are never drawn.
        seed (`int`, *optional*, defaults to 42):
            Seed of the KMeans fit and of the validation draw.
        num_validation_samples (`int`, *optional*, defaults to 32000):
            Rows drawn (with replacement) to validate the weighting (1000 batches of 32).
        min_fraction_within_50km (`float`, *optional*, defaults to 0.5):
            Pass criterion: share of sampled rows (with GPS) within 50 km of a centre.
        min_fraction_within_100km (`float`, *optional*, defaults to 0.7):
            Pass criterion: share of sampled rows (with GPS) within 100 km of a centre.
        max_mean_distance_km (`float`, *optional*, defaults to 150.0):
            Pass criterion: mean distance of sampled rows (with GPS) to their nearest centre.

    Example:

    ```python
    >>> config = RoadworkGPSWeightingConfig(bracket_weights=[10.0, 2.5, 1.0, 0.1])
    >>> config.brackets
    ((50.0, 10.0), (200.0, 2.5), (500.0, 1.0), (inf, 0.1))
    ```
    """

    num_clusters: int = field(
        default=5, metadata={"help": "Number of GPS centres fitted (KMeans) on the target split's GPS points."}
    )
    bracket_edges_km: list[float] = field(
        default_factory=lambda: [50.0, 200.0, 500.0],
        metadata={"help": "Upper edges (km) of the distance brackets, strictly increasing."},
    )
    bracket_weights: list[float] = field(
        default_factory=lambda: [5.0, 2.5, 1.0, 0.3],
        metadata={"help": "Weight per bracket; one more than the edges (the last applies beyond the last edge)."},
    )
    missing_weight: float = field(default=1.0, metadata={"help": "Weight of training rows without GPS."})
    seed: int = field(default=42, metadata={"help": "Seed of the KMeans fit and of the validation draw."})
    num_validation_samples: int = field(
        default=32000, metadata={"help": "Rows drawn with the weights to validate them."}
    )
    min_fraction_within_50km: float = field(
        default=0.5, metadata={"help": "Pass if at least this share of sampled rows is within 50 km."}
    )
    min_fraction_within_100km: float = field(
        default=0.7, metadata={"help": "Pass if at least this share of sampled rows is within 100 km."}
    )
    max_mean_distance_km: float = field(
        default=150.0, metadata={"help": "Pass if the mean distance of sampled rows is below this (km)."}
    )

    def __post_init__(self):
        # YAML/JSON give lists (or tuples) of ints; store plain float lists so asdict() round-trips.
        self.bracket_edges_km = [float(e) for e in self.bracket_edges_km]
        self.bracket_weights = [float(w) for w in self.bracket_weights]
        if isinstance(self.num_clusters, bool) or int(self.num_clusters) != self.num_clusters or self.num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {self.num_clusters!r}")
        self.num_clusters = int(self.num_clusters)
        check_edges_and_weights(self.bracket_edges_km, self.bracket_weights, "bracket_edges_km", "bracket_weights")
        if not (math.isfinite(self.missing_weight) and self.missing_weight >= 0):
            raise ValueError(f"missing_weight must be a finite number >= 0, got {self.missing_weight!r}")
        if isinstance(self.num_validation_samples, bool) or self.num_validation_samples < 1:
            raise ValueError(f"num_validation_samples must be >= 1, got {self.num_validation_samples!r}")
        for name in ("min_fraction_within_50km", "min_fraction_within_100km"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction and must be in [0, 1], got {value!r}")
        if not self.max_mean_distance_km > 0:
            raise ValueError(f"max_mean_distance_km must be > 0, got {self.max_mean_distance_km!r}")

    @property
    def brackets(self) -> tuple[tuple[float, float], ...]:
        """`((upper_edge_km, weight), ...)` as taken by `gps_weights`; the last edge is `inf`."""
        edges = [*self.bracket_edges_km, math.inf]
        return tuple(zip(edges, self.bracket_weights))


def check_edges_and_weights(edges, weights, edge_name: str, weight_name: str) -> None:
    """`edges` finite upper edges (km), `weights` one per bracket (len(edges) + 1)."""
    if any(not (math.isfinite(e) and e > 0) for e in edges):
        raise ValueError(
            f"{edge_name} must be finite and positive (the last weight already covers everything beyond the "
            f"last edge), got {list(edges)}"
        )
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{edge_name} must be strictly increasing, got {list(edges)}")
    if len(weights) != len(edges) + 1:
        raise ValueError(
            f"{weight_name} must have one more entry than {edge_name} (the last weight applies beyond the last "
            f"edge): got {len(weights)} weights for {len(edges)} edges"
        )
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise ValueError(f"{weight_name} must be finite and positive, got {list(weights)}")


__all__ = ["NEAR_KM", "REGION_KM", "RoadworkGPSWeightingConfig", "check_edges_and_weights"]
