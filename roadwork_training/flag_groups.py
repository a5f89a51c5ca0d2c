"""The library dataclasses every script exposes as flag groups, defined once (`prefixed_arguments`).

Defaults and help texts stay in `data_collator`; each script parses the groups it needs with
`RoadworkArgumentParser` and builds the library objects back with `to_config`.
"""

from __future__ import annotations

from data_collator import RoadworkAugmentationConfig
from data_collator.gps_weighting import RoadworkGPSWeightingConfig
from data_collator.synthetic import SyntheticDatasetConfig

from .arguments import prefixed_arguments


# `--synthetic_*`: the procedural dataset (its `version` is the generator's, not a user's choice).
SyntheticArguments = prefixed_arguments(SyntheticDatasetConfig, "synthetic_", exclude=("version",))
# `--augmentation_strength`, `--augmentation_scale`: the per-view augmentation's two user-facing knobs.
AugmentationArguments = prefixed_arguments(RoadworkAugmentationConfig, "augmentation_", include=("strength", "scale"))
# `--gps_*`: GPS-weighted sampling (seeded by the run's `--seed`).
GPSConfigArguments = prefixed_arguments(RoadworkGPSWeightingConfig, "gps_", exclude=("seed",))


__all__ = ["AugmentationArguments", "GPSConfigArguments", "SyntheticArguments"]
