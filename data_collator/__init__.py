"""roadwork data side: reading the schema, metadata parsing, per-view augmentation, the dataset and collator,
GPS-weighted sampling (`data_collator.gps_weighting`) and synthetic data (`data_collator.synthetic`)."""

from .augmentation import (
    AUGMENTATION_PRESETS,
    RoadworkAugmentationConfig,
    RoadworkValidatorTransform,
    RoadworkViewAugmenter,
    build_augmentation,
)
from .collator import FORWARD_KEYS, RoadworkDataCollator, RoadworkDataset
from .gps_weighting import RoadworkGPSWeightingConfig, make_gps_sampler, prepare_gps_weighting
from .schema import (
    ROADWORK_HUB_ID,
    RoadworkConsistencyReport,
    build_vocabularies,
    decode_seg_masks,
    encode_seg_masks,
    filter_consistent_rows,
    gps_array,
    labels_array,
    load_roadwork_splits,
)
from .synthetic import SyntheticDatasetConfig, ensure_synthetic_dataset, generate_synthetic_dataset
from .view_coverage import VIEW_COVERAGE_COLUMN, view_coverage


__all__ = [
    "AUGMENTATION_PRESETS",
    "FORWARD_KEYS",
    "ROADWORK_HUB_ID",
    "RoadworkAugmentationConfig",
    "RoadworkConsistencyReport",
    "RoadworkDataCollator",
    "RoadworkDataset",
    "RoadworkGPSWeightingConfig",
    "RoadworkValidatorTransform",
    "RoadworkViewAugmenter",
    "SyntheticDatasetConfig",
    "VIEW_COVERAGE_COLUMN",
    "build_augmentation",
    "build_vocabularies",
    "decode_seg_masks",
    "encode_seg_masks",
    "ensure_synthetic_dataset",
    "filter_consistent_rows",
    "generate_synthetic_dataset",
    "gps_array",
    "make_gps_sampler",
    "prepare_gps_weighting",
    "labels_array",
    "load_roadwork_splits",
    "view_coverage",
]
