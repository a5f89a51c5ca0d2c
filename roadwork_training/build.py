"""What every script builds before it trains or predicts: the splits of a dataset, the model, the GPS weights.

The argument dataclasses that `train.py`, `finetune_dora.py` and `predict.py` share live here too, so a flag means
the same thing in every script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from data_collator import build_vocabularies, ensure_synthetic_dataset, gps_array, labels_array, load_roadwork_splits
from data_collator.gps_weighting import RoadworkGPSWeightingConfig, prepare_gps_weighting
from data_collator.schema import ROADWORK_HUB_ID
from data_collator.synthetic import SyntheticDatasetConfig
from modeling_roadwork import DINOV3_VITH16PLUS_ID, RoadworkConfig, RoadworkForImageClassification

from .arguments import check_config_fields, json_arg


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=DINOV3_VITH16PLUS_ID,
        metadata={
            "help": "Hub id or local folder of the pretrained backbone (DINOv3, or a timm model such as "
            "timm/convnextv2_base.fcmae_ft_in22k_in1k). DINOv3 is gated: accept its licence on the Hub and log in. "
            "Ignored when --backbone_config or --model_name_or_path is given."
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
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the train split (debugging)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the validation and test splits (debugging)."}
    )
    use_text_embeddings: bool = field(
        default=True,
        metadata={"help": "Embed scene descriptions with the frozen text encoder (each distinct text once)."},
    )


def load_data(args: DataArguments, seed: int, synthetic: SyntheticDatasetConfig | None = None):
    """-> train, validation and test splits (`datasets.Dataset`) and the vocabularies of the train split."""
    source = args.dataset
    if source == "synthetic":
        source = str(ensure_synthetic_dataset(args.synthetic_dir, synthetic or SyntheticDatasetConfig()))
    splits = load_roadwork_splits(source, consistency_filter=args.consistency_filter)
    for name in (args.train_split, args.test_split):
        if name not in splits:
            raise SystemExit(f"{args.dataset} has no split {name!r}; it has {sorted(splits)}")
    train, test = splits[args.train_split], splits[args.test_split]
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if not 0 < args.validation_fraction < 1:
        raise SystemExit(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    from sklearn.model_selection import train_test_split

    labels = labels_array(train)
    indices = np.arange(len(train))
    stratify = labels if min(np.bincount(labels, minlength=2)) >= 2 else None
    train_idx, val_idx = train_test_split(
        indices, test_size=args.validation_fraction, random_state=seed, stratify=stratify
    )
    validation = train.select(sorted(val_idx.tolist()))
    train = train.select(sorted(train_idx.tolist()))
    if args.max_eval_samples:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
        test = test.select(range(min(args.max_eval_samples, len(test))))
    return train, validation, test, build_vocabularies(train)


def build_model(args: ModelArguments, vocabularies: dict) -> RoadworkForImageClassification:
    """A roadwork model: from a checkpoint, around a random backbone config, or around a pretrained backbone."""
    overrides = json_arg(args.model_overrides, "model_overrides")
    if args.model_name_or_path:
        return RoadworkForImageClassification.from_pretrained(args.model_name_or_path, **overrides)
    overrides = {**vocabularies, **overrides}
    if args.backbone_config:
        backbone_config = json_arg(args.backbone_config, "backbone_config")
        return RoadworkForImageClassification(RoadworkConfig(backbone_config=backbone_config, **overrides))
    return RoadworkForImageClassification.from_backbone(args.backbone, **overrides)


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


__all__ = ["DataArguments", "ModelArguments", "build_model", "gps_sample_weights", "load_data"]
