#!/usr/bin/env python
"""
Fine-tune a roadwork checkpoint with DoRA adapters on the target split, in stratified folds, and ensemble them.

    python finetune_dora.py --config configs/dora_quickstart.yaml --base_model /tmp/qs --output_dir outputs/dora_qs
    python finetune_dora.py --config configs/dora.yaml --base_model owner/roadwork --output_dir outputs/dora \\
        --push_to_hub --hub_model_id owner/roadwork-dora            # fold i -> Hub repo owner/roadwork-dora-fold{i}

Writes OUT/test_folds.json (reused when present), OUT/fold{i}/ (adapter, README.md card, fold_result.json),
OUT/ensemble.json (read by `roadwork_training.ensemble.load_ensemble`, e.g. predict.py --ensemble) and
OUT/dora_report.{json,md}. Flags given on the command line override the YAML file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainingArguments, set_seed

from data_collator import RoadworkAugmentationConfig, RoadworkDataCollator, RoadworkViewAugmenter
from data_collator.metadata import clean_description
from data_collator.schema import get_column
from data_collator.synthetic import SyntheticDatasetConfig
from modeling_roadwork import RoadworkImageProcessor, RoadworkTextEmbedder
from roadwork_training.arguments import RoadworkArgumentParser, to_config
from roadwork_training.build import DataArguments, condition_datasets, load_data
from roadwork_training.dora import (
    FOLDS_FILE,
    DoraArguments,
    DoraConfigError,
    FoldFeatureCache,
    apply_dora,
    build_fold_datasets,
    check_adapter_targets,
    fold_card_metrics,
    fold_indices,
    fold_model_card,
    fold_rows,
    load_base_model,
    load_fold_record,
    prepare_folds,
    push_fold,
    resolve_revision,
    save_fold_record,
    train_fold,
)
from roadwork_training.dora_report import build_ensembles, write_report
from roadwork_training.feature_cache import (
    CachePass,
    FeatureCacheArguments,
    cached_serving_dataset,
    feature_cache_from_training,
)
from roadwork_training.flag_groups import AugmentationArguments, SyntheticArguments
from roadwork_training.metrics import CONDITIONS, PRIMARY_CONDITION, format_metric


logger = logging.getLogger("roadwork.finetune_dora")


@dataclass
class DoraRunArguments:
    dora: DoraArguments
    data: DataArguments
    synthetic: SyntheticDatasetConfig
    augmentation: RoadworkAugmentationConfig
    cache: FeatureCacheArguments
    training: TrainingArguments


def parse_args(argv: list[str] | None = None) -> DoraRunArguments:
    parser = RoadworkArgumentParser(
        (DoraArguments, DataArguments, SyntheticArguments, AugmentationArguments, FeatureCacheArguments,
         TrainingArguments),
        description=__doc__,
    )  # fmt: skip
    try:
        dora, data, synthetic, augmentation, cache, training = parser.parse(argv)
        args = DoraRunArguments(dora, data, to_config(synthetic), to_config(augmentation), cache, training)
    except ValueError as error:  # DoraConfigError and the library configs' own checks name the field
        raise SystemExit(f"invalid flag value: {error}") from error
    if not args.dora.base_model:
        raise SystemExit("--base_model is required: a roadwork checkpoint folder (train.py's output_dir) or Hub id")
    metric = (training.metric_for_best_model or "").removeprefix("eval_")
    if metric != f"{PRIMARY_CONDITION}_mcc":
        raise SystemExit(
            f"--metric_for_best_model must be {PRIMARY_CONDITION}_mcc (the fold's serving MCC), got {metric!r}"
        )
    if training.push_to_hub and not training.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id owner/name (fold i is pushed as owner/name-fold{i})")
    return args


def text_embedder(config, data_args: DataArguments, splits):
    """The frozen text encoder with every description of `splits` embedded once (or None without text)."""
    if not (data_args.use_text_embeddings and config.use_metadata and config.use_text):
        return None
    embedder = RoadworkTextEmbedder.get(config.text_encoder_name)
    for split in splits:
        embedder([clean_description(text) for text in get_column(split, "scene_description")])
    return embedder


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    dora, training_args = args.dora, args.training
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(training_args.output_dir)
    set_seed(training_args.seed)

    # Stage 1: data and folds; every configuration check runs before any training.
    splits, _ = load_data(args.data, training_args.seed, args.synthetic)
    target = splits["test"]
    holdout = splits.get(dora.ensemble_split)
    if holdout is None:
        raise SystemExit(f"--ensemble_split {dora.ensemble_split!r} is not a split here ({sorted(splits)})")
    try:
        folds = prepare_folds(target, output_dir / FOLDS_FILE, dora.num_folds, dora.fold_seed)
        base = load_base_model(dora.base_model, dora.base_revision, dora.model_dropout)
        check_adapter_targets(base, dora.target_modules, dora.modules_to_save, dora.base_model)
    except DoraConfigError as error:
        raise SystemExit(str(error)) from error
    revision = resolve_revision(dora.base_model, dora.base_revision)
    base_name = dora.base_model if not os.path.isdir(dora.base_model) else os.path.abspath(dora.base_model)
    config = base.config
    image_processor = RoadworkImageProcessor.from_model_config(config)
    collator = RoadworkDataCollator(
        text_embedder=text_embedder(config, args.data, [target, holdout]), text_embed_dim=config.text_embed_dim,
        seg_mask_size=config.seg_resolution,
    )  # fmt: skip
    # With --feature_cache the frozen backbone runs here, once per image and pass of the whole target split (and the
    # holdout's serving pass); every fold then selects its rows from the cached tables. The adapters sit in the head,
    # so the features hold for every fold. The cached training passes draw their augmentation with the run's seed.
    cache = feature_cache_from_training(args.cache, base, image_processor, training_args)
    fold_cache = None
    if cache is None:
        holdout_dataset = condition_datasets(holdout, image_processor, config, training_args.seed)[PRIMARY_CONDITION]
    else:
        fold_cache = FoldFeatureCache(
            cache, target, augmentation=RoadworkViewAugmenter(args.augmentation), seed=training_args.seed,
            serving_augmentation=args.data.serving_augmentation,
        )
        holdout_dataset = cached_serving_dataset(
            cache.extractor.extract(holdout, CachePass.serving(training_args.seed)), image_processor, config,
            training_args.seed, cache.keep_views,
        )  # fmt: skip
    logger.info("target split %d rows in %d folds; holdout (%s) %d rows", len(target), len(folds), dora.ensemble_split,
                len(holdout))  # fmt: skip

    # Stage 2: one adapter per fold.
    wanted = dora.folds or list(range(dora.num_folds))
    for fold in wanted:
        fold_dir = output_dir / f"fold{fold}"
        train_indices, validation_indices = fold_indices(target, folds, fold)
        logger.info("fold %d: %d training rows, %d validation rows", fold, len(train_indices),
                    len(validation_indices))  # fmt: skip
        set_seed(training_args.seed)
        model = base if base is not None else load_base_model(dora.base_model, dora.base_revision, dora.model_dropout)
        base = None  # a DoRA adapter changes the base's layers in place: every later fold loads a fresh one
        peft_model = apply_dora(model, dora, base_name, revision)
        dropout = dict(
            metadata_dropout=args.data.metadata_dropout, metadata_field_dropout=args.data.metadata_field_dropout
        )
        if fold_cache is None:
            train_dataset, eval_datasets = build_fold_datasets(
                *fold_rows(target, folds, fold), image_processor, config,
                augmentation=RoadworkViewAugmenter(args.augmentation), seed=training_args.seed + fold,
                serving_augmentation=args.data.serving_augmentation, **dropout,
            )  # fmt: skip
        else:
            train_dataset, eval_datasets = fold_cache.datasets(
                train_indices, validation_indices, image_processor, config, seed=training_args.seed + fold, **dropout
            )
        record = train_fold(
            peft_model, train_dataset=train_dataset, eval_datasets=eval_datasets, holdout_dataset=holdout_dataset,
            collator=collator, image_processor=image_processor, training_args=training_args,
            early_stopping_patience=dora.early_stopping_patience, fold_dir=fold_dir,
        )  # fmt: skip
        record.update(fold=fold, num_folds=dora.num_folds, base_model=base_name, base_revision=revision)
        repo_id = f"{training_args.hub_model_id}-fold{fold}" if training_args.push_to_hub else None
        record["hub_id"] = repo_id
        card = fold_model_card(
            repo_id=repo_id or str(fold_dir), base_model=base_name, base_revision=revision, fold=fold,
            num_folds=dora.num_folds, metrics=fold_card_metrics(record), dataset=args.data.dataset, dora=dora,
            learning_rate=training_args.learning_rate,
        )  # fmt: skip
        (fold_dir / "README.md").write_text(card)
        save_fold_record(record, fold_dir)
        if repo_id:
            record["hub_commit"] = push_fold(
                fold_dir, repo_id, token=training_args.hub_token, private=training_args.hub_private_repo
            )
            save_fold_record(record, fold_dir)
        metrics = record["metrics"]
        print(
            f"fold {fold}: validation MCC "
            + " | ".join(f"{c} {format_metric(metrics.get(f'validation_{c}_mcc'), 'mcc')}" for c in CONDITIONS)
            + f"; adapter moved {record['movement']['dora_delta_norm']:.3g} "
            f"({record['movement']['dora_delta_relative']:.2e} of the adapted weights); {fold_dir}",
            flush=True,
        )

    # Stage 3: ensembles of the folds trained so far, and the report.
    records = [r for r in (load_fold_record(output_dir / f"fold{i}") for i in range(dora.num_folds)) if r]
    adapters = {r["fold"]: r.get("hub_id") or f"fold{r['fold']}" for r in records}
    ensemble, report = build_ensembles(
        records, base_model=base_name, base_revision=revision, size=min(dora.ensemble_size, len(records)),
        adapters=adapters, stacking_c=dora.stacking_c, seed=training_args.seed,
    )  # fmt: skip
    ensemble.save(output_dir / "ensemble.json")
    write_report(report, output_dir)
    print((output_dir / "dora_report.md").read_text(), flush=True)
    return {"records": records, "ensemble": ensemble, "report": report}


if __name__ == "__main__":
    main()
