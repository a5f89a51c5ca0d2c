"""Prediction with one model, a model with DoRA adapters, or an ensemble, with test-time augmentation.

The backbone runs once per image and TTA variant for every member that shares it: members are grouped by their
backbone (`backbone_pass_key`: the feature cache's exact weight hash `backbone_fingerprint`, the backbone config
and autocast dtype, so members from one base checkpoint, and different heads trained on the same frozen backbone,
share one pass); `RoadworkModel.extract_view_features` runs once per group and every
member's head reads the features through `forward(view_features=...)`. Adapters are loaded with
`peft.PeftModel.from_pretrained` / `load_adapter` onto one copy of their base and switched with `set_adapter`; an
adapter that touches the backbone is refused, since the shared pass would ignore it.

Ensemble files (`--ensemble FILE.json`, the format `finetune_dora.py` writes; a hand-written one works) are read
by `roadwork_training.ensemble.load_ensemble`, which documents the format and the combine rules.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_collator.metadata import RoadworkMetadataParser, collate_metadata, null_metadata
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor, RoadworkTextEmbedder

from .ensemble import RoadworkEnsembleMember
from .feature_cache import backbone_fingerprint
from .predict_inputs import (
    GROUP_COLUMNS,
    RoadworkInputError,
    RoadworkPredictionDataset,
    RoadworkPredictionInput,
    collate_predictions,
    normalize_on_device,
)
from .tta import (
    FOODS_KEEP_FRACTION,
    RoadworkOODStats,
    find_ood_stats,
    fit_ood_stats,
    fuse_tta,
    load_ood_stats,
    save_ood_stats,
)


logger = logging.getLogger(__name__)


# --- loading members --------------------------------------------------------------------------------------------


@dataclass
class RoadworkLoadedMember:
    spec: RoadworkEnsembleMember
    model: RoadworkForImageClassification  # the base model; with adapters, LoRA layers are injected in place
    peft_model: Any = None  # the PeftModel wrapping `model` when its base has adapters
    adapter_name: str | None = None
    ood_stats: RoadworkOODStats | None = None

    def forward(self, **inputs):
        if self.peft_model is None:
            return self.model(**inputs)
        if self.adapter_name is None:
            with self.peft_model.disable_adapter():
                return self.model(**inputs)
        self.peft_model.set_adapter(self.adapter_name)
        return self.model(**inputs)


@dataclass
class RoadworkBackboneGroup:
    """Members whose backbone and views are identical: one backbone pass serves them all."""

    extractor: Any  # a RoadworkModel: .extract_view_features
    processor: RoadworkImageProcessor
    processor_index: int
    members: list[int] = field(default_factory=list)  # indices into the member list


def backbone_pass_key(model: RoadworkForImageClassification) -> str:
    """
    What decides a backbone pass's features besides the views: the backbone's weights (`backbone_fingerprint`, the
    feature cache's exact hash), its config (e.g. RoPE or LayerNorm settings, which the weights do not show) and the
    autocast dtype it runs in. Members whose keys (and processors) agree share one pass.
    """
    backbone_config = getattr(model.config, "backbone_config", None)
    described = {
        "weights": backbone_fingerprint(model),
        "config": backbone_config.to_dict() if hasattr(backbone_config, "to_dict") else backbone_config,
        "autocast": getattr(model.config, "backbone_autocast_dtype", None),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _check_adapter_outside_backbone(peft_model: Any, adapter: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    touched = [name for name, module in peft_model.named_modules()
               if isinstance(module, BaseTunerLayer) and ".roadwork.backbone." in f".{name}."]  # fmt: skip
    if touched:
        raise ValueError(
            f"adapter {adapter} adapts backbone modules ({touched[0]}, ...); predict.py shares one backbone pass "
            "between members and supports adapters on the head only (target_modules outside roadwork.backbone)"
        )


def load_members(
    members: Sequence[RoadworkEnsembleMember], device: torch.device, need_ood_stats: bool = False
) -> tuple[list[RoadworkLoadedMember], list[RoadworkBackboneGroup]]:
    """Loads every base checkpoint once, its adapters onto it, and groups members by shared backbone and views."""
    bases: dict[tuple[str, str | None], RoadworkForImageClassification] = {}
    peft_models: dict[tuple[str, str | None], Any] = {}
    loaded = []
    for index, spec in enumerate(members):
        key = (spec.model, spec.model_revision)
        if key not in bases:
            logger.info("loading %s%s", spec.model, f" @ {spec.model_revision}" if spec.model_revision else "")
            kwargs = {"revision": spec.model_revision} if spec.model_revision else {}
            bases[key] = RoadworkForImageClassification.from_pretrained(spec.model, **kwargs).eval()
        base = bases[key]
        adapter_name = None
        if spec.adapter:
            from peft import PeftModel

            adapter_name = f"member{index}"
            if key not in peft_models:
                peft_models[key] = PeftModel.from_pretrained(base, spec.adapter, adapter_name=adapter_name).eval()
            else:
                peft_models[key].load_adapter(spec.adapter, adapter_name=adapter_name)
            _check_adapter_outside_backbone(peft_models[key], spec.adapter)
        loaded.append(RoadworkLoadedMember(spec=spec, model=base, adapter_name=adapter_name))
    for member in loaded:
        member.peft_model = peft_models.get((member.spec.model, member.spec.model_revision))
        if need_ood_stats:
            path = find_ood_stats(member.spec.adapter, member.spec.model, revision=member.spec.model_revision)
            if path is None:
                raise SystemExit(
                    f"--tta foods needs {member.spec.adapter or member.spec.model}/ood_stats.safetensors (the "
                    f"training set's vision statistics); write it with: python predict.py --model {member.spec.model}"
                    f"{' --adapter ' + member.spec.adapter if member.spec.adapter else ''} --fit_ood_stats "
                    "--inputs DATASET --split train"
                )
            member.ood_stats = load_ood_stats(path)

    groups: dict[tuple[str, str], RoadworkBackboneGroup] = {}
    processors: list[RoadworkImageProcessor] = []
    processor_keys: list[str] = []
    shared_backbones: dict[str, Any] = {}
    for key, base in bases.items():
        processor = RoadworkImageProcessor.from_model_config(base.config)
        processor_key = processor.to_json_string()
        pass_key = backbone_pass_key(base)
        if pass_key in shared_backbones:
            base.roadwork.backbone = shared_backbones[pass_key]  # one copy in memory; the weights are equal
        else:
            shared_backbones[pass_key] = base.roadwork.backbone
        base.to(device)
        if processor_key not in processor_keys:
            processor_keys.append(processor_key)
            processors.append(processor)
        group_key = (pass_key, processor_key)
        if group_key not in groups:
            groups[group_key] = RoadworkBackboneGroup(base.roadwork, processor, processor_keys.index(processor_key))
        group = groups[group_key]
        group.members.extend(i for i, m in enumerate(loaded) if (m.spec.model, m.spec.model_revision) == key)
    logger.info("%d member(s), %d backbone pass(es) per image and variant", len(loaded), len(groups))
    return loaded, list(groups.values())


def group_processors(groups: Sequence[RoadworkBackboneGroup]) -> list[RoadworkImageProcessor]:
    """The distinct processors, indexed by `group.processor_index`."""
    by_index = {group.processor_index: group.processor for group in groups}
    return [by_index[i] for i in range(len(by_index))]


# --- metadata ----------------------------------------------------------------------------------------------------


def metadata_tensors(
    inputs: Sequence[RoadworkPredictionInput], config: Any, use_metadata: bool
) -> dict[str, torch.Tensor | None]:
    """
    The model's metadata arguments for every input (N rows): parsed from dataset rows with the config's
    vocabularies, descriptions embedded once each with the config's text encoder; all missing for files and
    without `use_metadata` (serving sends none).
    """
    count = len(inputs)
    if not use_metadata or not getattr(config, "use_metadata", False) or all(i.row is None for i in inputs):
        return {**null_metadata(count), "text_embeds": None}
    parser = RoadworkMetadataParser.from_vocabularies(config)
    encoded = []
    null = {"gps": np.full(2, np.nan, dtype=np.float32), "weather_ids": 0, "daytime_ids": 0, "scene_ids": 0,
            "weather_labels": -100, "description": None}  # fmt: skip
    for item in inputs:
        encoded.append(parser(item.row) if item.row is not None else dict(null))
    tensors = collate_metadata(encoded)
    descriptions = [e["description"] for e in encoded]
    text_embeds = None
    if getattr(config, "use_text", False) and any(d is not None for d in descriptions):
        text_embeds = RoadworkTextEmbedder.get(config.text_encoder_name)(descriptions).float()
    parser.report.log_summary()
    return {**tensors, "text_embeds": text_embeds}


def _member_inputs(metadata: dict, indices: list[int], repeat: int, device: torch.device) -> dict:
    """A batch's metadata, each row repeated `repeat` times (once per TTA variant), on `device`."""
    out = {}
    for name in ("gps", "weather_ids", "daytime_ids", "scene_ids", "text_embeds"):
        value = metadata.get(name)
        if value is not None:
            out[name] = value[indices].repeat_interleave(repeat, dim=0).to(device)
    return out


# --- the prediction loop ------------------------------------------------------------------------------------------


@dataclass
class RoadworkPredictionResult:
    """Per predicted input (in input order): fused probability, per-member probabilities; errors of the rest."""

    indices: list[int]
    probabilities: np.ndarray  # (N,)
    member_probabilities: np.ndarray  # (N, M)
    errors: list[RoadworkInputError]
    vision_embeds: np.ndarray | None = None  # (N, C) of member 0, variant 0, when asked for
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def run_prediction(
    inputs: Sequence[RoadworkPredictionInput],
    members: Sequence[RoadworkLoadedMember],
    groups: Sequence[RoadworkBackboneGroup],
    *,
    device: torch.device,
    tta: str = "none",
    serving: bool = False,
    use_metadata: bool = True,
    seed: int = 42,
    batch_size: int = 8,
    num_workers: int = 0,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
    foods_keep_fraction: float = FOODS_KEEP_FRACTION,
    foods_temperature: float = 1.0,
    min_image_size: int | None = None,
    max_image_pixels: int | None = None,
    strict: bool = False,
    collect_embeds: bool = False,
    progress: bool = True,
) -> RoadworkPredictionResult:
    """
    Predicts every input: decode in `num_workers` DataLoader workers, one backbone pass per group for all TTA
    variants of the batch, every member's head, TTA fusion per member (`fuse_tta`), then `combine` (N, M) -> (N,)
    (default: the mean). An input that fails to decode is an error entry (or, with `strict`, stops the run).
    """
    limits = {k: v for k, v in (("min_image_size", min_image_size), ("max_image_pixels", max_image_pixels)) if v}
    dataset = RoadworkPredictionDataset(inputs, group_processors(groups), tta=tta, serving=serving, seed=seed,
                                        **limits)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_predictions,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )  # fmt: skip
    metadata = {}
    for member in members:
        key = id(member.model)
        if key not in metadata:
            metadata[key] = metadata_tensors(inputs, member.model.config, use_metadata and not serving)
    indices, member_rows, embeds_rows, errors = [], [], [], []
    started = time.time()
    bar = tqdm(total=len(dataset), unit="img", desc=f"predicting (tta {tta})", disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            for index, message in batch["errors"]:
                if strict:
                    raise SystemExit(f"--strict: {inputs[index].name}: {message}")
                errors.append(RoadworkInputError(inputs[index].name, message))
            batch_indices = batch["indices"]
            if batch_indices:
                member_probs, embeds = _predict_batch(
                    batch, batch_indices, members, groups, metadata, device, tta, foods_keep_fraction,
                    foods_temperature,
                )  # fmt: skip
                indices.extend(batch_indices)
                member_rows.append(member_probs)
                if collect_embeds:
                    embeds_rows.append(embeds)
            bar.update(len(batch_indices) + len(batch["errors"]))
    bar.close()
    member_probabilities = np.concatenate(member_rows) if member_rows else np.zeros((0, len(members)))
    if combine is None:
        fused = member_probabilities.mean(axis=1) if len(members) else np.zeros(0)
    else:
        fused = combine(member_probabilities)
    return RoadworkPredictionResult(
        indices=indices, probabilities=np.asarray(fused, dtype=np.float64), member_probabilities=member_probabilities,
        errors=errors, vision_embeds=np.concatenate(embeds_rows) if embeds_rows else None,
        seconds=time.time() - started,
    )  # fmt: skip


def _predict_batch(batch, batch_indices, members, groups, metadata, device, tta, keep_fraction, temperature):
    B = len(batch_indices)
    member_probs = np.zeros((B, len(members)))
    first_embeds = None
    for group in groups:
        views = batch["views"][group.processor_index].to(device, non_blocking=True)  # (B, T, V, S, S, 3) uint8
        T = views.shape[1]
        pixel_values = normalize_on_device(views, group.processor).flatten(0, 1)  # (B*T, V, 3, S, S)
        view_features = group.extractor.extract_view_features(pixel_values)  # (B*T, V, D): once for all members
        for m in group.members:
            member = members[m]
            extra = _member_inputs(metadata[id(member.model)], batch_indices, T, device)
            outputs = member.forward(view_features=view_features, **extra)
            probs = outputs.logits.float().softmax(dim=-1)[:, 1].view(B, T)  # (B*T,) -> (B, T)
            embeds = outputs.vision_embeds.float().view(B, T, -1)  # (B*T, C) -> (B, T, C)
            distances = member.ood_stats.distance(embeds) if tta == "foods" else None
            fused = fuse_tta(probs, tta, distances, keep_fraction, temperature)
            member_probs[:, m] = fused.cpu().double().numpy()
            if m == 0:
                first_embeds = embeds[:, 0].cpu().numpy()
    return member_probs, first_embeds


# --- OOD statistics ------------------------------------------------------------------------------------------------


def write_ood_stats(
    model: RoadworkForImageClassification,
    split: Any,
    output_dir: str,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    peft_model: Any = None,
    progress: bool = True,
) -> str:
    """
    Fits the FOODS statistics (mean, shrunk covariance) of `model`'s fused vision vector over the rows of `split`
    (a `datasets.Dataset` of the schema with undecoded images, e.g. the training split) and writes
    `output_dir/ood_stats.safetensors`. The helper train.py can call after training:
    `write_ood_stats(trainer.model, splits["train"], training_args.output_dir)`.
    """
    from data_collator.schema import IMAGE_COLUMN

    device = resolve_device(str(device)) if device is not None else next(model.parameters()).device
    images = split[IMAGE_COLUMN]
    inputs = [RoadworkPredictionInput(f"row-{i}", image=dict(cell), seed_index=i) for i, cell in enumerate(images)]
    spec = RoadworkEnsembleMember(model=getattr(model.config, "_name_or_path", "model") or "model")
    adapter_name = peft_model.active_adapter if peft_model is not None else None
    member = RoadworkLoadedMember(spec, model.eval().to(device), peft_model=peft_model, adapter_name=adapter_name)
    group = RoadworkBackboneGroup(model.roadwork, RoadworkImageProcessor.from_model_config(model.config), 0, [0])
    result = run_prediction(
        inputs, [member], [group], device=device, tta="none", use_metadata=False, batch_size=batch_size,
        num_workers=num_workers, collect_embeds=True, progress=progress,
    )  # fmt: skip
    if result.errors:
        logger.warning("%d row(s) did not decode and are left out of the OOD statistics", len(result.errors))
    if result.vision_embeds is None:
        raise ValueError("no row of the split decoded: cannot fit OOD statistics")
    stats = fit_ood_stats(result.vision_embeds)
    path = save_ood_stats(stats, output_dir)
    logger.info("OOD statistics of %d rows (%d-d, Ledoit-Wolf shrinkage %.3f, ridge %.2e) -> %s",
                stats.num_rows, stats.dim, stats.shrinkage, stats.ridge, path)  # fmt: skip
    return path


# --- outputs -----------------------------------------------------------------------------------------------------


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes a temporary file in the same folder, flushes it to disk, then renames it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(temporary, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def build_records(
    inputs: Sequence[RoadworkPredictionInput], result: RoadworkPredictionResult, member_columns: Sequence[str]
) -> list[dict]:
    """One record per predicted input: input, id, prob_roadwork, label (round(p), 0.5 -> 0), true_label, members,
    and the grouping fields of dataset rows (weather, daytime, scene, city, gps)."""
    records = []
    for position, index in enumerate(result.indices):
        item = inputs[index]
        p = float(result.probabilities[position])
        record = {"input": item.name, "id": None, "prob_roadwork": p, "label": int(round(p)),
                  "true_label": item.label}  # fmt: skip
        for column, value in zip(member_columns, result.member_probabilities[position]):
            record[column] = float(value)
        if item.row is not None:
            record["id"] = item.row.get("id")
            for name, column in GROUP_COLUMNS.items():
                record[name] = item.row.get(column)
            record["gps"] = item.row.get("gps")
        records.append(record)
    return records


def write_predictions(output_dir: str, records: Sequence[dict], member_columns: Sequence[str]) -> list[str]:
    """`predictions.csv` and `predictions.jsonl`, each written atomically; returns their paths."""
    columns = ["input", "id", "prob_roadwork", "label", "true_label", *member_columns]
    extra = [name for name in (*GROUP_COLUMNS, "gps") if any(r.get(name) is not None for r in records)]
    columns += extra
    csv_path = os.path.join(output_dir, "predictions.csv")
    jsonl_path = os.path.join(output_dir, "predictions.jsonl")
    atomic_write(csv_path, _csv_text(columns, records))
    lines = [json.dumps({k: r.get(k) for k in columns}, default=str) for r in records]
    atomic_write(jsonl_path, "".join(line + "\n" for line in lines))
    return [csv_path, jsonl_path]


def write_errors(output_dir: str, errors: Sequence[RoadworkInputError]) -> str:
    """`errors.csv` (`input`, `error`), always written (header only when nothing failed)."""
    path = os.path.join(output_dir, "errors.csv")
    atomic_write(path, _csv_text(["input", "error"], [{"input": e.input, "error": e.error} for e in errors]))
    return path


def member_columns(members: Sequence[RoadworkEnsembleMember]) -> list[str]:
    """One score column per member: `prob_m{k}_{display_name}`."""
    return [f"prob_m{k}_{member.display_name}" for k, member in enumerate(members)]


__all__ = [
    "RoadworkBackboneGroup",
    "RoadworkLoadedMember",
    "RoadworkPredictionResult",
    "atomic_write",
    "backbone_pass_key",
    "build_records",
    "group_processors",
    "load_members",
    "member_columns",
    "metadata_tensors",
    "resolve_device",
    "run_prediction",
    "write_errors",
    "write_ood_stats",
    "write_predictions",
]
