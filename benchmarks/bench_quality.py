"""Quality against the simplest peer: the multi-view model vs its global view alone vs a linear probe.

    python benchmarks/bench_quality.py --config configs/quality_quickstart.yaml --seeds 3
    python benchmarks/bench_quality.py --config configs/quality_quickstart.yaml --train_size 240 --search

On the frozen-backbone feature cache (extracted once, reused), over --seeds seeds, trains the full model, the model
on the global view alone and the linear probes (at the model's view size and at 224 px) on the same training rows,
and prints serving MCC (no metadata, the validators' challenge transform; thresholds round(p)) mean +- std on the
standard test split and the synthetic hard splits (small objects, occlusion, orange distractors). The last line is
JSON: value = full - probe on test_small (the best peer probe; --target_variant names another model than `full`),
target 0.1; the target also needs that model >= the best peer probe on every other split. Post-hoc rows
(--posthoc, on by default) follow the trained ones: per model variant, the mean margin of its seeds' heads
(NAME+seed_ensemble) and each seed thresholded where validation peaks (NAME+validation_threshold), from the saved
logits (quality_logits.npz). --search instead runs the small-data recipe search: one knob at a time from the
--config recipe (SEARCH_SPACE), then the combination of the winners (when two or more knobs won), for the full model
only, selecting on validation serving MCC and reporting test beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate import PartialState


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_collator import RoadworkAugmentationConfig, RoadworkDataCollator, RoadworkViewAugmenter  # noqa: E402
from modeling_roadwork import RoadworkImageProcessor  # noqa: E402
from roadwork_training.arguments import RoadworkArgumentParser, to_config  # noqa: E402
from roadwork_training.build import DataArguments, ModelArguments, build_model, load_data  # noqa: E402
from roadwork_training.cache import train_only_keys  # noqa: E402
from roadwork_training.feature_cache import FeatureCacheArguments, RoadworkFeatureCache  # noqa: E402
from roadwork_training.flag_groups import AugmentationArguments, SyntheticArguments  # noqa: E402
from roadwork_training.head_training import HeadTrainingSettings  # noqa: E402
from roadwork_training.quality import (  # noqa: E402
    HARD_SPLITS,
    MODEL,
    PEER_PROBES,
    POSTHOC_DESCRIPTIONS,
    PROBE_224,
    PROBE_224_NATIVE,
    PROBE_VIEW,
    QUALITY_VARIANT_NAMES,
    HeadRecipe,
    QualityData,
    fit_probe,
    posthoc_description,
    posthoc_runs,
    quality_table,
    stratified_indices,
    summarise_runs,
    train_model_variant,
    variant,
    visible_roadwork_share,
)


logger = logging.getLogger("roadwork.bench_quality")

DEFAULT_VARIANTS = ("full", "full_no_linear_path", "full_linear_path", "global_view_only", PROBE_VIEW, PROBE_224,
                    PROBE_224_NATIVE)  # fmt: skip
TARGET = 0.1

# The small-data search: one knob at a time from the --config recipe; each value is a (recipe field, value) list.
# Model widths move together (hidden 128 = the cache quickstart's). A value that is the recipe's own is skipped.
SEARCH_SPACE = {
    "width": {"64": {"hidden_size": 64, "fusion_hidden_size": 64, "classifier_hidden_size": 32},
              "256": {"hidden_size": 256, "fusion_hidden_size": 256, "classifier_hidden_size": 128}},
    "depth": {"0": {"num_attention_layers": 0}, "1": {"num_attention_layers": 1}, "4": {"num_attention_layers": 4}},
    "dropout": {"0.0": {"hidden_dropout": 0.0, "attention_dropout": 0.0},
                "0.1": {"hidden_dropout": 0.1, "attention_dropout": 0.1},
                "0.5": {"hidden_dropout": 0.5, "attention_dropout": 0.5}},
    "weight_decay": {"0.0": {"weight_decay": 0.0}, "0.1": {"weight_decay": 0.1}},
    "learning_rate": {"3e-4": {"learning_rate": 3e-4}, "3e-3": {"learning_rate": 3e-3}},
    "epochs": {"8": {"num_train_epochs": 8}, "16": {"num_train_epochs": 16}},
    "early_stopping": {"off": {"early_stopping": False}, "on": {"early_stopping": True}},
    "augmentation": {"none": {"augmentation_strength": "none"}, "heavy": {"augmentation_strength": "heavy"}},
    "serving_augmentation": {"0.0": {"serving_augmentation": 0.0}, "0.5": {"serving_augmentation": 0.5},
                             "1.0": {"serving_augmentation": 1.0}},
}  # fmt: skip
SETTINGS_FIELDS = {f.name for f in dataclasses.fields(HeadTrainingSettings)}


@dataclass
class QualityArguments:
    seeds: int = field(
        default=3, metadata={"help": "Seeds per variant (seed, seed+1, ...): head init and data order."}
    )
    variants: list[str] = field(
        default_factory=lambda: list(DEFAULT_VARIANTS),
        metadata={"help": f"Contenders, in order: {', '.join(QUALITY_VARIANT_NAMES)}."},
    )
    eval_splits: list[str] = field(
        default_factory=lambda: ["test", *HARD_SPLITS],
        metadata={"help": "Splits scored under the serving condition (the hard ones need --synthetic_num_hard_test; "
                  "'validation' is the share held out of train, which early stopping selects on)."},  # fmt: skip
    )
    train_size: int | None = field(
        default=None,
        metadata={"help": "Train on a seeded, stratified subset of this many training rows (all: unset)."},
    )
    search: bool = field(default=False, metadata={"help": "Run the small-data recipe search instead (SEARCH_SPACE)."})
    search_knobs: list[str] = field(
        default_factory=lambda: list(SEARCH_SPACE),
        metadata={"help": f"Knobs the search varies, in order (default all): {', '.join(SEARCH_SPACE)}. Each "
                  "augmentation strength extracts its own cached passes of the train split (slow on a CPU)."},
    )  # fmt: skip
    output_dir: str = field(default="outputs/bench_quality", metadata={"help": "Where quality.md/json (search.*) go."})
    num_train_epochs: int = field(default=4, metadata={"help": "Epochs of head training per run."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(
        default=5, metadata={"help": "Linear warm-up steps before the cosine decay; below 1, a share of all steps."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: none)."})
    early_stopping: bool = field(
        default=True,
        metadata={"help": "Keep the epoch with the best validation serving MCC (and stop early with "
                  "--early_stopping_patience), and pick the probe floor's head / head+probe / probe on validation, as "
                  "train.py does. false: the final epoch, and a floor model is head + probe with no pick."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "With --early_stopping: stop after this many epochs without improvement."}
    )
    data_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the training order, the same for every seed (as TrainingArguments.data_seed), so "
                  "the seeds' heads differ by initialisation and dropout alone (unset: each seed's own)."},
    )  # fmt: skip
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "Keep an exponential moving average of the head's weights with this decay per step and "
                  "validate, keep and score it instead of the last step's weights (unset: off)."},
    )  # fmt: skip
    probe_c: float = field(default=1.0, metadata={"help": "Inverse L2 strength of the probes' logistic regression."})
    seed: int = field(
        default=42, metadata={"help": "First seed; it also seeds the data split and the serving passes."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even when a GPU is available."})
    target_variant: str = field(
        default="full",
        metadata={"help": "The variant the JSON line compares with the best peer probe (e.g. full_view_detector, or "
                  "a post-hoc row such as full+seed_ensemble)."},
    )  # fmt: skip
    posthoc: bool = field(
        default=True,
        metadata={"help": "After the table's trained rows, two post-hoc rows per model variant from its saved serving "
                  "logits, with no training: NAME+seed_ensemble (the mean Roadwork margin of its --seeds heads, "
                  "thresholded at 0; needs 2 seeds) and NAME+validation_threshold (each seed thresholded where its "
                  "validation serving MCC peaks; needs 'validation' in --eval_splits, and its own validation column "
                  "is then chosen on, so optimistic). The logits go to quality_logits.npz. Never peers."},
    )  # fmt: skip

    def __post_init__(self):
        for name in self.variants:
            variant(name)
        base, _, kind = self.target_variant.partition("+")
        variant(base)
        if kind and kind not in POSTHOC_DESCRIPTIONS:
            raise ValueError(f"--target_variant {self.target_variant!r}: after '+' choose from "
                             f"{', '.join(POSTHOC_DESCRIPTIONS)}")  # fmt: skip
        unknown = [k for k in self.search_knobs if k not in SEARCH_SPACE]
        if unknown:
            raise ValueError(f"--search_knobs {unknown} unknown; choose from {', '.join(SEARCH_SPACE)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")


def parse_args(argv=None):
    own = {f.name for f in dataclasses.fields(QualityArguments)}
    parser = RoadworkArgumentParser(
        (ModelArguments, DataArguments, SyntheticArguments, AugmentationArguments, FeatureCacheArguments,
         QualityArguments),
        description=__doc__, yaml_only_keys=train_only_keys() - own,
    )  # fmt: skip
    model, data, synthetic, augmentation, cache, args = parser.parse(argv)
    if not cache.feature_cache:
        cache.feature_cache = os.path.join(args.output_dir, "feature_cache")
    return model, data, to_config(synthetic), to_config(augmentation), cache, args


def recipe_from(
    args: QualityArguments, augmentation: RoadworkAugmentationConfig, data_args, changes=None
) -> HeadRecipe:
    """The --config recipe, with `changes` (a SEARCH_SPACE entry) applied."""
    changes = dict(changes or {})
    settings = HeadTrainingSettings(**{k: getattr(args, k) for k in SETTINGS_FIELDS if hasattr(args, k)})
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if k in SETTINGS_FIELDS})
    strength = changes.pop("augmentation_strength", augmentation.strength)
    serving_augmentation = changes.pop("serving_augmentation", data_args.serving_augmentation)
    augmenter = RoadworkViewAugmenter(dataclasses.replace(augmentation, strength=strength))
    overrides = {k: v for k, v in changes.items() if k not in SETTINGS_FIELDS and k != "early_stopping"}
    return HeadRecipe(
        model_overrides=overrides, settings=settings, augmenter=augmenter if augmenter.enabled else None,
        early_stopping=changes.get("early_stopping", args.early_stopping),
        metadata_dropout=data_args.metadata_dropout, metadata_field_dropout=data_args.metadata_field_dropout,
        serving_augmentation=serving_augmentation,
    )  # fmt: skip


def run_variants(data, base_config, recipe, rows, args, names, collator, device, label=None,
                 logits: dict | None = None) -> list[dict]:  # fmt: skip
    """Every variant over the seeds; `logits`, when given, receives (variant, seed) -> split -> (logits, labels)."""
    runs = []
    for name in names:
        chosen = variant(name)
        for offset in range(args.seeds):
            seed = args.seed + offset
            started = time.perf_counter()
            if chosen.kind == MODEL:
                kept = logits.setdefault((label or name, seed), {}) if logits is not None else None
                mcc = train_model_variant(
                    data, base_config, chosen, recipe, rows, seed, args.eval_splits, collator, device, kept
                )
            else:
                mcc = fit_probe(
                    data, chosen.kind, rows, seed, args.eval_splits, data.cache.extractor.cache_dir, args.probe_c,
                    serving_augmentation=recipe.serving_augmentation, augmenter=recipe.augmenter,
                )
            runs.append({"variant": label or name, "seed": seed, "mcc": mcc, "seconds": time.perf_counter() - started})
            logger.info("%s seed %d: %s (%.1f s)", label or name, seed,
                        ", ".join(f"{k} {v:.3f}" for k, v in mcc.items()), runs[-1]["seconds"])  # fmt: skip
    return runs


def is_base_recipe(changes: dict, base_config, args, augmentation, data_args) -> bool:
    """Whether every field that `changes` sets already has that value in the --config recipe."""
    current = {"augmentation_strength": augmentation.strength, "serving_augmentation": data_args.serving_augmentation,
               "early_stopping": args.early_stopping}  # fmt: skip
    for name, value in changes.items():
        if name in current:
            here = current[name]
        elif name in SETTINGS_FIELDS:
            here = getattr(args, name)
        else:
            here = getattr(base_config, name)
        if here != value:
            return False
    return True


SEARCH_SPLITS = ("validation", "test")  # the search selects on validation and reports test beside it


def search(data, base_config, args, augmentation, data_args, rows, collator, device) -> tuple[list[dict], dict]:
    """
    One knob at a time from the base recipe, then the winners together (when more than one knob won); full model. A
    value wins when its mean validation serving MCC beats the best so far (selection never sees the test split,
    which is reported beside it).
    Returns the runs and, per row label, what that row changed from the recipe (the table's "what it is" column).
    """
    args = dataclasses.replace(args, eval_splits=list(SEARCH_SPLITS))
    runs = run_variants(data, base_config, recipe_from(args, augmentation, data_args), rows, args, ["full"], collator,
                        device, label="base")  # fmt: skip
    descriptions = {"base": "the --config recipe, full model"}
    base_score = summarise_runs(runs, ["validation"], key="variant")[0]["validation_mean"]
    winners, winning_knobs = {}, []
    for knob in args.search_knobs:
        values = SEARCH_SPACE[knob]
        best_label, best_score = None, base_score
        for value, changes in values.items():
            if is_base_recipe(changes, base_config, args, augmentation, data_args):
                logger.info("search: %s=%s is the recipe's own value: skipped", knob, value)
                continue
            label = f"{knob}={value}"
            descriptions[label] = "recipe with " + ", ".join(f"{k}={v}" for k, v in changes.items())
            recipe = recipe_from(args, augmentation, data_args, changes)
            mine = run_variants(data, base_config, recipe, rows, args, ["full"], collator, device, label=label)
            runs += mine
            score = summarise_runs(mine, ["validation"], key="variant")[0]["validation_mean"]
            if score > best_score:
                best_label, best_score = value, score
        if best_label is not None:
            winners.update(values[best_label])
            winning_knobs.append(f"{knob}={best_label}")
            logger.info("search: %s=%s wins (%.3f vs base %.3f)", knob, best_label, best_score, base_score)
    if len(winning_knobs) == 1:
        # One winner: the combination is that winner's own row, already trained with the same seeds.
        logger.info("search: only %s won, so its row is the combination", winning_knobs[0])
    elif winners:
        recipe = recipe_from(args, augmentation, data_args, winners)
        label = "combined " + json.dumps(winners, sort_keys=True)
        descriptions[label] = "every knob's winning value together"
        runs += run_variants(data, base_config, recipe, rows, args, ["full"], collator, device, label=label)
    return runs, descriptions


def add_posthoc(logits: dict, args, descriptions: dict) -> list[dict]:
    """The post-hoc runs of every model variant (see --posthoc); saves the logits they read as quality_logits.npz."""
    arrays, runs = {}, []
    for name in dict.fromkeys(n for n, _ in logits):
        per_seed = {seed: splits for (n, seed), splits in logits.items() if n == name}
        for seed, splits in per_seed.items():
            for split, (values, labels) in splits.items():
                arrays[f"{name}/{seed}/{split}/logits"], arrays[f"{name}/{seed}/{split}/labels"] = values, labels
        mine = posthoc_runs(name, per_seed, args.eval_splits)
        for run in mine:
            descriptions[run["variant"]] = posthoc_description(run["variant"])
            logger.info("%s (seed %s): %s", run["variant"], run["seed"],
                        ", ".join(f"{k} {v:.3f}" for k, v in run["mcc"].items()))  # fmt: skip
        runs += mine
    np.savez_compressed(Path(args.output_dir, "quality_logits.npz"), **arrays)
    return runs


def main(argv=None) -> dict:
    model_args, data_args, synthetic, augmentation, cache_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()
    state = PartialState(cpu=args.use_cpu)
    os.makedirs(args.output_dir, exist_ok=True)

    # Stage 1: data, the backbone, the cache.
    # "validation" is the share held out of train (early stopping and the floor pick use it), not a split to load.
    data_args.extra_eval_splits = [s for s in args.eval_splits if s not in (data_args.test_split, "validation")]
    splits, vocabularies = load_data(data_args, args.seed, synthetic)
    if data_args.test_split != "test":
        splits[data_args.test_split] = splits["test"]
    base = build_model(model_args, vocabularies, splits["train"]).to(state.device).eval()
    processor = RoadworkImageProcessor.from_model_config(base.config)
    cache = RoadworkFeatureCache.from_arguments(cache_args, base, processor, accelerator=state)
    rows = stratified_indices(np.asarray(splits["train"]["label"]), args.train_size, args.seed)
    if len(rows) < len(splits["train"]):  # --train_size: extract (and cache) the rows trained on, not all of them
        splits["train"] = splits["train"].select(rows)
        rows = list(range(len(rows)))
    data = QualityData(cache, splits, base, processor, args.seed)
    collator = RoadworkDataCollator(text_embed_dim=base.config.text_embed_dim)  # serving sends no text

    # Stage 2: every contender over the seeds (or the recipe search).
    if args.search:
        runs, descriptions = search(data, base.config, args, augmentation, data_args, rows, collator, state.device)
        split_names, name = list(SEARCH_SPLITS), "search"
    else:
        recipe = recipe_from(args, augmentation, data_args)
        logits = {} if args.posthoc else None
        runs = run_variants(data, base.config, recipe, rows, args, args.variants, collator, state.device,
                            logits=logits)  # fmt: skip
        split_names, name = args.eval_splits, "quality"
        descriptions = {v: variant(v).description for v in args.variants}
        if logits:
            runs += add_posthoc(logits, args, descriptions)

    # Stage 3: the table, the JSON line.
    summary = summarise_runs(runs, split_names)
    sizes = {s: len(splits[s]) for s in split_names}
    warmup = (f"warm-up {args.warmup_steps:g} of the steps" if 0 < args.warmup_steps < 1
              else f"{args.warmup_steps:g} warm-up steps")  # fmt: skip
    data_line = (
        f"Serving MCC (no metadata, validator challenge transform, round(p)), mean +- std over seeds "
        f"{args.seed}..{args.seed + args.seeds - 1}. Data: {data_args.dataset}, {len(rows)} training rows "
        f"({int(np.asarray(splits['train']['label'])[rows].sum())} roadwork), eval rows {sizes}; backbone "
        f"{model_args.backbone}, {base.config.num_views} views at {base.config.view_size} px, "
        f"backbone_pooling {base.config.backbone_pooling}; "
        f"{args.num_train_epochs} epochs (lr {args.learning_rate:g}, {warmup}, early "
        f"stopping {'on' if args.early_stopping else 'off'}), augmentation {augmentation.strength}, "
        f"{data_args.serving_augmentation:g} of the draws as validator challenges, metadata dropout "
        f"{data_args.metadata_dropout:g}, {cache_args.feature_cache_passes} cached passes."
    )
    visible = {s: visible_roadwork_share(data.serving_table(s)) for s in split_names}
    if any(v is not None for v in visible.values()):
        shares = ", ".join(f"{s} {v:.2f}" for s, v in visible.items() if v is not None)
        data_line += f" Roadwork rows (with masks) whose objects the challenge keeps in the frame: {shares}."
    table = quality_table(summary, split_names, descriptions)
    Path(args.output_dir, f"{name}.md").write_text(data_line + "\n\n" + table)
    Path(args.output_dir, f"{name}.json").write_text(json.dumps({"data": data_line, "rows": summary, "runs": runs},
                                                                indent=2))  # fmt: skip
    print(data_line + "\n\n" + table, flush=True)
    result = target_result([] if args.search else summary, split_names, args.target_variant)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result), flush=True)
    return result


def target_result(summary, split_names, target_variant: str = "full") -> dict:
    """
    The JSON line: `target_variant`'s mean serving MCC minus the best peer probe's on `test_small` (value, target
    0.1), its margin over the best peer on every split, and whether the target is met (value >= 0.1 and no margin
    below 0). `value` is None when the summary lacks the variant, a peer probe or `test_small`.
    """
    result = {"name": "quality_full_minus_probe_test_small", "variant": target_variant, "value": None,
              "target": TARGET, "met": False}  # fmt: skip
    by_name = {row["variant"]: row for row in summary}
    probes = [by_name[p] for p in PEER_PROBES if p in by_name]
    if target_variant in by_name and probes and "test_small" in split_names:
        full = by_name[target_variant]
        best = max(probes, key=lambda row: row["test_small_mean"])
        others = [s for s in split_names if s != "test_small"]
        margins = {s: full[f"{s}_mean"] - max(p[f"{s}_mean"] for p in probes) for s in split_names}
        value = full["test_small_mean"] - best["test_small_mean"]
        result.update(value=round(value, 4), probe=best["variant"],
                      margins={k: round(v, 4) for k, v in margins.items()},
                      met=bool(value >= TARGET and all(margins[s] >= 0 for s in others)))  # fmt: skip
    return result


if __name__ == "__main__":
    main()
