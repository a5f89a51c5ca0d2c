"""Synthetic roadwork scenes in the schema of `natix-network-org/roadwork` (the embedded default dataset).

Modules: `scene` (the renderer: one procedural street photo with its soft segmentation masks) and `dataset`
(rows of the real schema, Parquet shards in the Hub layout, generation on first use, and the command line
``python -m data_collator.synthetic``).
"""

from .dataset import (
    CITIES,
    MANIFEST_NAME,
    SyntheticDatasetConfig,
    default_synthetic_dir,
    ensure_synthetic_dataset,
    generate_row,
    generate_synthetic_dataset,
    main,
    synthetic_features,
)
from .scene import describe_scene, render_scene


__all__ = [
    "CITIES",
    "MANIFEST_NAME",
    "SyntheticDatasetConfig",
    "default_synthetic_dir",
    "describe_scene",
    "ensure_synthetic_dataset",
    "generate_row",
    "generate_synthetic_dataset",
    "main",
    "render_scene",
    "synthetic_features",
]
