#!/usr/bin/env python
"""
Predict roadwork with a checkpoint, a checkpoint with DoRA adapters, or an ensemble; evaluate it when labels are known.

    python predict.py --model outputs/quickstart --inputs photos/ --output_dir preds
    python predict.py --model owner/roadwork --inputs data_dir --split test --serving --tta foods --output_dir eval
    python predict.py --ensemble ensemble.json --inputs "shots/**/*.jpg" --output_dir preds
    python predict.py --model outputs/quickstart --fit_ood_stats --inputs data_dir --split train   # for --tta foods

Inputs: image files, folders (searched recursively), globs ("**" recursive), a Parquet folder in the dataset schema
(data/{split}-*.parquet, e.g. the synthetic dataset) or a `datasets` Hub id, both with --split. Rows of a dataset
carry their label and metadata; metadata is used unless --no_metadata or --serving (serving sends none).

Outputs in --output_dir, each written atomically (a temporary file, then a rename): predictions.csv and
predictions.jsonl (input, id, prob_roadwork, label = round(p) with 0.5 as None as the validators threshold,
true_label when known, one prob_m{k}_{name} column per ensemble member, and weather/daytime/scene/city/gps of
dataset rows); errors.csv (input, error); with labels metrics.json, report.html and plots/.

No input is lost: an empty, truncated or non-image file, an unsupported format, an image smaller than
--min_image_size per side (a 1x1 image), one above --max_image_pixels (a decompression bomb), an unreadable path and
a folder without images each become a line of errors.csv with the reason, and every other input is still predicted.
Valid but awkward images (CMYK, 16-bit, alpha, palette, EXIF-rotated, WebP, portrait, 4032x3024) are predicted.
Exit status: 0 if at least one input was predicted, 2 if none was; with --strict the first error stops the run (2).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

import torch

from roadwork_training.arguments import RoadworkArgumentParser
from roadwork_training.ensemble import RoadworkEnsemble, RoadworkEnsembleMember, load_ensemble
from roadwork_training.predict import (
    atomic_write,
    build_records,
    load_members,
    member_columns,
    resolve_device,
    run_prediction,
    write_errors,
    write_ood_stats,
    write_predictions,
)
from roadwork_training.predict_inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MIN_IMAGE_SIZE,
    RoadworkPredictionDataset,
    collect_inputs,
)
from roadwork_training.report import evaluate_records, write_report
from roadwork_training.tta import FOODS_KEEP_FRACTION, TTA_MODES


logger = logging.getLogger("roadwork.predict")


@dataclass
class PredictArguments:
    inputs: list[str] = field(
        default_factory=list,
        metadata={"help": "Image files, folders (recursive), globs (quote them; ** is recursive), a Parquet folder in "
                          "the dataset schema or a `datasets` Hub id (both with --split)."},
    )  # fmt: skip
    output_dir: str = field(default="predictions", metadata={"help": "Where predictions, errors and the report go."})
    model: str | None = field(default=None, metadata={"help": "Roadwork checkpoint: a folder or a Hub id."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    adapter: list[str] = field(
        default_factory=list,
        metadata={"help": "DoRA/LoRA adapters (folders or Hub ids) on --model; several adapters form an ensemble "
                          "combined by their mean, sharing one backbone pass."},
    )  # fmt: skip
    ensemble: str | None = field(
        default=None,
        metadata={"help": "Ensemble JSON file (instead of --model), as finetune_dora.py writes it: members {model, "
                          "adapter, weight, validation_serving_mcc, model_revision, name}, combine mean | "
                          "mcc_weighted (the normalised weights) | stacked, stacking {coefficients, intercept} "
                          "(stacked: sigmoid(coefficients . p + intercept) on the members' probabilities); format "
                          "in roadwork_training/ensemble.py."},
    )  # fmt: skip
    split: str | None = field(default=None, metadata={"help": "Split of a Parquet folder or `datasets` id input."})
    tta: str = field(
        default="none",
        metadata={"help": "Test-time augmentation: none; flip (image and mirror, mean); mean (the 16 FOODS "
                          "augmentations, plain mean); foods (the 16, the 80%% closest to the training set by "
                          "Mahalanobis distance of the fused vision vector, weights softmax(-distance); needs "
                          "ood_stats.safetensors from --fit_ood_stats).",
                  "choices": list(TTA_MODES)},
    )  # fmt: skip
    foods_keep_fraction: float = field(
        default=FOODS_KEEP_FRACTION, metadata={"help": "FOODS: share of the augmentations kept (closest first)."}
    )
    foods_temperature: float = field(
        default=1.0, metadata={"help": "FOODS: weights are softmax(-distance / temperature) over the kept variants."}
    )
    fit_ood_stats: bool = field(
        default=False,
        metadata={"help": "Instead of predicting: fit the FOODS statistics (mean, Ledoit-Wolf shrunk covariance) of "
                          "the fused vision vector over --inputs (a dataset split, e.g. --split train) and write "
                          "ood_stats.safetensors into the --adapter folder if given, else the --model folder."},
    )  # fmt: skip
    serving: bool = field(
        default=False,
        metadata={"help": "Serving conditions: every image through the validators' challenge transform (one of four "
                          "levels, seeded per input, then JPEG), no metadata; the report adds the subnet's reward on "
                          "a 50/50 label mix."},
    )  # fmt: skip
    no_metadata: bool = field(default=False, metadata={"help": "Ignore the metadata of dataset rows."})
    seed: int = field(default=42, metadata={"help": "Seed of the challenge transform and the report's subsampling."})
    batch_size: int = field(default=8, metadata={"help": "Images per batch (each with every TTA variant)."})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes that decode images."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda, cuda:1, ..."})
    backbone_batch_size: int | None = field(
        default=None, metadata={"help": "Views per backbone call (default: the config's, else all views of a batch)."}
    )
    strict: bool = field(default=False, metadata={"help": "Stop at the first input that fails (exit status 2)."})
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "Refuse images with more pixels (decompression bombs); Pillow's own default."},
    )
    min_image_size: int = field(
        default=DEFAULT_MIN_IMAGE_SIZE, metadata={"help": "Refuse images with a side shorter than this (pixels)."}
    )
    report: bool = field(default=True, metadata={"help": "Write metrics.json and report.html when labels are known."})


def parse_args(argv: list[str] | None = None) -> PredictArguments:
    (args,) = RoadworkArgumentParser((PredictArguments,), description=__doc__).parse(argv)
    if not args.inputs:
        raise SystemExit("--inputs is required: image files, folders, globs or a dataset (with --split)")
    if (args.model is None) == (args.ensemble is None):
        raise SystemExit("give exactly one of --model (with optional --adapter) or --ensemble FILE.json")
    if args.ensemble and args.adapter:
        raise SystemExit("--adapter goes with --model; an ensemble file names each member's adapter itself")
    if args.fit_ood_stats and (args.ensemble or len(args.adapter) > 1):
        raise SystemExit("--fit_ood_stats fits one model: --model with at most one --adapter")
    if args.batch_size < 1 or args.num_workers < 0:
        raise SystemExit("--batch_size must be >= 1 and --num_workers >= 0")
    return args


def ensemble_spec(args: PredictArguments) -> RoadworkEnsemble:
    """--ensemble FILE, else --model with its --adapter(s) as equal-weight members combined by their mean."""
    if args.ensemble:
        try:
            return load_ensemble(args.ensemble)
        except ValueError as error:
            raise SystemExit(f"--ensemble: {error}") from error
    adapters = args.adapter or [None]
    members = [RoadworkEnsembleMember(args.model, adapter, model_revision=args.revision) for adapter in adapters]
    return RoadworkEnsemble.equal_weights(members)


def fit_ood_stats_stage(args: PredictArguments, device: torch.device) -> int:
    """--fit_ood_stats: the statistics of the model's fused vision vector over a dataset split."""
    from data_collator.schema import load_roadwork_splits

    if args.split is None or len(args.inputs) != 1:
        raise SystemExit("--fit_ood_stats needs one dataset in --inputs and its --split (e.g. --split train)")
    target = args.adapter[0] if args.adapter else args.model
    if not os.path.isdir(target):
        raise SystemExit(f"--fit_ood_stats writes into a local folder; {target} is not one (download it first)")
    members, _ = load_members(ensemble_spec(args).resolved_members(), device)
    split = load_roadwork_splits(args.inputs[0], splits=[args.split])[args.split]
    path = write_ood_stats(members[0].model, split, target, batch_size=args.batch_size, num_workers=args.num_workers,
                           device=device, peft_model=members[0].peft_model)  # fmt: skip
    print(f"roadwork: OOD statistics of {len(split)} rows of {args.inputs[0]}:{args.split} -> {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = resolve_device(args.device)
    if args.fit_ood_stats:
        return fit_ood_stats_stage(args, device)

    # Stage 1: inputs. Whatever cannot be read becomes an error line; --strict stops here instead.
    os.makedirs(args.output_dir, exist_ok=True)
    collected = collect_inputs(args.inputs, args.split)
    if args.strict and collected.errors:
        write_errors(args.output_dir, collected.errors)
        raise SystemExit(f"--strict: {collected.errors[0].input}: {collected.errors[0].error}")
    logger.info("%d input(s), %d unreadable while listing", len(collected.inputs), len(collected.errors))

    # Stage 2: members, grouped by shared backbone.
    spec = ensemble_spec(args)
    members, groups = load_members(spec.resolved_members(), device, need_ood_stats=args.tta == "foods")
    if args.backbone_batch_size:
        for group in groups:
            group.extractor.config.backbone_batch_size = args.backbone_batch_size

    # Stage 3: predict (decoding in worker processes, one backbone pass per group, image and variant).
    result = run_prediction(
        collected.inputs, members, groups, device=device, tta=args.tta, serving=args.serving,
        use_metadata=not args.no_metadata, seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers,
        combine=spec.combine, foods_keep_fraction=args.foods_keep_fraction,
        foods_temperature=args.foods_temperature, min_image_size=args.min_image_size,
        max_image_pixels=args.max_image_pixels, strict=args.strict,
    )  # fmt: skip
    errors = collected.errors + result.errors

    # Stage 4: outputs, then the evaluation when labels are known.
    columns = member_columns(spec.resolved_members())
    records = build_records(collected.inputs, result, columns)
    write_predictions(args.output_dir, records, columns)
    write_errors(args.output_dir, errors)
    metrics = evaluate_records(records, serving=args.serving, seed=args.seed, members=columns) if args.report else {}
    settings = {k: v for k, v in asdict(args).items() if k not in ("report",)}
    settings["combine"] = spec.combine_method
    if metrics:
        metrics = {"settings": settings, **metrics, "num_errors": len(errors), "seconds": result.seconds}
        atomic_write(os.path.join(args.output_dir, "metrics.json"), json.dumps(metrics, indent=2, default=str))
        dataset = RoadworkPredictionDataset(collected.inputs, [groups[0].processor], serving=args.serving,
                                            seed=args.seed, max_image_pixels=args.max_image_pixels)  # fmt: skip
        by_name = {item.name: item for item in collected.inputs}

        def thumbnail(record):
            try:
                return dataset.load_pil(by_name[record["input"]])
            except Exception:  # noqa: BLE001 - a thumbnail that cannot be read again is shown as unreadable
                return None

        write_report(args.output_dir, records, metrics, thumbnail=thumbnail, settings=settings)
    overall = metrics.get("overall", {})
    rate = len(records) / result.seconds if result.seconds else float("nan")
    summary = (f"roadwork: {len(records)} predicted, {len(errors)} error(s) (errors.csv), {rate:.1f} images/s, "
               f"tta {args.tta}, {'serving' if args.serving else 'as given'}")  # fmt: skip
    if "mcc" in overall:
        summary += f"; MCC {overall['mcc']:.4f}, accuracy {overall['accuracy']:.4f}, ROC-AUC {overall['roc_auc']:.4f}"
    print(summary + f"; {os.path.abspath(args.output_dir)}", flush=True)
    return 0 if records else 2


if __name__ == "__main__":
    sys.exit(main())
