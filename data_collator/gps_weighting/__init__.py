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

Modules: `config` (the settings and the pass criteria), `geometry` (distances, the city table that names
centres), `sampling` (centres, weights, the seeded sampler), `report` (validation and the advice when a
criterion fails), `plots` (the report's two figures).
"""

from .config import RoadworkGPSWeightingConfig
from .geometry import EARTH_RADIUS_KM, US_CITIES, haversine_km, nearest_city, valid_gps_mask
from .report import (
    RoadworkGPSBracket,
    RoadworkGPSCentre,
    RoadworkGPSReport,
    prepare_gps_weighting,
    validate_gps_weighting,
)
from .sampling import RoadworkWeightedSampler, fit_gps_centres, gps_weights, make_gps_sampler, weights_for_distances


__all__ = [
    "EARTH_RADIUS_KM",
    "US_CITIES",
    "RoadworkGPSBracket",
    "RoadworkGPSCentre",
    "RoadworkGPSReport",
    "RoadworkGPSWeightingConfig",
    "RoadworkWeightedSampler",
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
