"""DoRA fine-tuning of a roadwork checkpoint on the target split: folds, the adapter, one fold's training, the card.

`finetune_dora.py` runs these stages; each takes its data as arguments, so a dataset whose rows carry cached backbone
features (`view_features`, which `RoadworkDataset` passes through instead of pixels) plugs into the same functions.

    folds = prepare_folds(target_split, "OUT/test_folds.json", num_folds=5, seed=42)
    base = load_base_model("owner/roadwork-base", dropout=0.2)
    check_adapter_targets(base, ["qkv_proj", "out_proj"], ["classifier"], "owner/roadwork-base")
    model = apply_dora(base, DoraArguments(...))
    result = train_fold(model, train_dataset, eval_datasets, ...)

The adapters sit in the head (`attention_layers.N.qkv_proj` / `out_proj` and the view-fusion attention), after the
frozen backbone: targets inside the backbone are refused, so cached backbone features stay valid for every fold.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import EarlyStoppingCallback, TrainingArguments

from data_collator import RoadworkDataset, labels_array
from data_collator.schema import ID_COLUMN, get_column

from .metrics import CONDITIONS, PRIMARY_CONDITION, classification_metrics, condition_table, roadwork_probabilities
from .trainer import RoadworkTrainer, best_evaluation


logger = logging.getLogger(__name__)

FOLDS_FILE = "test_folds.json"
FOLD_RESULT_FILE = "fold_result.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", FOLD_RESULT_FILE)


class DoraConfigError(ValueError):
    """A configuration that cannot train (bad adapter targets, a base that is not a roadwork model, too few rows)."""


@dataclass
class DoraArguments:
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The roadwork checkpoint to adapt: a Hub id (loaded with trust_remote_code) or a local folder "
            "(train.py's output_dir). Required."
        },
    )
    base_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of --base_model on the Hub (default: main)."}
    )
    num_folds: int = field(default=5, metadata={"help": "Stratified folds over the target split (--test_split)."})
    fold_seed: int = field(default=42, metadata={"help": "Seed of the shuffled, stratified fold assignment."})
    folds: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Train only these folds (e.g. --folds 0 2); default all. Folds trained earlier in --output_dir "
            "(fold{i}/fold_result.json) join the ensembles."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "Rank of the DoRA/LoRA update."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator: the update is scaled by alpha/r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter's input."})
    use_dora: bool = field(
        default=True, metadata={"help": "DoRA (weight-decomposed LoRA: a learned magnitude per output); false: LoRA."}
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["qkv_proj", "out_proj"],
        metadata={
            "help": "Linear layers that get an adapter, matched as PEFT does (a name or a dotted suffix of one). They "
            "must exist in the base's head and not in its frozen backbone."
        },
    )
    modules_to_save: list[str] = field(
        default_factory=lambda: ["classifier"],
        metadata={
            "help": "Head modules trained in full and saved with the adapter (PEFT freezes everything else). PEFT "
            "matches them as a suffix of the module name: 'classifier' also trains view_classifier and "
            "weather_classifier (they feed the consistency and weather losses). A base with use_view_detector: add "
            "view_detector to train its per-view detector too."
        },
    )
    model_dropout: float = field(
        default=0.2,
        metadata={"help": "Overrides the base config's hidden_dropout and attention_dropout while fine-tuning."},
    )
    early_stopping_patience: int = field(
        default=2,
        metadata={"help": "Stop a fold after this many evaluations without a better fold serving MCC; 0 disables."},
    )
    ensemble_size: int = field(
        default=3, metadata={"help": "Ensemble members: the folds with the best out-of-fold serving MCC."}
    )
    ensemble_split: str = field(
        default="validation",
        metadata={
            "help": "Rows no adapter trained on, on which the ensembles are compared and the stacking meta-learner "
            "is fitted: 'validation' (the train split's held-out share, --validation_fraction). Target-split rows "
            "cannot serve: every fold model trained on 4 of the 5 folds."
        },
    )
    stacking_c: float = field(
        default=1.0, metadata={"help": "Inverse L2 strength of the stacking logistic regression (scikit-learn C)."}
    )

    def __post_init__(self):
        if self.num_folds < 2:
            raise DoraConfigError(f"--num_folds must be >= 2, got {self.num_folds}")
        bad = [f for f in self.folds if not 0 <= f < self.num_folds]
        if bad:
            raise DoraConfigError(f"--folds {bad} outside 0..{self.num_folds - 1}")
        if not 0.0 <= self.model_dropout < 1.0 or not 0.0 <= self.lora_dropout < 1.0:
            raise DoraConfigError(f"dropouts must be in [0, 1): {self.model_dropout=}, {self.lora_dropout=}")
        if self.ensemble_size < 1:
            raise DoraConfigError(f"--ensemble_size must be >= 1, got {self.ensemble_size}")


# --- folds --------------------------------------------------------------------------------------------------------


def row_ids(split) -> list[str]:
    """The split's row ids as strings; unique, or folds by id would be ambiguous."""
    ids = [str(i) for i in get_column(split, ID_COLUMN)]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DoraConfigError(f"the target split has duplicate row ids (e.g. {duplicates}); folds need unique ids")
    return ids


def build_folds(ids: Sequence[str], labels: Sequence[int], num_folds: int, seed: int) -> list[list[str]]:
    """Stratified, shuffled `num_folds` folds -> the validation row ids of each fold (each id in exactly one)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(int)
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    short = {c: n for c, n in counts.items() if n < num_folds}
    if short or len(counts) < 2:
        raise DoraConfigError(
            f"stratified {num_folds}-fold split needs at least {num_folds} rows of each class in the target split; "
            f"it has {counts or 'no rows'}. Use fewer --num_folds or a larger target split."
        )
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    ids = list(ids)
    return [[ids[i] for i in sorted(val)] for _, val in splitter.split(np.zeros(len(ids)), labels)]


def prepare_folds(split, path: str | os.PathLike, num_folds: int, seed: int) -> list[list[str]]:
    """
    The folds of the target split: read from `path` (`OUT/test_folds.json`) when it exists, after checking that it
    covers exactly this split's row ids with `num_folds` folds; otherwise built ([`build_folds`]) and written there.
    """
    ids = row_ids(split)
    path = Path(path)
    if path.is_file():
        with open(path) as f:
            saved = json.load(f)
        folds = [list(map(str, fold)) for fold in saved["folds"]]
        flat = [i for fold in folds for i in fold]
        if len(folds) != num_folds:
            raise DoraConfigError(
                f"{path} holds {len(folds)} folds, --num_folds is {num_folds}: use --num_folds {len(folds)}, or "
                "another --output_dir for new folds"
            )
        if len(flat) != len(set(flat)) or set(flat) != set(ids):
            missing, extra = sorted(set(ids) - set(flat)), sorted(set(flat) - set(ids))
            raise DoraConfigError(
                f"{path} does not match the target split: {len(missing)} of its rows are in no fold (e.g. "
                f"{missing[:3]}), {len(extra)} fold rows are not in the split (e.g. {extra[:3]}). The dataset changed "
                "since the folds were made: use another --output_dir, or delete the file to re-split (the adapters "
                "in this folder were trained on the old folds)."
            )
        logger.info("folds: reusing %s", path)
        return folds
    folds = build_folds(ids, labels_array(split), num_folds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"num_folds": num_folds, "seed": seed, "stratified": True, "folds": folds}, f, indent=1)
    logger.info("folds: %d stratified folds written to %s", num_folds, path)
    return folds


def fold_indices(split, folds: list[list[str]], fold: int) -> tuple[list[int], list[int]]:
    """(training row indices, validation row indices) of `fold` in `split`, in split order."""
    held = set(folds[fold])
    ids = row_ids(split)
    return [i for i, r in enumerate(ids) if r not in held], [i for i, r in enumerate(ids) if r in held]


def fold_rows(split, folds: list[list[str]], fold: int):
    """(training rows, validation rows) of `fold`: `datasets.Dataset` selections in split order."""
    train, val = fold_indices(split, folds, fold)
    return split.select(train), split.select(val)


# --- model --------------------------------------------------------------------------------------------------------


def _has_remote_code(folder: str) -> bool:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    with open(config) as f:
        return "AutoModelForImageClassification" in (json.load(f).get("auto_map") or {})


def _folder_model_type(folder: str) -> str | None:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    with open(config) as f:
        return json.load(f).get("model_type")


def load_base_model(name_or_path: str, revision: str | None = None, dropout: float | None = None) -> nn.Module:
    """
    The base checkpoint: `AutoModelForImageClassification.from_pretrained(name_or_path, trust_remote_code=True)` (a
    Hub id, or a folder that ships its model code), or the project's `RoadworkForImageClassification` for a folder
    without model code. `dropout` overrides the config's `hidden_dropout` and `attention_dropout`.
    """
    overrides = {} if dropout is None else {"hidden_dropout": dropout, "attention_dropout": dropout}
    try:
        if os.path.isdir(name_or_path) and not _has_remote_code(name_or_path):
            model_type = _folder_model_type(name_or_path)
            if model_type != "roadwork":
                raise ValueError(f"its config.json has model_type {model_type!r}, not 'roadwork'")
            from modeling_roadwork import RoadworkForImageClassification

            return RoadworkForImageClassification.from_pretrained(name_or_path, **overrides)
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            name_or_path, trust_remote_code=True, revision=revision, **overrides
        )
    except (OSError, ValueError, KeyError) as error:
        raise DoraConfigError(
            f"--base_model {name_or_path!r} does not load as a roadwork image classifier ({error}); give a roadwork "
            "checkpoint: train.py's output_dir or its Hub repo"
        ) from error


def resolve_revision(name_or_path: str, revision: str | None) -> str | None:
    """The commit a Hub base resolves to (recorded in `adapter_config.json`), `revision` itself if the Hub cannot be
    asked, None for a local folder."""
    if os.path.isdir(name_or_path):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(name_or_path, revision=revision).sha or revision
    except Exception as error:  # noqa: BLE001 - offline: the name is all we can record
        logger.warning("could not resolve the revision of %s (%s); recording %r", name_or_path, error, revision)
        return revision


def _peft_modules_to_save_match(name: str, head: str) -> bool:
    return name.endswith(head)  # PEFT's own rule in `_set_trainable` (a plain suffix)


def check_adapter_targets(
    model: nn.Module, target_modules: Sequence[str], modules_to_save: Sequence[str], base_name: str
) -> dict[str, list[str]]:
    """
    Checks, before any training, that the adapter can attach: the base is a roadwork model, every target matches at
    least one `nn.Linear` (PEFT's rule: the name or a dotted suffix), none inside the frozen backbone, and every
    module to save exists. -> {"targets": matched module names, "trained_heads": module names trained in full}.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    modules = dict(model.named_modules())
    if model_type != "roadwork":
        sample = [n for n in modules if n][:8]
        raise DoraConfigError(
            f"--base_model {base_name!r} is a {model_type!r} model, not a roadwork checkpoint (its modules: {sample}, "
            "...); DoRA targets the roadwork head's attention projections"
        )
    targets = []
    for target in target_modules:
        matched = [n for n in modules if n == target or n.endswith(f".{target}")]
        if not matched:
            candidates = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
            raise DoraConfigError(
                f"adapter target {target!r} matches no module of {base_name!r}; its Linear layers are named "
                f"{candidates}. Fix --target_modules (or is --base_model an older or a different checkpoint?)"
            )
        in_backbone = [n for n in matched if ".backbone." in f".{n}."]
        if in_backbone:
            raise DoraConfigError(
                f"adapter target {target!r} matches modules inside the frozen backbone ({in_backbone[:3]}); adapters "
                "belong in the head (cached backbone features would no longer match). Name head modules instead."
            )
        not_linear = [n for n in matched if not isinstance(modules[n], nn.Linear)]
        if not_linear:
            raise DoraConfigError(f"adapter target {target!r} matches non-Linear modules {not_linear[:3]}")
        targets += matched
    heads = []
    for head in modules_to_save:
        matched = [n for n in modules if n and _peft_modules_to_save_match(n, head)]
        # A match nested in another match (classifier.fc1 under classifier) is wrapped with its parent.
        matched = [n for n in matched if not any(n.startswith(f"{m}.") for m in matched if m != n)]
        if not matched:
            raise DoraConfigError(f"--modules_to_save {head!r} matches no module of {base_name!r}")
        if any(".backbone." in f".{n}." for n in matched):
            raise DoraConfigError(f"--modules_to_save {head!r} matches backbone modules; the backbone stays frozen")
        heads += matched
    return {"targets": targets, "trained_heads": heads}


def freeze_batch_norm_statistics(model: nn.Module) -> list[str]:
    """
    Keeps the running statistics of the base's batch norms (`view_feature_norm="batch"`) where the base left them.

    PEFT freezes the base's parameters, but a batch norm in train mode still moves its running mean and variance,
    which are base buffers: they are not in the adapter, so the model an adapter was trained as would not be the one
    it is loaded onto. Momentum 0 keeps the statistics fixed while training still normalises with the batch's, as
    the base trained. Returns the names of the norms it froze.
    """
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            if "backbone" not in name.split("."):  # the frozen backbone runs in eval mode anyway
                module.momentum = 0.0
                frozen.append(name)
    return frozen


def apply_dora(model: nn.Module, args: DoraArguments, base_name: str, revision: str | None = None):
    """Checks the targets ([`check_adapter_targets`]) and wraps `model` in a PEFT model with the DoRA adapter; prints
    the trainable parameters. `adapter_config.json` will name `base_name` and `revision`."""
    from peft import LoraConfig, get_peft_model

    check_adapter_targets(model, args.target_modules, args.modules_to_save, base_name)
    config = LoraConfig(
        use_dora=args.use_dora, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=list(args.target_modules), modules_to_save=list(args.modules_to_save),
        base_model_name_or_path=base_name, revision=revision,
    )  # fmt: skip
    model.name_or_path = base_name  # what PEFT writes as base_model_name_or_path
    freeze_batch_norm_statistics(model)
    peft_model = get_peft_model(model, config)
    peft_model.print_trainable_parameters()
    return peft_model


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors (adapter and heads), to measure how far training moved them."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def adapter_movement(peft_model, initial: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """
    How far the adapter moved from `initial` ([`adapter_state`] right after `apply_dora`):
    - `dora_delta_norm`: Frobenius norm, over every adapted layer, of the effective weight change
      `m * (W + s B A) / ||W + s B A||_row - W` (zero at initialisation, where B = 0 and m = ||W||_row);
    - `dora_delta_relative`: the same divided by the norm of the adapted base weights;
    - `lora_ba_norm`: norm of `s B A` alone; `magnitude_change_norm`: norm of `m - m0`;
    - `heads_change_norm`: norm of the change of the fully trained heads (`modules_to_save`).
    """
    delta_sq = base_sq = ba_sq = magnitude_sq = 0.0
    for module in peft_model.modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "get_base_layer")):
            continue
        for name in module.lora_A:
            weight = module.get_base_layer().weight.detach().double()
            a, b = module.lora_A[name].weight.detach().double(), module.lora_B[name].weight.detach().double()
            ba = module.scaling[name] * (b @ a)
            ba_sq += float(ba.pow(2).sum())
            base_sq += float(weight.pow(2).sum())
            magnitudes = getattr(module, "lora_magnitude_vector", None)
            if magnitudes is not None and name in magnitudes:
                m = magnitudes[name].weight.detach().double()
                effective = (m / torch.linalg.norm(weight + ba, dim=1)).unsqueeze(1) * (weight + ba)
                delta_sq += float((effective - weight).pow(2).sum())
            else:
                delta_sq += float(ba.pow(2).sum())
    parameters = dict(peft_model.named_parameters())
    heads_sq = 0.0
    for key, value in initial.items():
        change = float((parameters[key].detach().double() - value.double()).pow(2).sum())
        if "lora_magnitude_vector" in key:
            magnitude_sq += change
        elif "modules_to_save" in key:
            heads_sq += change
    return {
        "dora_delta_norm": math.sqrt(delta_sq),
        "dora_delta_relative": math.sqrt(delta_sq / base_sq) if base_sq else 0.0,
        "lora_ba_norm": math.sqrt(ba_sq),
        "magnitude_change_norm": math.sqrt(magnitude_sq),
        "heads_change_norm": math.sqrt(heads_sq),
    }


# --- data -----------------------------------------------------------------------------------------------------------


def build_fold_datasets(
    train_rows, validation_rows, image_processor, config, *, augmentation, seed: int, metadata_dropout: float,
    metadata_field_dropout: float, serving_augmentation: float = 0.0,
) -> tuple[RoadworkDataset, dict[str, RoadworkDataset]]:  # fmt: skip
    """
    The fold's training dataset (augmented, metadata dropout, a share `serving_augmentation` of validator
    challenges) and its validation rows under every condition (`condition_datasets`). Rows that carry
    `view_features` (a feature cache) skip the backbone and the pixels.
    """
    from data_collator import RoadworkValidatorTransform

    from .build import condition_datasets

    train_dataset = RoadworkDataset(
        train_rows, image_processor, vocabularies=config, augmentation=augmentation, seed=seed,
        metadata_dropout=metadata_dropout, metadata_field_dropout=metadata_field_dropout,
        image_transform=RoadworkValidatorTransform(probability=serving_augmentation) if serving_augmentation else None,
    )  # fmt: skip
    return train_dataset, condition_datasets(validation_rows, image_processor, config, seed)


class FoldFeatureCache:
    """
    The target split's cached backbone features, extracted once for every fold: the training passes (the
    augmentation drawn with `seed`), the serving pass and the clean pass. `datasets(train_idx, val_idx, ...)` selects
    one fold's rows from the cached tables, so the backbone runs once per image and pass, not once per fold. Valid
    because the adapters sit in the head (`check_adapter_targets` refuses backbone targets).
    """

    def __init__(self, cache, split, *, augmentation, seed: int, serving_augmentation: float = 0.0):
        from .feature_cache import CachePass

        self.cache = cache
        passes = cache.training_passes(augmentation, seed, serving_augmentation)
        self.train_tables = [cache.extractor.extract(split, p) for p in passes]
        self.serving_table = cache.extractor.extract(split, CachePass.serving(seed))
        self.clean_table = cache.extractor.extract(split, CachePass.clean())

    def datasets(
        self, train_indices, validation_indices, image_processor, config, *, seed: int, metadata_dropout: float,
        metadata_field_dropout: float,
    ) -> tuple[RoadworkDataset, dict[str, RoadworkDataset]]:  # fmt: skip
        """`build_fold_datasets` from the cache: the fold's training rows and its validation rows per condition."""
        from .feature_cache import CachedSplit, RoadworkCachedDataset, cached_condition_datasets

        keep = self.cache.keep_views
        train_dataset = RoadworkCachedDataset(
            CachedSplit([t.select(train_indices) for t in self.train_tables], keep), image_processor,
            vocabularies=config, seed=seed, metadata_dropout=metadata_dropout,
            metadata_field_dropout=metadata_field_dropout,
        )  # fmt: skip
        conditions = cached_condition_datasets(
            self.serving_table.select(validation_indices), self.clean_table.select(validation_indices),
            image_processor, config, seed, keep_views=keep,
        )  # fmt: skip
        return train_dataset, conditions


# --- one fold -------------------------------------------------------------------------------------------------------


def _logits(prediction) -> np.ndarray:
    logits = prediction.predictions
    return np.asarray(logits[0] if isinstance(logits, (tuple, list)) else logits)


def predict_logits(trainer: RoadworkTrainer, dataset) -> np.ndarray:
    """(N, 2) logits of the trainer's model on `dataset`, in dataset order."""
    return _logits(trainer.predict(dataset, metric_key_prefix="predict"))


def fold_training_arguments(training_args: TrainingArguments, output_dir: str | os.PathLike) -> TrainingArguments:
    """The run's TrainingArguments for one fold: its own checkpoint folder, and no Trainer push (each fold's adapter
    is pushed as its own repo instead)."""
    return replace(training_args, output_dir=str(output_dir), push_to_hub=False, hub_model_id=None,
                   label_names=["labels"], remove_unused_columns=False)  # fmt: skip


def train_fold(
    peft_model, *, train_dataset, eval_datasets: Mapping[str, RoadworkDataset], holdout_dataset, collator,
    image_processor, training_args: TrainingArguments, early_stopping_patience: int, fold_dir: str | os.PathLike,
) -> dict:  # fmt: skip
    """
    Trains one fold: early stopping and the best checkpoint on the fold's serving MCC, then the best adapter's
    validation predictions under every condition, its predictions on the holdout rows (serving), and how far the
    adapter moved. Saves the adapter to `fold_dir` and returns the fold's record (also `fold_dir/fold_result.json`).
    """
    fold_dir = Path(fold_dir)
    initial = adapter_state(peft_model)
    args = fold_training_arguments(training_args, fold_dir / "trainer")
    callbacks = []
    if early_stopping_patience > 0 and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    from .metrics import compute_metrics

    trainer = RoadworkTrainer(
        model=peft_model, args=args, train_dataset=train_dataset,
        eval_dataset={PRIMARY_CONDITION: eval_datasets[PRIMARY_CONDITION]}, data_collator=collator,
        processing_class=image_processor, compute_metrics=compute_metrics, callbacks=callbacks,
    )  # fmt: skip
    trainer.train()
    best = best_evaluation(trainer.state.log_history, args.metric_for_best_model)

    labels = {name: [int(x) for x in labels_array(ds.split)] for name, ds in eval_datasets.items()}
    metrics, probabilities, serving_logits = {}, {}, None
    for condition, dataset in eval_datasets.items():
        logits = predict_logits(trainer, dataset)
        probs = roadwork_probabilities(logits)
        probabilities[condition] = probs.tolist()
        if condition == PRIMARY_CONDITION:
            serving_logits = logits.astype(np.float32).tolist()
        for name, value in classification_metrics(probs, labels[condition]).items():
            metrics[f"validation_{condition}_{name}"] = value
    holdout = None
    if holdout_dataset is not None:
        holdout_probs = roadwork_probabilities(predict_logits(trainer, holdout_dataset))
        holdout = {
            "ids": [str(i) for i in get_column(holdout_dataset.split, ID_COLUMN)],
            "labels": [int(x) for x in labels_array(holdout_dataset.split)],
            "probabilities": holdout_probs.tolist(),
        }
    movement = adapter_movement(peft_model, initial)

    peft_model.save_pretrained(fold_dir)
    shutil.rmtree(fold_dir / "trainer", ignore_errors=True)  # checkpoints: the best adapter is saved above
    record = {
        "adapter": str(fold_dir),
        "validation_ids": [str(i) for i in get_column(eval_datasets[PRIMARY_CONDITION].split, ID_COLUMN)],
        "validation_labels": labels[PRIMARY_CONDITION],
        "validation_probabilities": probabilities,
        "validation_serving_logits": serving_logits,
        "metrics": metrics,
        "holdout": holdout,
        "movement": movement,
        "learning_rate": args.learning_rate,
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "epochs_run": trainer.state.epoch,
        "eval_batch_size": args.per_device_eval_batch_size,
        "log_history": trainer.state.log_history,
    }
    return record


def save_fold_record(record: dict, fold_dir: str | os.PathLike) -> None:
    with open(Path(fold_dir) / FOLD_RESULT_FILE, "w") as f:
        json.dump(record, f, indent=1, default=float)


def load_fold_record(fold_dir: str | os.PathLike) -> dict | None:
    path = Path(fold_dir) / FOLD_RESULT_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


# --- the card and the push ------------------------------------------------------------------------------------------


def fold_model_card(*, repo_id: str, base_model: str, base_revision: str | None, fold: int, num_folds: int,
                    metrics: Mapping[str, float], dataset: str, dora: DoraArguments,
                    learning_rate: float) -> str:  # fmt: skip
    """The adapter repo's README.md (`huggingface_hub.ModelCard`): base model, fold, validation metrics under each
    condition, and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    on_hub = not os.path.exists(base_model) and "/" in base_model
    data = ModelCardData(
        library_name="peft", pipeline_tag="image-classification", base_model=base_model if on_hub else None,
        tags=["roadwork", "streetvision", "dora", "peft", "lora"],
        datasets=[dataset] if "/" in dataset and not os.path.exists(dataset) else None,
    )  # fmt: skip
    table = condition_table(metrics, "validation") or "No evaluation was recorded."
    revision = f" at revision `{base_revision}`" if base_revision else ""
    content = f"""---
{data.to_yaml()}
---

# {repo_id.rstrip("/").split("/")[-1]}

A {"DoRA" if dora.use_dora else "LoRA"} adapter (r={dora.lora_r}, alpha={dora.lora_alpha}, targets
{", ".join(f"`{t}`" for t in dora.target_modules)}; heads trained in full: \
{", ".join(f"`{m}`" for m in dora.modules_to_save)})
for the roadwork classifier `{base_model}`{revision}: fold {fold} of {num_folds} stratified folds of the target split
of `{dataset}`, trained on the other {num_folds - 1} folds (learning rate {learning_rate:g}).

## Load

`AutoPeftModel` does not load remote-code bases: load the base, then the adapter.

```python
from peft import PeftModel
from transformers import AutoModelForImageClassification
model = PeftModel.from_pretrained(\
AutoModelForImageClassification.from_pretrained("{base_model}", trust_remote_code=True), "{repo_id}").eval()
```

Inputs are the base's: `AutoImageProcessor.from_pretrained("{base_model}", trust_remote_code=True)`.

## Validation (fold {fold}, rows the adapter did not train on)

`serving` is what a StreetVision miner is scored on: no metadata, the validators' challenge transform.

{table}
"""
    return str(ModelCard(content))


def push_fold(
    fold_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None
) -> str:
    """Uploads the fold's adapter, card and record as its own Hub repo -> the commit id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(fold_dir), allow_patterns=list(ADAPTER_FILES),
        commit_message="roadwork: DoRA fold adapter",
    )  # fmt: skip
    return info.oid


def fold_card_metrics(record: Mapping) -> dict[str, float]:
    return {k: v for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


__all__ = [
    "ADAPTER_FILES",
    "CONDITIONS",
    "DoraArguments",
    "DoraConfigError",
    "FOLDS_FILE",
    "FOLD_RESULT_FILE",
    "adapter_movement",
    "adapter_state",
    "apply_dora",
    "build_fold_datasets",
    "build_folds",
    "check_adapter_targets",
    "fold_card_metrics",
    "fold_model_card",
    "fold_rows",
    "fold_training_arguments",
    "load_base_model",
    "load_fold_record",
    "predict_logits",
    "prepare_folds",
    "push_fold",
    "resolve_revision",
    "row_ids",
    "save_fold_record",
    "train_fold",
]
