#!/usr/bin/env python
"""
Train the roadwork classifier with the Hugging Face Trainer.

    accelerate launch train.py --config configs/quickstart.yaml            # synthetic data, tiny backbone, CPU
    accelerate launch train.py --config configs/base.yaml                  # DINOv3 ViT-H+/16 on natix-network-org/roadwork
    accelerate launch --multi_gpu --num_processes 2 train.py --config configs/base.yaml --learning_rate 2e-4

Flags given on the command line override the YAML file. `python train.py --help` lists every flag.
"""

from __future__ import annotations

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
    RoadworkViewAugmenter,
)
from data_collator.gps_weighting import RoadworkGPSWeightingConfig
from data_collator.metadata import clean_description
from data_collator.schema import get_column
from data_collator.synthetic import SyntheticDatasetConfig
from modeling_roadwork import RoadworkImageProcessor, RoadworkTextEmbedder
from roadwork_training import RoadworkTrainer, compute_metrics
from roadwork_training.arguments import RoadworkArgumentParser, prefixed_arguments, to_config
from roadwork_training.build import DataArguments, ModelArguments, build_model, gps_sample_weights, load_data


logger = logging.getLogger("roadwork.train")

# The library's own dataclasses as flag groups: defaults and help are defined once, in data_collator.
SyntheticArguments = prefixed_arguments(SyntheticDatasetConfig, "synthetic_", exclude=("version",))
GPSConfigArguments = prefixed_arguments(RoadworkGPSWeightingConfig, "gps_", exclude=("seed",))
AugmentationArguments = prefixed_arguments(RoadworkAugmentationConfig, "augmentation_", include=("strength", "scale"))


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
    training: TrainingArguments


def parse_args(argv: list[str] | None = None) -> TrainArguments:
    """YAML from --config, overridden by command-line flags."""
    parser = RoadworkArgumentParser(
        (ModelArguments, DataArguments, SyntheticArguments, AugmentationArguments, GPSConfigArguments, RunArguments,
         TrainingArguments),
        description=__doc__,
    )  # fmt: skip
    model, data, synthetic, augmentation, gps, run, training = parser.parse(argv)
    try:
        return TrainArguments(
            model=model, data=data, synthetic=to_config(synthetic), augmentation=to_config(augmentation),
            gps=to_config(gps, seed=training.seed), run=run, training=training,
        )  # fmt: skip
    except ValueError as error:  # a library config's own validation names the field and the bad value
        raise SystemExit(f"invalid flag value: {error}") from error


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    training_args = args.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    set_seed(training_args.seed)
    is_main = training_args.process_index == 0

    # Stage 1: data and vocabularies (from the train split only).
    train, validation, test, vocabularies = load_data(args.data, training_args.seed, args.synthetic)
    logger.info("rows: train %d, validation %d, test %d", len(train), len(validation), len(test))

    # Stage 2: model and image processor.
    model = build_model(args.model, vocabularies)
    config = model.config
    image_processor = RoadworkImageProcessor(view_size=config.view_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("parameters: %d trainable of %d", trainable, sum(p.numel() for p in model.parameters()))

    # Stage 3: GPS-weighted sampling, validated before any training.
    weights = None
    if args.run.gps_weighting:
        report_dir = os.path.join(training_args.output_dir, "gps_weighting") if is_main else None
        weights = gps_sample_weights(args.gps, train, test, report_dir, allow_weak=args.run.allow_weak_gps_weighting)

    # Stage 4: datasets and collator.
    augmenter = RoadworkViewAugmenter(args.augmentation)
    datasets = {
        name: RoadworkDataset(
            split, image_processor, vocabularies=config, augmentation=augmenter if name == "train" else "none",
            seed=training_args.seed,
        )  # fmt: skip
        for name, split in (("train", train), ("validation", validation), ("test", test))
    }
    embedder = None
    if args.data.use_text_embeddings and config.use_metadata and config.use_text:
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
    if args.run.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.run.early_stopping_patience))
    trainer = RoadworkTrainer(
        model=model, args=training_args, train_dataset=datasets["train"], eval_dataset=datasets["validation"],
        data_collator=collator, processing_class=image_processor, compute_metrics=compute_metrics,
        callbacks=callbacks, sample_weights=weights, sampler_seed=training_args.seed, dataset_name=args.data.dataset,
        base_model=None if args.model.backbone_config else args.model.backbone,
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
