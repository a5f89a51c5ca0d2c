"""GPS-weighted sampling: draw training rows near the target split's locations more often.

The dataset's `test` split (the target) covers fewer places than `train`. We cluster the target
split's GPS points into a few centres, give every training row a weight from the distance bracket
of its nearest centre, and draw training rows with a `WeightedRandomSampler`. Before training, a
validation draw checks that the sampled rows are in fact near the centres.

Typical use in a training script (the row order of `train_gps` must be the dataset's row order):

```python
>>> config = RoadworkGPSWeightingConfig()
>>> weights, report = prepare_gps_weighting(train_gps, test_gps, config, output_dir="runs/gps")
>>> print(report.summary())
>>> if not report.passed:
...     raise SystemExit("GPS weighting failed validation; see the failures above")
>>> sampler = make_gps_sampler(weights, seed=config.seed)  # same sequence on every rank
```

GPS arrays are `(N, 2)` float arrays of (latitude, longitude) in degrees; a row with a NaN (or a
value outside [-90, 90] x [-180, 180]) counts as "no GPS".
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


logger = logging.getLogger(__name__)

# Mean earth radius (IUGG). The spherical model is within ~0.5% of the WGS84 geodesic.
EARTH_RADIUS_KM = 6371.0088

DEFAULT_BRACKETS: tuple[tuple[float, float], ...] = ((50.0, 5.0), (200.0, 2.5), (500.0, 1.0), (math.inf, 0.3))

# (name, latitude, longitude) of city centres, used only to name the GPS centres in reports.
# Covers the NATIX roadwork cities (e.g. Indianapolis, Pittsburgh, Boston, ...) and the largest US metros.
US_CITIES: tuple[tuple[str, float, float], ...] = (
    ("Albuquerque, NM", 35.0844, -106.6504),
    ("Atlanta, GA", 33.7490, -84.3880),
    ("Austin, TX", 30.2672, -97.7431),
    ("Baltimore, MD", 39.2904, -76.6122),
    ("Boston, MA", 42.3601, -71.0589),
    ("Charlotte, NC", 35.2271, -80.8431),
    ("Chicago, IL", 41.8781, -87.6298),
    ("Cincinnati, OH", 39.1031, -84.5120),
    ("Cleveland, OH", 41.4993, -81.6944),
    ("Columbus, OH", 39.9612, -82.9988),
    ("Dallas, TX", 32.7767, -96.7970),
    ("Denver, CO", 39.7392, -104.9903),
    ("Detroit, MI", 42.3314, -83.0458),
    ("Fort Worth, TX", 32.7555, -97.3308),
    ("Houston, TX", 29.7604, -95.3698),
    ("Indianapolis, IN", 39.7684, -86.1581),
    ("Jacksonville, FL", 30.3322, -81.6557),
    ("Kansas City, MO", 39.0997, -94.5786),
    ("Las Vegas, NV", 36.1699, -115.1398),
    ("Los Angeles, CA", 34.0522, -118.2437),
    ("Louisville, KY", 38.2527, -85.7585),
    ("Memphis, TN", 35.1495, -90.0490),
    ("Miami, FL", 25.7617, -80.1918),
    ("Milwaukee, WI", 43.0389, -87.9065),
    ("Minneapolis, MN", 44.9778, -93.2650),
    ("Nashville, TN", 36.1627, -86.7816),
    ("New Orleans, LA", 29.9511, -90.0715),
    ("New York, NY", 40.7128, -74.0060),
    ("Orlando, FL", 28.5383, -81.3792),
    ("Philadelphia, PA", 39.9526, -75.1652),
    ("Phoenix, AZ", 33.4484, -112.0740),
    ("Pittsburgh, PA", 40.4406, -79.9959),
    ("Portland, OR", 45.5152, -122.6784),
    ("Raleigh, NC", 35.7796, -78.6382),
    ("Sacramento, CA", 38.5816, -121.4944),
    ("Salt Lake City, UT", 40.7608, -111.8910),
    ("San Antonio, TX", 29.4241, -98.4936),
    ("San Diego, CA", 32.7157, -117.1611),
    ("San Francisco, CA", 37.7749, -122.4194),
    ("San Jose, CA", 37.3382, -121.8863),
    ("Seattle, WA", 47.6062, -122.3321),
    ("St. Louis, MO", 38.6270, -90.1994),
    ("Tampa, FL", 27.9506, -82.4572),
    ("Tucson, AZ", 32.2226, -110.9747),
    ("Washington, DC", 38.9072, -77.0369),
)

# Radii of the validation criteria (the plan's "within 50 km" and "within 100 km").
_NEAR_KM = 50.0
_REGION_KM = 100.0
# Factors tried when suggesting a weight change for a failed criterion.
_ADVICE_FACTORS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)

ArrayLike = Union[np.ndarray, Sequence]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class RoadworkGPSWeightingConfig:
    r"""
    Settings of GPS-weighted sampling and of its validation.

    Args:
        k (`int`, *optional*, defaults to 5):
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
            Rows drawn (with replacement) to validate the weighting (the plan's 1000 batches of 32).
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

    k: int = field(default=5, metadata={"help": "Number of GPS centres fitted on the target split."})
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
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        self.k = int(self.k)
        _check_edges_and_weights(self.bracket_edges_km, self.bracket_weights, "bracket_edges_km", "bracket_weights")
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


def _check_edges_and_weights(edges, weights, edge_name: str, weight_name: str) -> None:
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


def _check_brackets(brackets: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """`((upper_edge_km, weight), ..., (inf, weight))` -> (finite edges (B-1,), weights (B,))."""
    pairs = [tuple(p) for p in brackets]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"brackets must be a non-empty sequence of (upper_edge_km, weight) pairs, got {pairs}")
    edges = [float(e) for e, _ in pairs]
    weights = [float(w) for _, w in pairs]
    if edges[-1] != math.inf:
        raise ValueError(f"the last bracket's upper edge must be inf so that every distance has a weight, got {edges}")
    _check_edges_and_weights(edges[:-1], weights, "brackets (edges)", "brackets (weights)")
    return np.asarray(edges[:-1], dtype=np.float64), np.asarray(weights, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _as_latlon(points: ArrayLike, name: str) -> np.ndarray:
    """`(N, 2)` or `(2,)` array-like -> float64 `(N, 2)`. Rows that are `None` become NaN rows."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        # A list that mixes (lat, lon) pairs and None (or empty) rows.
        arr = np.asarray(
            [(np.nan, np.nan) if p is None or len(p) != 2 else p for p in points], dtype=np.float64
        ).reshape(-1, 2)
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None, :]
    if arr.ndim == 1 and arr.shape[0] == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) of (latitude, longitude) in degrees, got {arr.shape}")
    return arr


def valid_gps_mask(gps: ArrayLike) -> np.ndarray:
    """`(N, 2)` -> `(N,)` bool: both values finite and within [-90, 90] x [-180, 180]."""
    gps = _as_latlon(gps, "gps")
    with np.errstate(invalid="ignore"):
        return np.isfinite(gps).all(axis=1) & (np.abs(gps[:, 0]) <= 90.0) & (np.abs(gps[:, 1]) <= 180.0)


def _clean_gps(gps: ArrayLike, name: str) -> np.ndarray:
    """Copy of `gps` as `(N, 2)` with every invalid row set to NaN; warns about out-of-range rows."""
    gps = _as_latlon(gps, name).copy()
    valid = valid_gps_mask(gps)
    out_of_range = ~valid & np.isfinite(gps).all(axis=1)
    if out_of_range.any():
        warnings.warn(
            f"{name}: {int(out_of_range.sum())} row(s) lie outside [-90, 90] x [-180, 180] and are treated as "
            f"missing GPS (first: {gps[out_of_range][0].tolist()}); are the columns (latitude, longitude)?",
            UserWarning,
            stacklevel=3,
        )
    gps[~valid] = np.nan
    return gps


def haversine_km(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """
    Great-circle distances on a sphere of radius `EARTH_RADIUS_KM`.

    `a` (N, 2), `b` (K, 2) of (latitude, longitude) in degrees -> (N, K) km. A `(2,)` input counts as
    one point. NaN rows give NaN distances. Longitude wrap-around needs no special case: the formula
    only uses `sin(dlon / 2) ** 2`, which is the same for +359 and -1 degrees.
    """
    a = np.radians(_as_latlon(a, "a"))
    b = np.radians(_as_latlon(b, "b"))
    lat1, lon1 = a[:, 0:1], a[:, 1:2]  # (N, 1)
    lat2, lon2 = b[None, :, 0], b[None, :, 1]  # (1, K)
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    # clip: rounding can push h a hair above 1 for antipodal points, and arcsin would return NaN
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _to_unit_vectors(latlon: np.ndarray) -> np.ndarray:
    """(N, 2) degrees -> (N, 3) points on the unit sphere."""
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def _to_latlon(xyz: np.ndarray) -> np.ndarray:
    """(K, 3) vectors (any norm > 0) -> (K, 2) degrees; the projection of each vector onto the sphere."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    return np.degrees(np.stack([np.arctan2(z, np.hypot(x, y)), np.arctan2(y, x)], axis=1))


def nearest_city(points: ArrayLike) -> tuple[list[str], np.ndarray]:
    """`(K, 2)` -> (names of the nearest city in `US_CITIES`, `(K,)` km to it). NaN rows get `""`, NaN."""
    points = _as_latlon(points, "points")
    cities = np.asarray([(lat, lon) for _, lat, lon in US_CITIES])
    dist = haversine_km(points, cities)  # (K, C)
    names, km = [], np.full(len(points), np.nan)
    for i, row in enumerate(dist):
        if np.isnan(row).all():
            names.append("")
            continue
        j = int(np.nanargmin(row))
        names.append(US_CITIES[j][0])
        km[i] = row[j]
    return names, km


# ----------------------------------------------------------------------------------------------
# Centres, weights, sampler
# ----------------------------------------------------------------------------------------------


def fit_gps_centres(target_gps: ArrayLike, k: int = 5, seed: int = 42) -> np.ndarray:
    """
    Fits `k` geographic centres on the valid GPS rows of the target split with KMeans.

    `target_gps` (N, 2) degrees, NaN rows allowed -> centres (k', 2) degrees, largest cluster first,
    with `k' = min(k, number of distinct valid points)` (a warning says when k was lowered).

    Clustering runs on 3-D unit vectors, not on (lat, lon): Euclidean distance between unit vectors
    (the chord) is monotone in great-circle distance, so clusters do not split at the antimeridian
    and a degree of longitude is not weighted like a degree of latitude (at 45 N it is 30% shorter).
    Each KMeans centroid lies slightly inside the sphere and is projected back onto it; for
    city-sized clusters that is the spherical mean. Rows are assigned to centres by haversine later.
    """
    from sklearn.cluster import KMeans  # imported here: sklearn is slow to import and only needed here

    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    gps = _clean_gps(target_gps, "target_gps")
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
            f"target_gps has only {num_distinct} distinct valid point(s), fewer than k={k}; fitting "
            f"k={num_distinct} centres instead.",
            UserWarning,
            stacklevel=2,
        )
        k = num_distinct
    kmeans = KMeans(n_clusters=int(k), n_init=10, random_state=seed).fit(_to_unit_vectors(valid))
    centres = _to_latlon(kmeans.cluster_centers_)
    sizes = np.bincount(kmeans.labels_, minlength=k)
    # KMeans' cluster order depends on its initialisation; sort (largest first) so reports are stable.
    order = np.lexsort((centres[:, 1], centres[:, 0], -sizes))
    return centres[order]


def weights_for_distances(
    distances_km: ArrayLike,
    brackets: Sequence[tuple[float, float]] = DEFAULT_BRACKETS,
    missing_weight: float = 1.0,
) -> np.ndarray:
    """
    `(N,)` km -> `(N,)` weights. Bracket `i` covers `edges[i-1] <= d < edges[i]` (so exactly 50 km is
    in the 50-200 km bracket); NaN distances get `missing_weight`.
    """
    edges, bracket_weights = _check_brackets(brackets)
    if not (math.isfinite(missing_weight) and missing_weight >= 0):
        raise ValueError(f"missing_weight must be a finite number >= 0, got {missing_weight!r}")
    distances_km = np.asarray(distances_km, dtype=np.float64)
    weights = np.full(distances_km.shape, float(missing_weight))
    known = ~np.isnan(distances_km)
    weights[known] = bracket_weights[np.searchsorted(edges, distances_km[known], side="right")]
    return weights


def _nearest_centre(gps: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleaned gps (N, 2), centres (K, 2) -> (km to the nearest centre (N,), its index (N,), -1 if no GPS)."""
    nearest_km = np.full(len(gps), np.nan)
    index = np.full(len(gps), -1, dtype=np.int64)
    has = ~np.isnan(gps[:, 0])
    if has.any():
        dist = haversine_km(gps[has], centres)  # (N_has, K)
        index[has] = dist.argmin(axis=1)
        nearest_km[has] = dist.min(axis=1)
    return nearest_km, index


def _check_centres(centres: ArrayLike) -> np.ndarray:
    centres = _as_latlon(centres, "centres")
    if len(centres) == 0 or not valid_gps_mask(centres).all():
        raise ValueError(f"centres must be a non-empty (K, 2) array of valid (lat, lon) degrees, got {centres.tolist()}")
    return centres


def gps_weights(
    train_gps: ArrayLike,
    centres: ArrayLike,
    brackets: Sequence[tuple[float, float]] = DEFAULT_BRACKETS,
    missing_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Sampling weight of each training row from the distance to its nearest centre.

    `train_gps` (N, 2) degrees (NaN rows allowed), `centres` (K, 2) -> (weights (N,), nearest_km (N,)),
    `nearest_km` NaN for rows without GPS, which get `missing_weight`. `brackets` are
    `(upper_edge_km, weight)` pairs with increasing edges, the last `inf`
    (`RoadworkGPSWeightingConfig.brackets`). Weights are not normalised; the sampler does not need it.
    """
    gps = _clean_gps(train_gps, "train_gps")
    nearest_km, _ = _nearest_centre(gps, _check_centres(centres))
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


def make_gps_sampler(weights: ArrayLike, num_samples: Optional[int] = None, seed: int = 42) -> RoadworkWeightedSampler:
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


# ----------------------------------------------------------------------------------------------
# Validation report
# ----------------------------------------------------------------------------------------------


@dataclass
class RoadworkGPSCentre:
    """One fitted centre and what lies near it."""

    latitude: float
    longitude: float
    nearest_city: str
    nearest_city_km: float
    num_target_rows: Optional[int]  # target rows whose nearest centre this is (None: target not given)
    num_train_rows: int  # training rows (with GPS) whose nearest centre this is
    num_train_within_50km: int


@dataclass
class RoadworkGPSBracket:
    """One distance bracket: its weight, how many training rows it holds and its share of the draw."""

    label: str
    lower_km: float
    upper_km: float
    weight: float
    num_train_rows: int
    sampled_fraction: float  # share of all validation draws (draws of rows without GPS included)


@dataclass
class RoadworkGPSReport:
    """Result of `validate_gps_weighting`. Distances and fractions are over sampled rows with GPS;
    `uniform_*` are the same statistics over all training rows with GPS, unweighted."""

    passed: bool
    failures: list[str]
    num_train_rows: int
    num_train_missing_gps: int
    missing_weight: float
    num_samples: int
    num_sampled_missing_gps: int
    mean_distance_km: float
    median_distance_km: float
    fraction_within_50km: float
    fraction_within_100km: float
    uniform_mean_distance_km: float
    uniform_median_distance_km: float
    uniform_fraction_within_50km: float
    uniform_fraction_within_100km: float
    centres: list[RoadworkGPSCentre]
    brackets: list[RoadworkGPSBracket]
    config: RoadworkGPSWeightingConfig
    report_path: Optional[str] = None
    histogram_path: Optional[str] = None
    scatter_path: Optional[str] = None

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN and inf become None)."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {key: clean(v) for key, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))

    def summary(self) -> str:
        """Multi-line, human-readable account of the validation."""
        c = self.config
        pct = lambda x: "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"  # noqa: E731
        km = lambda x: "n/a" if not math.isfinite(x) else f"{x:.1f}"  # noqa: E731
        with_gps = self.num_train_rows - self.num_train_missing_gps
        sampled_missing = self.num_sampled_missing_gps / max(self.num_samples, 1)
        lines = [
            f"GPS weighting validation: {'PASSED' if self.passed else 'FAILED'}",
            f"  training rows: {self.num_train_rows} ({with_gps} with GPS, {self.num_train_missing_gps} without, "
            f"weight {self.missing_weight:g})",
            f"  drew {self.num_samples} rows with the weights (seed {c.seed}): "
            f"{self.num_samples - self.num_sampled_missing_gps} with GPS, "
            f"{self.num_sampled_missing_gps} without ({pct(sampled_missing)})",
            f"  {'':24}{'weighted':>10}{'uniform':>10}{'target':>10}",
            f"  {'mean distance (km)':24}{km(self.mean_distance_km):>10}{km(self.uniform_mean_distance_km):>10}"
            f"{'< ' + format(c.max_mean_distance_km, 'g'):>10}",
            f"  {'median distance (km)':24}{km(self.median_distance_km):>10}{km(self.uniform_median_distance_km):>10}",
            f"  {'within 50 km':24}{pct(self.fraction_within_50km):>10}{pct(self.uniform_fraction_within_50km):>10}"
            f"{'>= ' + pct(c.min_fraction_within_50km):>10}",
            f"  {'within 100 km':24}{pct(self.fraction_within_100km):>10}"
            f"{pct(self.uniform_fraction_within_100km):>10}{'>= ' + pct(c.min_fraction_within_100km):>10}",
            "  brackets:",
        ]
        for b in self.brackets:
            lines.append(
                f"    {b.label:>12}  weight {b.weight:<6g} {b.num_train_rows:>7} train rows  "
                f"{pct(b.sampled_fraction):>6} of draws"
            )
        lines.append("  centres (largest target cluster first):")
        for i, ctr in enumerate(self.centres):
            target = "" if ctr.num_target_rows is None else f"{ctr.num_target_rows} target rows, "
            lines.append(
                f"    {i}: ({ctr.latitude:.4f}, {ctr.longitude:.4f}) near {ctr.nearest_city} "
                f"({ctr.nearest_city_km:.0f} km); {target}{ctr.num_train_rows} train rows, "
                f"{ctr.num_train_within_50km} within 50 km"
            )
        if self.failures:
            lines.append("  failures:")
            lines.extend(f"    - {f}" for f in self.failures)
        written = [p for p in (self.report_path, self.histogram_path, self.scatter_path) if p]
        if written:
            lines.append("  written: " + ", ".join(written))
        return "\n".join(lines)


def _bracket_label(lower: float, upper: float) -> str:
    if lower == 0:
        return f"< {upper:g} km"
    if math.isinf(upper):
        return f">= {lower:g} km"
    return f"{lower:g}-{upper:g} km"


def _expected(weights: np.ndarray, nearest_km: np.ndarray, has: np.ndarray) -> dict:
    """Expected statistics of a weighted draw over the rows with GPS (no sampling noise)."""
    w, d = weights[has], nearest_km[has]
    total = w.sum()
    if total <= 0:
        return {"mean": math.nan, "within_50": math.nan, "within_100": math.nan}
    return {
        "mean": float((w * d).sum() / total),
        "within_50": float(w[d < _NEAR_KM].sum() / total),
        "within_100": float(w[d < _REGION_KM].sum() / total),
    }


def _advice(key: str, radius_km: float, nearest_km: np.ndarray, has: np.ndarray, config) -> str:
    """What to change in the config so that criterion `key` passes, checked on expected statistics."""
    edges, weights = list(config.bracket_edges_km), list(config.bracket_weights)
    target = {
        "within_50": config.min_fraction_within_50km,
        "within_100": config.min_fraction_within_100km,
        "mean": config.max_mean_distance_km,
    }[key]
    # margin, so that the suggestion still passes after the noise of a finite validation draw
    meets = (lambda v: v < 0.97 * target) if key == "mean" else (lambda v: v >= min(target + 0.01, 1.0))
    near = [i for i, e in enumerate(edges) if e <= radius_km] or [0]
    far = len(weights) - 1
    fmt = lambda xs: ", ".join(f"bracket_weights[{i}]" for i in xs)  # noqa: E731

    def try_scaling(indices, up: bool):
        for factor in _ADVICE_FACTORS:
            trial = list(weights)
            for i in indices:
                trial[i] = weights[i] * factor if up else weights[i] / factor
            brackets = tuple(zip([*edges, math.inf], trial))
            value = _expected(weights_for_distances(nearest_km, brackets, config.missing_weight), nearest_km, has)[key]
            if meets(value):
                return trial, value
        return None, None

    show = (lambda v: f"{v:.0f} km") if key == "mean" else (lambda v: f"{100 * v:.1f}%")  # noqa: E731
    options = []
    raised, value = try_scaling(near, up=True)
    if raised is not None:
        changes = ", ".join(f"{weights[i]:g} to {raised[i]:.3g}" for i in near)
        options.append(f"raise the {_bracket_label(0, edges[near[-1]])} weight ({fmt(near)}) from {changes} (expected {show(value)})")
    if far not in near:
        lowered, value = try_scaling([far], up=False)
        if lowered is not None:
            options.append(
                f"lower the {_bracket_label(edges[-1], math.inf)} weight ({fmt([far])}) from {weights[far]:g} to "
                f"{lowered[far]:.3g} (expected {show(value)})"
            )
    if options:
        text = "; or ".join(options)
        return text[0].upper() + text[1:] + ", then validate again."
    num_near = int((nearest_km[has] < radius_km).sum())
    return (
        f"No weight change up to x{_ADVICE_FACTORS[-1]:g} reaches it on expectation: only {num_near} training rows "
        f"lie within {radius_km:g} km of a centre. Check that the centres come from the target split and that "
        f"GPS columns are (latitude, longitude); otherwise add training data near the centres or relax the criterion."
    )


def validate_gps_weighting(
    train_gps: ArrayLike,
    weights: ArrayLike,
    centres: ArrayLike,
    config: Optional[RoadworkGPSWeightingConfig] = None,
    output_dir: Optional[Union[str, Path]] = None,
    *,
    target_gps: Optional[ArrayLike] = None,
) -> RoadworkGPSReport:
    """
    Draws `config.num_validation_samples` training rows with `weights` (seeded, through the same
    `make_gps_sampler` that training uses) and checks the plan's criteria on the drawn rows with GPS:
    share within 50 km, share within 100 km, and mean distance to the nearest centre.

    `train_gps` (N, 2), `weights` (N,), `centres` (K, 2). `target_gps` (M, 2), optional, adds the
    target cluster sizes and the target points in the scatter plot. With `output_dir`, writes
    `gps_report.json`, `gps_distance_histogram.png` and `gps_scatter.png` there.
    """
    config = config or RoadworkGPSWeightingConfig()
    gps = _clean_gps(train_gps, "train_gps")
    centres = _check_centres(centres)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(gps),):
        raise ValueError(f"weights must have shape ({len(gps)},) like train_gps, got {weights.shape}")
    nearest_km, nearest_index = _nearest_centre(gps, centres)
    has = ~np.isnan(nearest_km)

    sampler = make_gps_sampler(weights, num_samples=config.num_validation_samples, seed=config.seed)
    drawn = np.fromiter(iter(sampler), dtype=np.int64, count=config.num_validation_samples)
    drawn_km = nearest_km[drawn][has[drawn]]
    uniform_km = nearest_km[has]

    def stats(d: np.ndarray) -> tuple[float, float, float, float]:
        if len(d) == 0:
            return (math.nan,) * 4
        return float(d.mean()), float(np.median(d)), float((d < _NEAR_KM).mean()), float((d < _REGION_KM).mean())

    mean_km, median_km, within_50, within_100 = stats(drawn_km)
    u_mean, u_median, u_50, u_100 = stats(uniform_km)

    failures = []
    if len(drawn_km) == 0:
        failures.append(
            "no drawn row has GPS (every training row lacks it, or missing_weight dominates): "
            "GPS weighting cannot work on this data; switch it off or fix the GPS parsing."
        )
    else:
        checks = (
            ("within_50", _NEAR_KM, within_50 >= config.min_fraction_within_50km,
             f"within 50 km: {100 * within_50:.1f}% of drawn rows, target >= "
             f"{100 * config.min_fraction_within_50km:g}% (min_fraction_within_50km)"),
            ("within_100", _REGION_KM, within_100 >= config.min_fraction_within_100km,
             f"within 100 km: {100 * within_100:.1f}% of drawn rows, target >= "
             f"{100 * config.min_fraction_within_100km:g}% (min_fraction_within_100km)"),
            ("mean", _NEAR_KM, mean_km < config.max_mean_distance_km,
             f"mean distance: {mean_km:.1f} km, target < {config.max_mean_distance_km:g} km (max_mean_distance_km)"),
        )
        for key, radius, ok, message in checks:
            if not ok:
                failures.append(f"{message}. {_advice(key, radius, nearest_km, has, config)}")

    city_names, city_km = nearest_city(centres)
    target_sizes: list[Optional[int]] = [None] * len(centres)
    target_clean = None
    if target_gps is not None:
        target_clean = _clean_gps(target_gps, "target_gps")
        _, target_index = _nearest_centre(target_clean, centres)
        target_sizes = np.bincount(target_index[target_index >= 0], minlength=len(centres)).tolist()
    train_sizes = np.bincount(nearest_index[has], minlength=len(centres))
    train_near = np.bincount(nearest_index[has & (nearest_km < _NEAR_KM)], minlength=len(centres))
    centre_infos = [
        RoadworkGPSCentre(
            latitude=float(centres[i, 0]),
            longitude=float(centres[i, 1]),
            nearest_city=city_names[i],
            nearest_city_km=float(city_km[i]),
            num_target_rows=target_sizes[i],
            num_train_rows=int(train_sizes[i]),
            num_train_within_50km=int(train_near[i]),
        )
        for i in range(len(centres))
    ]

    lowers = [0.0, *config.bracket_edges_km]
    uppers = [*config.bracket_edges_km, math.inf]
    bracket_of = np.searchsorted(np.asarray(config.bracket_edges_km), nearest_km[has], side="right")
    bracket_of_drawn = np.searchsorted(np.asarray(config.bracket_edges_km), drawn_km, side="right")
    bracket_infos = [
        RoadworkGPSBracket(
            label=_bracket_label(lo, up),
            lower_km=lo,
            upper_km=up,
            weight=w,
            num_train_rows=int((bracket_of == i).sum()),
            sampled_fraction=float((bracket_of_drawn == i).sum() / len(drawn)),
        )
        for i, (lo, up, w) in enumerate(zip(lowers, uppers, config.bracket_weights))
    ]

    report = RoadworkGPSReport(
        passed=not failures,
        failures=failures,
        num_train_rows=len(gps),
        num_train_missing_gps=int((~has).sum()),
        missing_weight=config.missing_weight,
        num_samples=len(drawn),
        num_sampled_missing_gps=int((~has[drawn]).sum()),
        mean_distance_km=mean_km,
        median_distance_km=median_km,
        fraction_within_50km=within_50,
        fraction_within_100km=within_100,
        uniform_mean_distance_km=u_mean,
        uniform_median_distance_km=u_median,
        uniform_fraction_within_50km=u_50,
        uniform_fraction_within_100km=u_100,
        centres=centre_infos,
        brackets=bracket_infos,
        config=config,
    )
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.histogram_path = str(out / "gps_distance_histogram.png")
        report.scatter_path = str(out / "gps_scatter.png")
        report.report_path = str(out / "gps_report.json")
        _plot_histogram(report.histogram_path, drawn_km, uniform_km, config)
        _plot_scatter(report.scatter_path, gps, weights, target_clean, centres, city_names)
        Path(report.report_path).write_text(json.dumps(report.to_dict(), indent=2))
    if report.passed:
        logger.info("GPS weighting validation passed")
    else:
        logger.info("GPS weighting validation failed:\n%s", "\n".join(failures))
    return report


def _plot_histogram(path: str, drawn_km: np.ndarray, uniform_km: np.ndarray, config) -> None:
    # Figure without pyplot: no global backend switch, nothing left open in the caller's process.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    # Beyond twice the last edge all rows share one weight; fold them into the last bin.
    x_max = max(2.0 * config.bracket_edges_km[-1], 300.0)
    bins = np.linspace(0.0, x_max, 61)
    for values, label, style in (
        (uniform_km, f"training rows, unweighted (n={len(uniform_km)})", {"color": "tab:gray"}),
        (drawn_km, f"weighted draw (n={len(drawn_km)})", {"color": "tab:blue"}),
    ):
        if len(values):
            ax.hist(np.minimum(values, x_max), bins=bins, density=True, histtype="step", linewidth=1.8,
                    label=label, **style)
    bounds = [0.0, *config.bracket_edges_km, x_max]
    for i, weight in enumerate(config.bracket_weights):
        if i < len(config.bracket_edges_km):
            ax.axvline(bounds[i + 1], color="tab:red", linestyle="--", linewidth=1)
        ax.text((bounds[i] + bounds[i + 1]) / 2, 0.98, f"w={weight:g}", transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, color="tab:red")
    ax.set_xlabel(f"distance to nearest centre (km; >= {x_max:g} folded into the last bin)")
    ax.set_ylabel("density")
    ax.set_title("GPS weighting: distance to the nearest target centre")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_scatter(path, gps, weights, target_gps, centres, city_names) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100)
    ax = fig.subplots()
    has = ~np.isnan(gps[:, 0])
    if has.any():
        w = weights[has]
        positive = w[w > 0]
        # weights span brackets multiplicatively (0.3 .. 5), so a log colour scale separates them
        norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.01)) if len(positive) else None
        points = ax.scatter(gps[has, 1], gps[has, 0], c=np.maximum(w, 1e-6), s=6, cmap="viridis", norm=norm,
                            alpha=0.7, label=f"training rows (n={int(has.sum())})")
        colorbar = fig.colorbar(points, ax=ax, label="sampling weight")
        ticks = np.unique(positive)
        if len(ticks) <= 12:  # a handful of bracket weights: label exactly those
            colorbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
            colorbar.ax.minorticks_off()
    if target_gps is not None:
        t = target_gps[~np.isnan(target_gps[:, 0])]
        ax.scatter(t[:, 1], t[:, 0], s=10, marker="x", color="tab:red", alpha=0.6,
                   label=f"target rows (n={len(t)})")
    # hollow stars, so the rows under a centre (the heaviest ones) stay visible
    ax.scatter(centres[:, 1], centres[:, 0], s=300, marker="*", facecolors="none", edgecolors="black",
               linewidths=1.5, zorder=5, label="centres")
    for (lat, lon), name in zip(centres, city_names):
        ax.annotate(name, (lon, lat), xytext=(6, 6), textcoords="offset points", fontsize=8, zorder=6)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    missing = int((~has).sum())
    ax.set_title(f"GPS weighting ({missing} training rows without GPS not shown)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def prepare_gps_weighting(
    train_gps: ArrayLike,
    target_gps: ArrayLike,
    config: Optional[RoadworkGPSWeightingConfig] = None,
    output_dir: Optional[Union[str, Path]] = None,
) -> tuple[np.ndarray, RoadworkGPSReport]:
    """
    The whole pipeline: fit centres on `target_gps`, weight `train_gps`, validate.

    `train_gps` (N, 2), `target_gps` (M, 2) -> (weights (N,), report). The caller decides what a failed
    report means (the plan: do not train); the centres are in `report.centres`.
    """
    config = config or RoadworkGPSWeightingConfig()
    # clean once, so that out-of-range warnings are not repeated by every step
    train_gps, target_gps = _clean_gps(train_gps, "train_gps"), _clean_gps(target_gps, "target_gps")
    centres = fit_gps_centres(target_gps, k=config.k, seed=config.seed)
    weights, _ = gps_weights(train_gps, centres, config.brackets, config.missing_weight)
    report = validate_gps_weighting(train_gps, weights, centres, config, output_dir, target_gps=target_gps)
    return weights, report


__all__ = [
    "RoadworkWeightedSampler",
    "DEFAULT_BRACKETS",
    "EARTH_RADIUS_KM",
    "US_CITIES",
    "RoadworkGPSBracket",
    "RoadworkGPSCentre",
    "RoadworkGPSReport",
    "RoadworkGPSWeightingConfig",
    "fit_gps_centres",
    "gps_weights",
    "haversine_km",
    "make_gps_sampler",
    "nearest_city",
    "prepare_gps_weighting",
    "valid_gps_mask",
    "validate_gps_weighting",
    "weights_for_distances",
]
