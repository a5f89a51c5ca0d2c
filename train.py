#!/usr/bin/env python
"""
Train the roadwork classifier with the Hugging Face Trainer.

    accelerate launch train.py --config configs/quickstart.yaml        # synthetic data, tiny backbone, CPU
    accelerate launch train.py --config configs/base.yaml              # DINOv3 ViT-H+/16 on natix-network-org/roadwork
    accelerate launch --multi_gpu --num_processes 2 train.py --config configs/base.yaml --learning_rate 2e-4

Flags given on the command line override the YAML file. `python train.py --help` lists every flag.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import torch
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

from data_collator import (
    RoadworkAugmentationConfig,
    RoadworkDataCollator,
    RoadworkDataset,
    RoadworkValidatorTransform,
    RoadworkViewAugmenter,
)
from data_collator.gps_weighting import RoadworkGPSWeightingConfig
from data_collator.metadata import clean_description
from data_collator.schema import get_column
from data_collator.synthetic import SyntheticDatasetConfig
from modeling_roadwork import RoadworkImageProcessor, RoadworkTextEmbedder
from roadwork_training import RoadworkTrainer, compute_metrics
from roadwork_training.arguments import RoadworkArgumentParser, to_config
from roadwork_training.build import (
    DataArguments,
    ModelArguments,
    build_model,
    condition_datasets,
    gps_sample_weights,
    load_data,
)
from roadwork_training.feature_cache import FeatureCacheArguments, feature_cache_from_training
from roadwork_training.flag_groups import AugmentationArguments, GPSConfigArguments, SyntheticArguments
from roadwork_training.head_training import evaluate_conditions
from roadwork_training.metrics import CONDITIONS, PRIMARY_CONDITION, format_metric
from roadwork_training.probe_floor import FLOOR_CHOICES, apply_probe_floor, fit_global_linear_path
from roadwork_training.trainer import best_evaluation


logger = logging.getLogger("roadwork.train")


@dataclass
class RunArguments:
    gps_weighting: bool = field(
        default=True, metadata={"help": "Sample training rows by their distance to the target split's GPS centres."}
    )
    allow_weak_gps_weighting: bool = field(
        default=False,
        metadata={"help": "Train even if the GPS weighting misses its criteria (--gps_min_*, the report says which)."},
    )
    early_stopping_patience: int = field(
        default=5,
        metadata={
            "help": "Stop after this many evaluations without a better --metric_for_best_model (validation MCC); "
            "needs --load_best_model_at_end. 0 disables early stopping."
        },
    )


@dataclass
class TrainArguments:
    """Every flag group of train.py, parsed."""

    model: ModelArguments
    data: DataArguments
    synthetic: SyntheticDatasetConfig
    augmentation: RoadworkAugmentationConfig
    gps: RoadworkGPSWeightingConfig
    run: RunArguments
    cache: FeatureCacheArguments
    training: TrainingArguments


def parse_args(argv: list[str] | None = None) -> TrainArguments:
    """YAML from --config, overridden by command-line flags."""
    parser = RoadworkArgumentParser(
        (ModelArguments, DataArguments, SyntheticArguments, AugmentationArguments, GPSConfigArguments, RunArguments,
         FeatureCacheArguments, TrainingArguments),
        description=__doc__,
    )  # fmt: skip
    model, data, synthetic, augmentation, gps, run, cache, training = parser.parse(argv)
    try:
        return TrainArguments(
            model=model, data=data, synthetic=to_config(synthetic), augmentation=to_config(augmentation),
            gps=to_config(gps, seed=training.seed), run=run, cache=cache, training=training,
        )  # fmt: skip
    except ValueError as error:  # a library config's own validation names the field and the bad value
        raise SystemExit(f"invalid flag value: {error}") from error


def check_best_model_metric(training_args: TrainingArguments) -> None:
    """`metric_for_best_model` must be a metric the condition evaluations produce (e.g. serving_mcc), or the loss."""
    metric = (training_args.metric_for_best_model or "").removeprefix("eval_")
    valid = {f"{c}_{m}" for c in CONDITIONS for m in ("mcc", "accuracy", "f1", "roc_auc", "streetvision_reward")}
    valid |= {f"{c}_loss" for c in CONDITIONS}
    if training_args.load_best_model_at_end and metric not in valid:
        raise SystemExit(
            f"--metric_for_best_model {metric!r} is not a validation metric; evaluations report every metric under "
            f"each condition: use e.g. {PRIMARY_CONDITION}_mcc (what a miner is scored on) or metadata_mcc"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    training_args = args.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_best_model_metric(training_args)
    started = time.time()
    set_seed(training_args.seed)
    is_main = training_args.process_index == 0

    # Stage 1: data and vocabularies (from the train split only).
    splits, vocabularies = load_data(args.data, training_args.seed, args.synthetic)
    logger.info("rows: %s", ", ".join(f"{name} {len(split)}" for name, split in splits.items()))

    # Stage 2: model and image processor.
    model = build_model(args.model, vocabularies, splits["train"])
    config = model.config
    image_processor = RoadworkImageProcessor.from_model_config(config)  # the backbone's mean, std, resampling
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("parameters: %d trainable of %d", trainable, sum(p.numel() for p in model.parameters()))

    # Stage 3: GPS-weighted sampling, validated before any training.
    weights = None
    if args.run.gps_weighting:
        report_dir = os.path.join(training_args.output_dir, "gps_weighting") if is_main else None
        weights = gps_sample_weights(
            args.gps, splits["train"], splits["test"], report_dir, allow_weak=args.run.allow_weak_gps_weighting
        )

    # Stage 4: datasets and collator. Validation runs under every condition (serving first); early stopping and
    # the best checkpoint follow --metric_for_best_model (serving_mcc in the configs).
    # With --feature_cache the backbone runs once per image and pass here, and the datasets read the stored features.
    cache = feature_cache_from_training(args.cache, model, image_processor, training_args)
    conditions = condition_datasets if cache is None else cache.condition_datasets
    dropout = dict(
        metadata_dropout=args.data.metadata_dropout, metadata_field_dropout=args.data.metadata_field_dropout
    )
    if cache is None:
        challenge = args.data.serving_augmentation
        train_dataset = RoadworkDataset(
            splits["train"], image_processor, vocabularies=config,
            augmentation=RoadworkViewAugmenter(args.augmentation), seed=training_args.seed,
            image_transform=RoadworkValidatorTransform(probability=challenge) if challenge else None, **dropout,
        )  # fmt: skip
    else:
        train_dataset = cache.train_dataset(
            splits["train"], image_processor, config, RoadworkViewAugmenter(args.augmentation), training_args.seed,
            serving_augmentation=args.data.serving_augmentation, **dropout,
        )  # fmt: skip
    embedder = None
    if args.data.use_text_embeddings and config.use_metadata and config.use_text:
        embedder = RoadworkTextEmbedder.get(config.text_encoder_name)
        # Every distinct description is embedded once, here, before DataLoader workers fork and inherit the cache.
        for split in splits.values():
            embedder([clean_description(text) for text in get_column(split, "scene_description")])
    collator = RoadworkDataCollator(
        text_embedder=embedder, text_embed_dim=config.text_embed_dim, seg_mask_size=config.seg_resolution
    )

    # Stage 5: train. With the probe floor the global linear path is then fitted as a probe on the training rows,
    # and the best of head, head + probe and probe alone on validation is kept.
    training_args.label_names = ["labels"]
    training_args.remove_unused_columns = False
    if training_args.ddp_find_unused_parameters is None:
        # Auxiliary heads get no gradient in batches without their labels.
        training_args.ddp_find_unused_parameters = True
    callbacks = []
    if args.run.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.run.early_stopping_patience))
    trainer = RoadworkTrainer(
        model=model, args=training_args, train_dataset=train_dataset,
        eval_dataset=conditions(splits["validation"], image_processor, config, training_args.seed),
        data_collator=collator, processing_class=image_processor, compute_metrics=compute_metrics,
        callbacks=callbacks, sample_weights=weights, sampler_seed=training_args.seed, dataset_name=args.data.dataset,
        base_model=None if args.model.backbone_config else args.model.backbone,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    floor = {}
    if config.probe_floor:
        # On the trainer's device: the fit runs the backbone over view 0 of every row when nothing is cached.
        floor = fit_global_linear_path(trainer.model, train_dataset, collator, seed=training_args.seed)
        floor.update(probe_floor_on_validation(trainer, conditions(splits["validation"], image_processor, config,
                                                                   training_args.seed), collator))  # fmt: skip

    # Stage 6: evaluate every split except train under every condition; save, push, summarise.
    trainer.remove_callback(EarlyStoppingCallback)  # it would look for the validation metric in the test metrics
    metrics = {}
    for name, split in splits.items():
        if name != "train":
            datasets = conditions(split, image_processor, config, training_args.seed)
            metrics.update(trainer.evaluate(datasets, metric_key_prefix=name))
    metrics = lead_with_serving(metrics, [name for name in splits if name != "train"])
    metrics.update({f"probe_floor_{k.removeprefix('floor_')}": v for k, v in floor.items()})
    trainer.final_metrics = metrics
    trainer.save_model()
    trainer.create_model_card()
    summary = _summary(trainer, metrics, time.time() - started, training_args.output_dir)
    if is_main:
        with open(os.path.join(training_args.output_dir, "all_results.json"), "w") as f:
            json.dump(metrics, f, indent=2)  # not sorted: serving first
        trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="roadwork: end of training")
    if is_main:
        print(summary["line"], flush=True)
    return summary


def probe_floor_on_validation(trainer: RoadworkTrainer, validation: dict, collator) -> dict:
    """
    `apply_probe_floor` scored by the selection metric (`--metric_for_best_model`, e.g. `serving_mcc`) on the
    validation split: the saved model is the best of the head, the head plus the probe and the probe alone.
    """
    metric = (trainer.args.metric_for_best_model or f"{PRIMARY_CONDITION}_mcc").removeprefix("eval_")
    condition = next((c for c in sorted(validation, key=len, reverse=True) if metric.startswith(f"{c}_")), None)
    if condition is None:
        raise ValueError(f"--metric_for_best_model {metric!r} names none of the conditions {list(validation)}")
    name = metric.removeprefix(f"{condition}_")
    sign = 1.0 if trainer.args.greater_is_better in (None, True) else -1.0

    def score(model) -> float:
        values = evaluate_conditions(model, {condition: validation[condition]}, collator,
                                     trainer.args.per_device_eval_batch_size)[condition]  # fmt: skip
        return sign * float(values.get(name, float("nan")))

    return apply_probe_floor(trainer.model, score)


def lead_with_serving(metrics: dict, split_names: list[str]) -> dict:
    """Metrics ordered split by split (`split_names`), and within a split by condition, serving first."""
    ordered = {}
    for split in split_names:
        for condition in CONDITIONS:
            prefix = f"{split}_{condition}_"
            ordered.update({k: v for k, v in metrics.items() if k.startswith(prefix)})
    ordered.update({k: v for k, v in metrics.items() if k not in ordered})
    return ordered


def _summary(trainer: RoadworkTrainer, metrics: dict, seconds: float, output_dir: str) -> dict:
    metric = trainer.args.metric_for_best_model or f"{PRIMARY_CONDITION}_mcc"
    best = best_evaluation(trainer.state.log_history, metric)
    best_value = best.get(f"eval_{metric.removeprefix('eval_')}")
    test = " | ".join(f"{c} {format_metric(metrics.get(f'test_{c}_mcc'), 'mcc')}" for c in CONDITIONS)
    best_text = "not evaluated" if not best else format_metric(best_value, "mcc")
    floor = ""
    if "probe_floor_choice" in metrics:
        scores = ", ".join(f"{c} {format_metric(metrics[f'probe_floor_{c}_score'], 'mcc')}" for c in FLOOR_CHOICES)
        floor = f"; probe floor: {metrics['probe_floor_choice']} kept (validation {scores})"
    line = (
        f"roadwork: best validation {metric.removeprefix('eval_')} {best_text} at epoch "
        f"{best.get('epoch', float('nan')):.2f}; test MCC {test}; test reward ({PRIMARY_CONDITION}) "
        f"{format_metric(metrics.get(f'test_{PRIMARY_CONDITION}_streetvision_reward'), 'streetvision_reward')}"
        f"{floor}; wall time {seconds / 60:.1f} min; checkpoint {os.path.abspath(output_dir)}"
    )
    return {
        "line": line, "best_metric": best_value, "best_epoch": best.get("epoch"), "metrics": metrics,
        "output_dir": os.path.abspath(output_dir),
    }  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
