"""Ablations from the feature cache: train the head with each component switched off in turn, over several seeds.

    python -m roadwork_training.ablate --config configs/quickstart.yaml --seeds 3 --output_dir outputs/ablations
    python -m roadwork_training.ablate --config configs/base.yaml --seeds 5 --feature_cache /data/features \
        --output_dir out

The backbone runs once (the feature cache, reused by later runs); every (ablation, seed) trains a fresh head from
the cached features for --num_train_epochs with the YAML's optimisation settings and evaluates the final head on the
target split (--test_split) under the `serving` (validator challenge transform, no metadata) and `metadata`
conditions. Writes ablations.md, ablations.json and ablations.png (mean +- std over seeds, with error bars) to
--output_dir. Segmentation masks are not cached, so the segmentation loss is not among the ablations.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import PartialState

from data_collator import RoadworkDataCollator, RoadworkViewAugmenter
from data_collator.metadata import clean_description
from data_collator.schema import get_column
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor, RoadworkTextEmbedder

from .arguments import RoadworkArgumentParser, to_config
from .build import DataArguments, ModelArguments, build_model, gps_sample_weights, load_data
from .cache import train_only_keys
from .feature_cache import FeatureCacheArguments, RoadworkFeatureCache
from .flag_groups import AugmentationArguments, GPSConfigArguments, SyntheticArguments
from .head_training import HeadTrainingSettings, evaluate_conditions, train_head
from .quality import PROBE_224, PROBE_TILE_MAX, PROBE_VIEW, QualityData, fit_probe


logger = logging.getLogger("roadwork.ablate")

REPORTED_CONDITIONS = ("serving", "metadata")


@dataclass(frozen=True)
class Ablation:
    """One component switched off: RoadworkConfig overrides and/or data-side changes."""

    name: str
    description: str
    overrides: tuple = ()  # (field, value) pairs of RoadworkConfig
    gps_weighting: bool = True
    metadata_dropout: bool = True
    keep_views: tuple | None = None  # views of the cached features the head sees
    kind: str = "model"  # or a linear probe instead of a head: quality.PROBE_VIEW / quality.PROBE_224


ABLATIONS = (
    Ablation("full", "every component on (the reference)"),
    Ablation("no_view_pruning", "all views reach the attention stack (use_view_pruning=False)",
             (("use_view_pruning", False),)),
    Ablation("no_pyramid", "no multi-scale pyramid (use_pyramid=False)", (("use_pyramid", False),)),
    Ablation("no_attention_gate", "plain attention, no sigmoid output gate (use_attention_gate=False)",
             (("use_attention_gate", False),)),
    Ablation("mean_pooling", "mean over views instead of GAFM (use_view_fusion=False)", (("use_view_fusion", False),)),
    Ablation("no_metadata", "no metadata encoder (use_metadata=False)", (("use_metadata", False),)),
    Ablation("no_consistency_loss", "view-consistency loss weight 0", (("consistency_loss_weight", 0.0),)),
    Ablation("no_weather_loss", "weather loss weight 0", (("weather_loss_weight", 0.0),)),
    Ablation("no_gps_weighting", "uniform sampling instead of GPS weighting", gps_weighting=False),
    Ablation("no_metadata_dropout", "metadata_dropout = metadata_field_dropout = 0", metadata_dropout=False),
    Ablation("global_view_only", "the global view's features alone (num_views=1, no pruning)",
             (("num_views", 1), ("use_view_pruning", False)), keep_views=(0,)),
    Ablation("no_global_linear_path", "no linear path from the global view to the logits "
             "(use_global_linear_path=False)", (("use_global_linear_path", False),)),
    Ablation("global_linear_path", "with the linear path from the global view to the logits, trained jointly "
             "(use_global_linear_path=True, global_linear_path_init='joint')",
             (("use_global_linear_path", True), ("global_linear_path_init", "joint"))),
    Ablation("probe_floor", "with the linear path fitted as a frozen probe after training, head + probe "
             "(use_global_linear_path=True, global_linear_path_init='probe'; no validation choice here)",
             (("use_global_linear_path", True), ("global_linear_path_init", "probe"))),
    Ablation("tile_max_floor", "the probe floor reading the global view and the tiles' element-wise max, head + "
             "probe (global_linear_path_input='global+tile_max'; no validation choice here)",
             (("use_global_linear_path", True), ("global_linear_path_init", "probe"),
              ("global_linear_path_input", "global+tile_max"))),
    Ablation("tile_max_token", "the tiles' element-wise max as one more token of the attention stack "
             "(use_tile_max_token=True)", (("use_tile_max_token", True),)),
    Ablation("view_detector", "with the per-view detector, supervised by the views' mask coverage where rows have "
             "masks, its most confident view added to the Roadwork logit (use_view_detector=True)",
             (("use_view_detector", True),)),
    Ablation(PROBE_VIEW, "no head: a linear probe on the global view at the model's view size (cached view 0); "
             "metadata column = clean images", kind=PROBE_VIEW),
    Ablation(PROBE_224, "no head: a linear probe on the global view at 224 px; metadata column = clean images",
             kind=PROBE_224),
    Ablation(PROBE_TILE_MAX, "no head: a linear probe on the global view and the tiles' element-wise max at the "
             "model's view size (the tile-max floor alone); metadata column = clean images", kind=PROBE_TILE_MAX),
)  # fmt: skip
ABLATION_NAMES = tuple(a.name for a in ABLATIONS)


@dataclass
class AblationArguments:
    seeds: int = field(
        default=3, metadata={"help": "Seeds per ablation (seed, seed+1, ...); the table shows mean +- std."}
    )
    ablations: list[str] = field(
        default_factory=lambda: list(ABLATION_NAMES),
        metadata={"help": f"Which rows to run, in order (default all): {', '.join(ABLATION_NAMES)}."},
    )
    output_dir: str = field(default="outputs/ablations", metadata={"help": "Where the table, JSON and PNG go."})
    gps_weighting: bool = field(
        default=True,
        metadata={"help": "GPS-weighted sampling in the reference (the no_gps_weighting row turns it off)."},
    )
    allow_weak_gps_weighting: bool = field(
        default=False, metadata={"help": "Run even if the GPS weighting misses its criteria (--gps_min_*)."}
    )
    num_train_epochs: int = field(default=4, metadata={"help": "Epochs of head training per run."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(
        default=5, metadata={"help": "Linear warm-up steps before the cosine decay; below 1, a share of all steps."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: none)."})
    seed: int = field(default=42, metadata={"help": "First seed; it also seeds the data split and the cached passes."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even when a GPU is available."})

    def __post_init__(self):
        unknown = [name for name in self.ablations if name not in ABLATION_NAMES]
        if unknown:
            raise ValueError(f"--ablations {unknown} unknown; choose from {', '.join(ABLATION_NAMES)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")


def parse_args(argv: list[str] | None = None):
    own = {"seed", "use_cpu", "output_dir", "num_train_epochs", "per_device_train_batch_size", "learning_rate",
           "per_device_eval_batch_size", "weight_decay", "warmup_steps", "max_grad_norm", "gps_weighting",
           "allow_weak_gps_weighting"}  # fmt: skip
    yaml_only = {k for k in train_only_keys() if not k.startswith("gps_") or k == "gps_weighting"} - own
    parser = RoadworkArgumentParser(
        (ModelArguments, DataArguments, SyntheticArguments, AugmentationArguments, GPSConfigArguments,
         FeatureCacheArguments, AblationArguments),
        description=__doc__, yaml_only_keys=yaml_only,
    )  # fmt: skip
    model, data, synthetic, augmentation, gps, cache, ablation = parser.parse(argv)
    if not cache.feature_cache:
        cache.feature_cache = os.path.join(ablation.output_dir, "feature_cache")
    return (
        model,
        data,
        to_config(synthetic),
        to_config(augmentation),
        to_config(gps, seed=ablation.seed),
        cache,
        ablation,
    )


def ablated_model(base_config, ablation: Ablation, seed: int) -> RoadworkForImageClassification:
    """A fresh model (head initialised from `seed`) with the ablation's config overrides. Its backbone is never run
    (the features come from the cache), so it keeps its random initialisation."""
    config = copy.deepcopy(base_config)
    for name, value in ablation.overrides:
        setattr(config, name, value)
    config.validate_roadwork()
    torch.manual_seed(seed)
    return RoadworkForImageClassification(config)


def summarise(runs: list[dict]) -> list[dict]:
    """Per ablation: mean and std (ddof 0 for one seed) of each reported condition's MCC, with the seed count."""
    rows = []
    for name in dict.fromkeys(run["ablation"] for run in runs):
        mine = [run for run in runs if run["ablation"] == name]
        row = {"ablation": name, "description": mine[0]["description"], "seeds": len(mine)}
        extra = [k.removesuffix("_mcc") for k in mine[0] if k.endswith("_mcc") and k.removesuffix("_mcc") not in
                 REPORTED_CONDITIONS]  # fmt: skip
        for condition in (*REPORTED_CONDITIONS, *extra):
            values = np.array([run.get(f"{condition}_mcc", np.nan) for run in mine], dtype=float)
            row[f"{condition}_mcc_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            row[f"{condition}_mcc_std"] = float(np.nanstd(values, ddof=1 if len(values) > 1 else 0))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], data_line: str) -> str:
    extra = [k.removesuffix("_mcc_mean") for k in rows[0] if k.endswith("_serving_mcc_mean")] if rows else []
    lines = [
        f"Test-split MCC (final epoch), mean +- std over seeds. {data_line}",
        "",
        "| ablation | serving MCC | metadata MCC | " + "".join(f"{e.removesuffix('_serving')} serving MCC | "
                                                         for e in extra) + "seeds | what is switched off |",
        "|---|---|---|" + "---|" * len(extra) + "---|---|",
    ]  # fmt: skip
    for row in rows:
        cells = [f"{row[f'{c}_mcc_mean']:.3f} +- {row[f'{c}_mcc_std']:.3f}" for c in (*REPORTED_CONDITIONS, *extra)]
        lines.append(f"| {row['ablation']} | " + " | ".join(cells) + f" | {row['seeds']} | {row['description']} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.2))
    for i, condition in enumerate(REPORTED_CONDITIONS):
        means = [row[f"{condition}_mcc_mean"] for row in rows]
        stds = [row[f"{condition}_mcc_std"] for row in rows]
        ax.bar(x + (i - 0.5) * width, means, width, yerr=stds, capsize=3, label=f"{condition} MCC")
    ax.set_xticks(x, [row["ablation"] for row in rows], rotation=35, ha="right")
    ax.set_ylabel("MCC (test split)")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    model_args, data_args, synthetic, augmentation, gps, cache_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    state = PartialState(cpu=args.use_cpu)
    os.makedirs(args.output_dir, exist_ok=True)

    # Stage 1: data, the base model, the cache (the backbone runs here, once per image and pass).
    splits, vocabularies = load_data(data_args, args.seed, synthetic)
    base = build_model(model_args, vocabularies, splits["train"]).to(state.device).eval()
    processor = RoadworkImageProcessor.from_model_config(base.config)
    cache = RoadworkFeatureCache.from_arguments(cache_args, base, processor, accelerator=state)
    augmenter = RoadworkViewAugmenter(augmentation)
    target = splits["test"]
    weights = None
    if args.gps_weighting:
        weights = gps_sample_weights(gps, splits["train"], target, None, allow_weak=args.allow_weak_gps_weighting)
    embedder = None
    if data_args.use_text_embeddings and base.config.use_metadata and base.config.use_text:
        embedder = RoadworkTextEmbedder.get(base.config.text_encoder_name)
        for split in (splits["train"], target):
            embedder([clean_description(text) for text in get_column(split, "scene_description")])
    collator = RoadworkDataCollator(text_embedder=embedder, text_embed_dim=base.config.text_embed_dim)
    quality_data = QualityData(cache, splits, base, processor, args.seed)  # the probes and the hard splits

    # Stage 2: every (ablation, seed), heads trained from the cache.
    runs = []
    chosen = [a for a in ABLATIONS if a.name in args.ablations]
    for ablation in chosen:
        if ablation.name == "no_weather_loss" and not base.config.use_weather_head:
            logger.info("skipping no_weather_loss: the weather head is off for this data")
            continue
        if ablation.kind != "model":
            for offset in range(args.seeds):
                seed = args.seed + offset
                started_probe = time.perf_counter()
                mcc = fit_probe(quality_data, ablation.kind, range(len(splits["train"])), seed,
                                ["test", *data_args.extra_eval_splits], cache.extractor.cache_dir,
                                clean_splits=["test"], serving_augmentation=data_args.serving_augmentation,
                                augmenter=augmenter)  # fmt: skip
                run = {"ablation": ablation.name, "description": ablation.description, "seed": seed,
                       "train_seconds": time.perf_counter() - started_probe, "serving_mcc": mcc["test"],
                       "metadata_mcc": mcc["test/clean"]}  # fmt: skip
                run.update({f"{name}_serving_mcc": mcc[name] for name in data_args.extra_eval_splits})
                runs.append(run)
            continue
        view_cache = RoadworkFeatureCache(cache.extractor, cache.num_passes, keep_views=ablation.keep_views)
        dropout = dict(
            metadata_dropout=data_args.metadata_dropout, metadata_field_dropout=data_args.metadata_field_dropout
        )
        if not ablation.metadata_dropout:
            dropout = dict(metadata_dropout=0.0, metadata_field_dropout=0.0)
        train_dataset = view_cache.train_dataset(
            splits["train"], processor, base.config, augmenter, args.seed,
            serving_augmentation=data_args.serving_augmentation, **dropout,
        )  # fmt: skip
        conditions = view_cache.condition_datasets(target, processor, base.config, args.seed)
        conditions = {c: conditions[c] for c in REPORTED_CONDITIONS}
        for offset in range(args.seeds):
            seed = args.seed + offset
            model = ablated_model(base.config, ablation, seed).to(state.device)
            settings = HeadTrainingSettings(
                num_train_epochs=args.num_train_epochs, per_device_train_batch_size=args.per_device_train_batch_size,
                per_device_eval_batch_size=args.per_device_eval_batch_size, learning_rate=args.learning_rate,
                weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
                seed=seed,
            )  # fmt: skip
            times = train_head(model, train_dataset, collator, settings, weights if ablation.gps_weighting else None)
            metrics = evaluate_conditions(model, conditions, collator, args.per_device_eval_batch_size)
            run = {"ablation": ablation.name, "description": ablation.description, "seed": seed,
                   "train_seconds": float(sum(times))}  # fmt: skip
            for condition, values in metrics.items():
                run[f"{condition}_mcc"] = float(values.get("mcc", float("nan")))
            for name in data_args.extra_eval_splits:  # the hard splits: serving condition only
                hard = {"serving": quality_data.serving_dataset(name, model.config, ablation.keep_views)}
                metrics = evaluate_conditions(model, hard, collator, args.per_device_eval_batch_size)
                run[f"{name}_serving_mcc"] = float(metrics["serving"].get("mcc", float("nan")))
            runs.append(run)
            logger.info("%s seed %d: serving MCC %.3f, metadata MCC %.3f (%.1f s)", ablation.name, seed,
                        run["serving_mcc"], run["metadata_mcc"], run["train_seconds"])  # fmt: skip

    # Stage 3: the table, JSON and chart.
    rows = summarise(runs)
    labels = np.asarray(get_column(target, "label"))
    backbone_label = (
        (model_args.backbone_config and "random (backbone_config)")
        or model_args.model_name_or_path
        or model_args.backbone
    )
    data_line = (
        f"Data: {data_args.dataset}, trained on {len(splits['train'])} rows, evaluated on the {data_args.test_split} "
        f"split ({len(target)} rows, {int((labels == 1).sum())} roadwork / {int((labels == 0).sum())} none); backbone "
        f"{backbone_label}, "
        f"{base.config.num_views} views at {base.config.view_size} px, backbone_pooling "
        f"{base.config.backbone_pooling}; {args.num_train_epochs} epochs, "
        f"{cache.num_passes} cached augmentation pass(es); seeds {args.seed}..{args.seed + args.seeds - 1}."
    )
    table = markdown_table(rows, data_line)
    with open(os.path.join(args.output_dir, "ablations.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "ablations.json"), "w") as f:
        json.dump({"data": data_line, "rows": rows, "runs": runs}, f, indent=2)
    bar_chart(rows, os.path.join(args.output_dir, "ablations.png"), data_line[:160])
    print(table, flush=True)
    print(
        f"ablations: {len(runs)} runs in {time.time() - started:.0f} s; {os.path.abspath(args.output_dir)}", flush=True
    )
    return rows


if __name__ == "__main__":
    main()


__all__ = ["ABLATIONS", "Ablation", "AblationArguments", "ablated_model", "main", "markdown_table", "summarise"]
