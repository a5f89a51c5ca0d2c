#!/usr/bin/env python
"""
Train the roadwork classifier with the Hugging Face Trainer.

    accelerate launch train.py --config configs/quickstart.yaml            # synthetic data, tiny backbone, CPU
    accelerate launch train.py --config configs/base.yaml                  # DINOv3 ViT-H+/16 on natix-network-org/roadwork
    accelerate launch --multi_gpu --num_processes 2 train.py --config configs/base.yaml --learning_rate 2e-4

Flags given on the command line override the YAML file. `python train.py --help` lists every flag.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainingArguments, set_seed

from data_collator import (
    RoadworkAugmentationConfig,
    RoadworkDataCollator,
    RoadworkDataset,
    RoadworkViewAugmenter,
    build_vocabularies,
    ensure_synthetic_dataset,
    gps_array,
    labels_array,
    load_roadwork_splits,
)
from data_collator.gps_weighting import RoadworkGPSWeightingConfig, prepare_gps_weighting
from data_collator.schema import get_column
from data_collator.training import RoadworkTrainer, compute_metrics
from modeling_roadwork import (
    DINOV3_VITH16PLUS_ID,
    RoadworkConfig,
    RoadworkForImageClassification,
    RoadworkImageProcessor,
    RoadworkTextEmbedder,
)
from data_collator.metadata import clean_description


logger = logging.getLogger("roadwork.train")


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
            "--backbone, e.g. a tiny DINOv3 for smoke tests: {\"model_type\": \"dinov3_vit\", \"hidden_size\": 64, ...}. "
            "On the command line it is merged into the --config file's mapping."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a saved roadwork checkpoint (folder or Hub id) instead."}
    )
    model_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON (or a YAML mapping) of RoadworkConfig fields, e.g. {\"num_attention_layers\": 6, "
            "\"use_view_pruning\": false}. Every architecture and loss setting is a config field. On the command "
            "line it is merged into the --config file's mapping; unknown field names are rejected."
        },
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="natix-network-org/roadwork",
        metadata={
            "help": "Hub id, a local folder of Parquet shards (data/train-*.parquet, data/test-*.parquet), or "
            "'synthetic' for the bundled procedural dataset (generated on first use, works offline)."
        },
    )
    synthetic_dir: str | None = field(
        default=None, metadata={"help": "Where 'synthetic' is generated (default ~/.cache/roadwork/synthetic)."}
    )
    synthetic_num_train: int = field(default=240, metadata={"help": "Rows of the synthetic train split."})
    synthetic_num_test: int = field(default=60, metadata={"help": "Rows of the synthetic test split."})
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
    augmentation: str = field(
        default="heavy", metadata={"help": "Per-view augmentation of training views: heavy, light or none."}
    )
    augmentation_scale: float = field(
        default=1.0,
        metadata={
            "help": "Factor on every augmentation probability (capped at 1), e.g. 1.5 or 0.75 for the plan's "
            "ensemble members 2 and 3."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the train split (debugging)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the validation and test splits (debugging)."}
    )
    use_text_embeddings: bool = field(
        default=True,
        metadata={"help": "Embed scene descriptions with the frozen text encoder (each distinct text once)."},
    )


@dataclass
class GPSArguments:
    gps_weighting: bool = field(
        default=True, metadata={"help": "Sample training rows by their distance to the target split's GPS centres."}
    )
    gps_clusters: int = field(default=5, metadata={"help": "KMeans centres fitted on the target split's GPS."})
    gps_bracket_edges_km: list[float] = field(
        default_factory=lambda: [50.0, 200.0, 500.0], metadata={"help": "Distance bracket edges in km."}
    )
    gps_bracket_weights: list[float] = field(
        default_factory=lambda: [5.0, 2.5, 1.0, 0.3],
        metadata={"help": "Sampling weight per bracket (one more than the edges; the last applies beyond)."},
    )
    gps_missing_weight: float = field(default=1.0, metadata={"help": "Weight of rows without GPS."})
    allow_weak_gps_weighting: bool = field(
        default=False,
        metadata={"help": "Train even if the GPS weighting misses the plan's criteria (the report says which)."},
    )


@dataclass
class RunArguments:
    early_stopping_patience: int = field(
        default=5,
        metadata={
            "help": "Stop after this many evaluations without a better --metric_for_best_model (validation MCC); "
            "needs --load_best_model_at_end. 0 disables early stopping."
        },
    )


def _yaml_default(action, value):
    """A YAML value as the default of `action`. List flags (`nargs`) take a YAML list as a list, each item converted as
    on the command line (argparse re-parses string defaults, so JSON text would fail); string flags such as
    --backbone_config and --model_overrides take mappings and lists as JSON."""
    if isinstance(value, list) and action.nargs not in (None, "?"):
        return [action.type(v) if action.type is not None else v for v in value]
    return json.dumps(value) if isinstance(value, (dict, list)) else value


MERGED_MAPPINGS = ("model_overrides", "backbone_config")


def load_config_file(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """
    A YAML file of flags. `base: other.yaml` (relative to the file) is read first and the file's own keys win; the
    mappings `model_overrides` and `backbone_config` are merged key by key, so a variant lists only what it changes.
    """
    path = os.path.abspath(path)
    if path in _seen:
        raise SystemExit(f"{path}: `base` includes form a cycle: {' -> '.join(_seen + (path,))}")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected a mapping of flags, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = load_config_file(os.path.join(os.path.dirname(path), base), _seen + (path,))
    for key, value in values.items():
        if key in MERGED_MAPPINGS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def parse_args(argv: list[str] | None = None):
    """YAML from --config, overridden by command-line flags -> (model, data, gps, run, training) arguments."""
    parser = HfArgumentParser((ModelArguments, DataArguments, GPSArguments, RunArguments, TrainingArguments))
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file of flags; command-line flags override it. A `base: other.yaml` key reads that file first.",
    )
    parser.description = __doc__
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        values = load_config_file(known.config)
        actions = {action.dest: action for action in parser._actions}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise SystemExit(f"{known.config}: unknown keys {unknown}; see `python train.py --help`")
        parser.set_defaults(**{k: _yaml_default(actions[k], v) for k, v in values.items()})
    else:
        values = {}
    model_args, *rest, _ = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    for name in MERGED_MAPPINGS:
        # A mapping on the command line adds to (and overrides keys of) the YAML's mapping instead of replacing it.
        from_yaml = values.get(name)
        given = getattr(model_args, name)
        if isinstance(from_yaml, dict) and given is not None and given != json.dumps(from_yaml):
            setattr(model_args, name, json.dumps({**from_yaml, **_json_arg(given, name)}))
    _check_model_overrides(_json_arg(model_args.model_overrides, "model_overrides"))
    return (model_args, *rest)


def _check_model_overrides(overrides: dict) -> None:
    """RoadworkConfig takes **kwargs (transformers stores unknown keys as attributes), so a misspelt field would be
    silently ignored: reject keys that are not config fields, with the closest field names."""
    fields_ = set(inspect.signature(RoadworkConfig.__init__).parameters) - {"self", "kwargs"}
    fields_ |= {"id2label", "label2id"}
    for key in overrides:
        if key not in fields_:
            close = difflib.get_close_matches(key, sorted(fields_), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise SystemExit(f"--model_overrides: {key!r} is not a RoadworkConfig field{hint}")


def _json_arg(value: str | None, name: str) -> dict:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--{name} must be JSON (or a YAML mapping in --config): {error}") from error
    if not isinstance(parsed, dict):
        raise SystemExit(f"--{name} must be a JSON object, got {value!r}")
    return parsed


def load_data(args: DataArguments, seed: int):
    """-> train, validation and test splits (datasets.Dataset) and the vocabularies of the train split."""
    source = args.dataset
    if source == "synthetic":
        from data_collator import SyntheticDatasetConfig

        source = str(
            ensure_synthetic_dataset(
                args.synthetic_dir,
                SyntheticDatasetConfig(num_train=args.synthetic_num_train, num_test=args.synthetic_num_test),
            )
        )
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
    overrides = _json_arg(args.model_overrides, "model_overrides")
    if args.model_name_or_path:
        return RoadworkForImageClassification.from_pretrained(args.model_name_or_path, **overrides)
    overrides = {**vocabularies, **overrides}
    if args.backbone_config:
        backbone_config = _json_arg(args.backbone_config, "backbone_config")
        return RoadworkForImageClassification(RoadworkConfig(backbone_config=backbone_config, **overrides))
    return RoadworkForImageClassification.from_backbone(args.backbone, **overrides)


def gps_sample_weights(args: GPSArguments, train, test, output_dir: str, seed: int, is_main: bool):
    """Weights per training row, after the validation report of the plan; stops training if it fails."""
    if not args.gps_weighting:
        return None
    config = RoadworkGPSWeightingConfig(
        num_clusters=args.gps_clusters,
        bracket_edges_km=list(args.gps_bracket_edges_km),
        bracket_weights=list(args.gps_bracket_weights),
        missing_weight=args.gps_missing_weight,
        seed=seed,
    )
    report_dir = os.path.join(output_dir, "gps_weighting") if is_main else None
    weights, report = prepare_gps_weighting(gps_array(train), gps_array(test), config, report_dir)
    if is_main:
        logger.info("GPS weighting report:\n%s", report.summary())
    if not report.passed:
        message = "GPS weighting misses the plan's criteria:\n- " + "\n- ".join(report.failures)
        if not args.allow_weak_gps_weighting:
            raise SystemExit(message + "\nChange the weights as suggested, or pass --allow_weak_gps_weighting.")
        logger.warning("%s\nTraining anyway (--allow_weak_gps_weighting).", message)
    return weights


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, gps_args, run_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    set_seed(training_args.seed)
    is_main = training_args.process_index == 0

    # Stage 1: data and vocabularies (from the train split only).
    train, validation, test, vocabularies = load_data(data_args, training_args.seed)
    logger.info("rows: train %d, validation %d, test %d", len(train), len(validation), len(test))

    # Stage 2: model and image processor.
    model = build_model(model_args, vocabularies)
    config = model.config
    image_processor = RoadworkImageProcessor(view_size=config.view_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("parameters: %d trainable of %d", trainable, sum(p.numel() for p in model.parameters()))

    # Stage 3: GPS-weighted sampling, validated before any training.
    weights = gps_sample_weights(gps_args, train, test, training_args.output_dir, training_args.seed, is_main)

    # Stage 4: datasets and collator.
    train_augmentation = data_args.augmentation
    if data_args.augmentation in ("heavy", "light"):
        train_augmentation = RoadworkViewAugmenter(
            RoadworkAugmentationConfig(strength=data_args.augmentation, scale=data_args.augmentation_scale)
        )
    datasets = {
        name: RoadworkDataset(
            split, image_processor, vocabularies=config,
            augmentation=train_augmentation if name == "train" else "none", seed=training_args.seed,
        )  # fmt: skip
        for name, split in (("train", train), ("validation", validation), ("test", test))
    }
    embedder = None
    if data_args.use_text_embeddings and config.use_metadata and config.use_text:
        embedder = RoadworkTextEmbedder.get(config.text_encoder_name)
        # Every distinct description is embedded once, here, before DataLoader workers fork and inherit the cache.
        for split in (train, validation, test):
            embedder([clean_description(text) for text in get_column(split, "scene_description")])
    collator = RoadworkDataCollator(
        text_embedder=embedder, text_embed_dim=config.text_embed_dim, seg_mask_size=config.seg_resolution
    )

    # Stage 5: train.
    training_args.label_names = ["labels"]
    training_args.remove_unused_columns = False
    if training_args.ddp_find_unused_parameters is None:
        # Auxiliary heads get no gradient in batches without their labels.
        training_args.ddp_find_unused_parameters = True
    callbacks = []
    if run_args.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run_args.early_stopping_patience))
    trainer = RoadworkTrainer(
        model=model, args=training_args, train_dataset=datasets["train"], eval_dataset=datasets["validation"],
        data_collator=collator, processing_class=image_processor, compute_metrics=compute_metrics,
        callbacks=callbacks, sample_weights=weights, sampler_seed=training_args.seed, dataset_name=data_args.dataset,
        base_model=None if model_args.backbone_config else model_args.backbone,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # Stage 6: evaluate, save, push, summarise.
    trainer.remove_callback(EarlyStoppingCallback)  # it would look for eval_mcc in the test metrics
    metrics = {f"validation_{k.removeprefix('eval_')}": v for k, v in trainer.evaluate().items()}
    metrics.update(trainer.evaluate(datasets["test"], metric_key_prefix="test"))
    trainer.final_metrics = metrics
    trainer.save_model()
    trainer.create_model_card()
    if is_main:
        trainer.save_metrics("all", metrics)
        trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="roadwork: end of training")
    summary = _summary(trainer, metrics, time.time() - started, training_args.output_dir)
    if is_main:
        print(summary["line"], flush=True)
    return summary


def _summary(trainer: RoadworkTrainer, metrics: dict, seconds: float, output_dir: str) -> dict:
    evals = [e for e in trainer.state.log_history if "eval_mcc" in e]
    best = max(evals, key=lambda e: e["eval_mcc"]) if evals else {}
    best_mcc = best.get("eval_mcc", float("nan"))
    line = (
        f"roadwork: best validation MCC {best_mcc:.4f} at epoch {best.get('epoch', float('nan')):.2f}; "
        f"test MCC {metrics.get('test_mcc', float('nan')):.4f}; wall time {seconds / 60:.1f} min; "
        f"checkpoint {os.path.abspath(output_dir)}"
    )
    return {"line": line, "best_mcc": best_mcc, "best_epoch": best.get("epoch"), "metrics": metrics}


if __name__ == "__main__":
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
