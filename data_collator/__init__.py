"""roadwork data side: reading the schema, metadata, per-view augmentation, collation, synthetic data."""

from .augmentation import (
    AUGMENTATION_PRESETS,
    RoadworkAugmentationConfig,
    RoadworkValidatorTransform,
    RoadworkViewAugmenter,
    build_augmentation,
)
from .collator import FORWARD_KEYS, RoadworkDataCollator, RoadworkDataset, extract_view_images, normalize_views
from .schema import (
    ROADWORK_HUB_ID,
    RoadworkConsistencyReport,
    build_vocabularies,
    decode_image,
    decode_seg_masks,
    encode_seg_masks,
    filter_consistent_rows,
    gps_array,
    labels_array,
    load_roadwork_splits,
)


_SYNTHETIC_NAMES = ("SyntheticDatasetConfig", "ensure_synthetic_dataset", "generate_synthetic_dataset")


def __getattr__(name):
    # Imported lazily so that `python -m data_collator.synthetic` does not import its own module twice.
    if name in _SYNTHETIC_NAMES:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUGMENTATION_PRESETS",
    "FORWARD_KEYS",
    "ROADWORK_HUB_ID",
    "RoadworkAugmentationConfig",
    "RoadworkConsistencyReport",
    "RoadworkDataCollator",
    "RoadworkDataset",
    "RoadworkValidatorTransform",
    "RoadworkViewAugmenter",
    "SyntheticDatasetConfig",
    "build_augmentation",
    "build_vocabularies",
    "decode_image",
    "decode_seg_masks",
    "encode_seg_masks",
    "ensure_synthetic_dataset",
    "extract_view_images",
    "filter_consistent_rows",
    "generate_synthetic_dataset",
    "gps_array",
    "labels_array",
    "load_roadwork_splits",
    "normalize_views",
]
