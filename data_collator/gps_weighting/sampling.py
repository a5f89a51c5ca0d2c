"""From GPS to sampling weights: centres fitted on the target split, a weight per training row from the distance
bracket of its nearest centre, and the seeded weighted sampler that draws training rows."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from ..collator import encode_draw
from .config import RoadworkGPSWeightingConfig, check_edges_and_weights
from .geometry import ArrayLike, as_latlon, clean_gps, haversine_km, to_latlon, to_unit_vectors, valid_gps_mask


def check_brackets(brackets: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """`((upper_edge_km, weight), ..., (inf, weight))` -> (finite edges (B-1,), weights (B,))."""
    pairs = [tuple(p) for p in brackets]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"brackets must be a non-empty sequence of (upper_edge_km, weight) pairs, got {pairs}")
    edges = [float(e) for e, _ in pairs]
    weights = [float(w) for _, w in pairs]
    if edges[-1] != math.inf:
        raise ValueError(f"the last bracket's upper edge must be inf so that every distance has a weight, got {edges}")
    check_edges_and_weights(edges[:-1], weights, "brackets (edges)", "brackets (weights)")
    return np.asarray(edges[:-1], dtype=np.float64), np.asarray(weights, dtype=np.float64)


def _with_defaults(
    brackets: Sequence[tuple[float, float]] | None, missing_weight: float | None
) -> tuple[Sequence[tuple[float, float]], float]:
    """Fills in the brackets and missing weight of the default config (defined once, there)."""
    if brackets is None or missing_weight is None:
        defaults = RoadworkGPSWeightingConfig()
        brackets = defaults.brackets if brackets is None else brackets
        missing_weight = defaults.missing_weight if missing_weight is None else missing_weight
    return brackets, missing_weight


def fit_gps_centres(target_gps: ArrayLike, num_clusters: int | None = None, seed: int | None = None) -> np.ndarray:
    """
    Fits `num_clusters` geographic centres on the valid GPS rows of the target split with KMeans.

    `target_gps` (N, 2) degrees, NaN rows allowed -> centres (k, 2) degrees, largest cluster first, with
    `k = min(num_clusters, number of distinct valid points)` (a warning says when it was lowered).
    `num_clusters` and `seed` default to those of [`RoadworkGPSWeightingConfig`].

    Clustering runs on 3-D unit vectors, not on (lat, lon): Euclidean distance between unit vectors
    (the chord) is monotone in great-circle distance, so clusters do not split at the antimeridian
    and a degree of longitude is not weighted like a degree of latitude (at 45 N it is 30% shorter).
    Each KMeans centroid lies slightly inside the sphere and is projected back onto it; for
    city-sized clusters that is the spherical mean. Rows are assigned to centres by haversine later.
    """
    from sklearn.cluster import KMeans  # imported here: sklearn is slow to import and only needed here

    defaults = RoadworkGPSWeightingConfig()
    k = defaults.num_clusters if num_clusters is None else num_clusters
    seed = defaults.seed if seed is None else seed
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"num_clusters must be a positive integer, got {k!r}")
    gps = clean_gps(target_gps, "target_gps")
    valid = gps[~np.isnan(gps[:, 0])]
    if len(valid) == 0:
        raise ValueError(
            f"target_gps has no valid (latitude, longitude) row among {len(gps)} rows (all missing or out of "
            f"range), so no GPS centres can be fitted. Check that the target split's `gps` column was parsed "
            f"into floats, or switch GPS weighting off."
        )
    num_distinct = len(np.unique(valid, axis=0))
    if num_distinct < k:
        warnings.warn(
            f"target_gps has only {num_distinct} distinct valid point(s), fewer than num_clusters={k}; "
            f"fitting {num_distinct} centres instead.",
            UserWarning,
            stacklevel=2,
        )
        k = num_distinct
    kmeans = KMeans(n_clusters=int(k), n_init=10, random_state=seed).fit(to_unit_vectors(valid))
    centres = to_latlon(kmeans.cluster_centers_)
    sizes = np.bincount(kmeans.labels_, minlength=k)
    # KMeans' cluster order depends on its initialisation; sort (largest first) so reports are stable.
    order = np.lexsort((centres[:, 1], centres[:, 0], -sizes))
    return centres[order]


def weights_for_distances(
    distances_km: ArrayLike,
    brackets: Sequence[tuple[float, float]] | None = None,
    missing_weight: float | None = None,
) -> np.ndarray:
    """
    `(N,)` km -> `(N,)` weights. Bracket `i` covers `edges[i-1] <= d < edges[i]` (so exactly 50 km is
    in the 50-200 km bracket); NaN distances get `missing_weight`. `brackets` and `missing_weight` default to
    those of [`RoadworkGPSWeightingConfig`].
    """
    brackets, missing_weight = _with_defaults(brackets, missing_weight)
    edges, bracket_weights = check_brackets(brackets)
    if not (math.isfinite(missing_weight) and missing_weight >= 0):
        raise ValueError(f"missing_weight must be a finite number >= 0, got {missing_weight!r}")
    distances_km = np.asarray(distances_km, dtype=np.float64)
    weights = np.full(distances_km.shape, float(missing_weight))
    known = ~np.isnan(distances_km)
    weights[known] = bracket_weights[np.searchsorted(edges, distances_km[known], side="right")]
    return weights


def nearest_centre(gps: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleaned gps (N, 2), centres (K, 2) -> (km to the nearest centre (N,), its index (N,), -1 if no GPS)."""
    nearest_km = np.full(len(gps), np.nan)
    index = np.full(len(gps), -1, dtype=np.int64)
    has = ~np.isnan(gps[:, 0])
    if has.any():
        dist = haversine_km(gps[has], centres)  # (N_has, K)
        index[has] = dist.argmin(axis=1)
        nearest_km[has] = dist.min(axis=1)
    return nearest_km, index


def check_centres(centres: ArrayLike) -> np.ndarray:
    centres = as_latlon(centres, "centres")
    if len(centres) == 0 or not valid_gps_mask(centres).all():
        raise ValueError(
            f"centres must be a non-empty (K, 2) array of valid (lat, lon) degrees, got {centres.tolist()}"
        )
    return centres


def gps_weights(
    train_gps: ArrayLike,
    centres: ArrayLike,
    brackets: Sequence[tuple[float, float]] | None = None,
    missing_weight: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Sampling weight of each training row from the distance to its nearest centre.

    `train_gps` (N, 2) degrees (NaN rows allowed), `centres` (K, 2) -> (weights (N,), nearest_km (N,)),
    `nearest_km` NaN for rows without GPS, which get `missing_weight`. `brackets` are
    `(upper_edge_km, weight)` pairs with increasing edges, the last `inf`
    (`RoadworkGPSWeightingConfig.brackets`). Weights are not normalised; the sampler does not need it.
    """
    gps = clean_gps(train_gps, "train_gps")
    nearest_km, _ = nearest_centre(gps, check_centres(centres))
    return weights_for_distances(nearest_km, brackets, missing_weight), nearest_km


class RoadworkWeightedSampler(WeightedRandomSampler):
    """
    A `WeightedRandomSampler` whose draw depends only on `(seed, epoch)`: every process of a distributed run draws
    the same index sequence (and takes its own batches of it), epochs differ, and a run resumed from a checkpoint
    replays exactly the sequence of the interrupted epoch (Trainer calls `set_epoch` before every epoch and then
    skips the batches already trained).
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int):
        super().__init__(weights, num_samples=num_samples, replacement=True, generator=torch.Generator())
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed + self.epoch)

    def __iter__(self):
        """
        Rows drawn with replacement, a repeat of a row in the epoch encoded as `row + k * N` (its `k`-th repeat;
        [`~data_collator.collator.encode_draw`]), so that [`RoadworkDataset`] gives every draw its own augmentation
        instead of identical pixels (a third of draws repeat a row with uniform weights, more with GPS weights).
        """
        num_rows = len(self.weights)
        seen: dict[int, int] = {}
        for row in super().__iter__():
            draw = seen.get(row, 0)
            seen[row] = draw + 1
            yield encode_draw(row, draw, num_rows)


def make_gps_sampler(weights: ArrayLike, num_samples: int | None = None, seed: int = 42) -> RoadworkWeightedSampler:
    """
    `(N,)` weights -> [`RoadworkWeightedSampler`] drawing `num_samples` (default N) indices with replacement, seeded
    by `seed + epoch`.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0:
        raise ValueError(f"weights must be a non-empty 1-D array, got shape {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be finite, >= 0 and not all 0")
    num_samples = len(weights) if num_samples is None else int(num_samples)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return RoadworkWeightedSampler(torch.from_numpy(weights), num_samples=num_samples, seed=seed)


__all__ = [
    "RoadworkWeightedSampler",
    "check_brackets",
    "check_centres",
    "fit_gps_centres",
    "gps_weights",
    "make_gps_sampler",
    "nearest_centre",
    "weights_for_distances",
]
