"""Quality against the simplest peer: the multi-view model, its global view alone and a linear probe, on one cache.

Every variant reads the same frozen backbone and the same training rows, and is scored on the same serving
challenges (no metadata, the validators' challenge transform seeded by `--seed` and the row), on the standard test
split and on the synthetic hard splits (`test_small`: roadwork under 1 % of the image; `test_occluded`;
`test_distractor`: orange things and no roadwork). Variants:

- `full`: the model as configured (12 views, pruning, attention, fusion; with the library default, the probe floor);
  `full_no_linear_path` / `full_linear_path`: the same with `use_global_linear_path` switched (the path trained
  jointly); `full_probe_floor`: after training the path is fitted as a frozen probe and the best of head, head +
  probe and probe alone on validation is kept (`probe_floor`; the choice needs `--early_stopping`, on by default,
  which scores on validation; without it the model is head + probe).
- `full_tile_max_floor`: the probe floor reading the global view's feature and the tiles' element-wise max
  (`global_linear_path_input="global+tile_max"`); `probe_tile_max`: that floor's probe alone, on the cached views.
  It is part of our model, so it is never one of the peers (`PEER_PROBES`) the benchmark's target compares against.
- `full_tile_max_token`: the head alone with that max as one more token of its attention stack
  (`use_tile_max_token=True`): the tile-max feature inside the head instead of beside it.
- `full_view_detector`: the model with the per-view detector (`use_view_detector=True`): every view gets a logit of
  its own, trained on the masks' coverage of that view where the rows have masks (the synthetic scenes do; the cache
  stores the coverage of each pass), and the most confident view's logit is added to the Roadwork logit;
  `full_view_detector_no_linear_path`: the same without the linear path.
- `global_view_only`: the same head on the global view's features alone (`keep_views=(0,)`, one view, no pruning).
- `probe_view`: `LinearProbe` (standardised features + logistic regression) on the pooled feature of the global
  view at the model's own view size, read from the cache (view 0 is the whole image resized to `view_size`):
  exactly the input of the model's global view.
- `probe_224`: the same probe on the whole image resized to 224x224 (`evaluation.single_view_features`), the
  resolution an ImageNet backbone was trained at; extracted once per split and kept beside the cache.

The probes train on the clean (unaugmented) training images, as `evaluation.linear_probe_baseline` does, and, with
`--serving_augmentation`, also on the same share of validator challenges the models train on (same seeds); the
models on the cached augmentation passes, as train.py trains them. Heads train with `train_head` on the cache.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_collator import VIEW_COVERAGE_COLUMN, RoadworkDataCollator, RoadworkDataset, RoadworkViewAugmenter
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor

from .evaluation import PROBE_VIEW_SIZE, LinearProbe, single_view_features
from .feature_cache import CachedSplit, CachePass, RoadworkCachedDataset, RoadworkFeatureCache, cache_key
from .head_training import HeadTrainingSettings, evaluate_conditions, predict_logits, train_head
from .metrics import classification_metrics, roadwork_probabilities


logger = logging.getLogger(__name__)

HARD_SPLITS = ("test_small", "test_occluded", "test_distractor")
MODEL, PROBE_VIEW, PROBE_224, PROBE_224_NATIVE = "model", "probe_view", "probe_224", "probe_224_native"
PROBE_TILE_MAX = "probe_tile_max"
PEER_PROBES = (PROBE_VIEW, PROBE_224, PROBE_224_NATIVE)  # single-view probes: the peers (not probe_tile_max)


@dataclass(frozen=True)
class QualityVariant:
    """One contender: a head from the cache (`kind="model"`, config overrides, kept views) or a probe."""

    name: str
    description: str
    kind: str = MODEL
    overrides: tuple = ()  # (field, value) pairs of RoadworkConfig
    keep_views: tuple | None = None


QUALITY_VARIANTS = (
    QualityVariant("full", "the multi-view model as configured"),
    QualityVariant("full_no_linear_path", "the head alone: no global linear path, so no probe floor "
                   "(use_global_linear_path=False)",
                   overrides=(("use_global_linear_path", False),)),
    QualityVariant("full_linear_path", "the model with the global linear path trained jointly "
                   "(use_global_linear_path=True, global_linear_path_init='joint')",
                   overrides=(("use_global_linear_path", True), ("global_linear_path_init", "joint"))),
    QualityVariant("full_probe_floor", "the model on the probe floor: after training the path is fitted as a frozen "
                   "probe and the best of head, head + probe and probe alone on validation is kept",
                   overrides=(("use_global_linear_path", True), ("global_linear_path_init", "probe"))),
    QualityVariant("full_tile_max_floor", "the model on the tile-max probe floor: the floor's probe reads the global "
                   "view's feature and the tiles' element-wise max (global_linear_path_input='global+tile_max')",
                   overrides=(("use_global_linear_path", True), ("global_linear_path_init", "probe"),
                              ("global_linear_path_input", "global+tile_max"))),
    QualityVariant("full_tile_max_token", "the head with the tiles' element-wise max as one more token of its "
                   "attention stack (use_tile_max_token=True), no linear path",
                   overrides=(("use_tile_max_token", True), ("use_global_linear_path", False))),
    QualityVariant("full_view_detector", "the model with the per-view detector (use_view_detector=True): each view's "
                   "logit supervised by the masks' coverage where the rows have masks, the max added to the Roadwork "
                   "logit; the linear path as configured",
                   overrides=(("use_view_detector", True),)),
    QualityVariant("full_view_detector_no_linear_path", "the per-view detector and the head alone, no linear path "
                   "(use_view_detector=True, use_global_linear_path=False)",
                   overrides=(("use_view_detector", True), ("use_global_linear_path", False))),
    QualityVariant("global_view_only", "the same head on the global view alone (num_views=1, no pruning)",
                   overrides=(("num_views", 1), ("use_view_pruning", False)), keep_views=(0,)),
    QualityVariant(PROBE_VIEW, "linear probe on the global view at the model's view size (cached view 0)",
                   kind=PROBE_VIEW),
    QualityVariant(PROBE_224, f"linear probe on the global view at {PROBE_VIEW_SIZE}x{PROBE_VIEW_SIZE}, pooled as "
                   "the model pools its views (backbone_pooling)", kind=PROBE_224),
    QualityVariant(PROBE_224_NATIVE, f"linear probe on the global view at {PROBE_VIEW_SIZE}x{PROBE_VIEW_SIZE}, the "
                   "backbone's own pooled output (equal to probe_224 with backbone_pooling='native')",
                   kind=PROBE_224_NATIVE),
    QualityVariant(PROBE_TILE_MAX, "linear probe on the global view's feature and the tiles' element-wise max at the "
                   "model's view size (cached views): the tile-max floor alone, part of our model, not a peer",
                   kind=PROBE_TILE_MAX),
)  # fmt: skip
QUALITY_VARIANT_NAMES = tuple(v.name for v in QUALITY_VARIANTS)


def variant(name: str) -> QualityVariant:
    for candidate in QUALITY_VARIANTS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(QUALITY_VARIANT_NAMES)}")


def stratified_indices(labels: np.ndarray, size: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded subset of `size` rows with the label mix of `labels` (all rows when None/too big)."""
    if not size or size >= len(labels):
        return list(range(len(labels)))
    from sklearn.model_selection import train_test_split

    stratify = labels if min(np.bincount(labels, minlength=2)) >= 2 else None
    kept, _ = train_test_split(np.arange(len(labels)), train_size=size, random_state=seed, stratify=stratify)
    return sorted(kept.tolist())


class QualityData:
    """
    The cached features of one run: the train passes (subsettable by rows), the clean train pass (the probes' rows)
    and the serving pass of every evaluated split, extracted on first use through `cache`.
    """

    def __init__(self, cache: RoadworkFeatureCache, splits: Mapping, model, processor, seed: int):
        self.cache, self.splits, self.model, self.processor, self.seed = cache, splits, model, processor, seed
        self._train_tables: dict[str, list] = {}
        self._serving: dict[str, object] = {}
        self._probe_224: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def train_tables(self, augmenter: RoadworkViewAugmenter | None, serving_augmentation: float = 0.0) -> list:
        """The cached augmentation passes of the train split (one clean pass without augmentation)."""
        key = json.dumps([augmenter.config.__dict__ if augmenter is not None else None, serving_augmentation],
                         sort_keys=True, default=str)  # fmt: skip
        if key not in self._train_tables:
            passes = self.cache.training_passes(augmenter, self.seed, serving_augmentation)
            self._train_tables[key] = [self.cache.extractor.extract(self.splits["train"], p) for p in passes]
        return self._train_tables[key]

    def clean_train(self):
        return self.cache.extractor.extract(self.splits["train"], CachePass.clean())

    def serving_table(self, split_name: str):
        if split_name not in self._serving:
            self._serving[split_name] = self.cache.extractor.extract(
                self.splits[split_name], CachePass.serving(self.seed)
            )
        return self._serving[split_name]

    def serving_dataset(self, split_name: str, config, keep_views=None) -> RoadworkDataset:
        """The `serving` condition of a split from the cache: no metadata, the validators' challenge transform."""
        return RoadworkDataset(CachedSplit([self.serving_table(split_name)], keep_views), self.processor,
                               vocabularies=config, augmentation="none", seed=self.seed,
                               use_metadata=False)  # fmt: skip

    def probe_224_features(self, split_name: str, serving: bool, cache_dir: Path, cache_pass: CachePass | None = None,
                           pooling: str | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """
        (N, D) features of the whole image at 224 px and (N,) labels, stored as .npz beside the feature cache: the
        clean image, the serving challenge (`serving`), or the pixels of a training `cache_pass`; pooled as the model
        pools (`config.backbone_pooling`) unless `pooling` says otherwise.
        """
        pooling = pooling or self.model.config.backbone_pooling
        if cache_pass is not None:
            described = dataclasses.replace(cache_pass, name=f"probe224-{cache_pass.name}")
        else:
            described = CachePass("probe224-serving" if serving else "probe224-clean", None,
                                  "validator" if serving else None, self.seed if serving else None, 0)  # fmt: skip
        memo = (split_name, json.dumps(dataclasses.asdict(described), sort_keys=True, default=str), pooling)
        if memo in self._probe_224:
            return self._probe_224[memo]
        split = self.splits[split_name]
        processor = RoadworkImageProcessor.from_model_config(self.model.config, view_size=PROBE_VIEW_SIZE)
        key, _ = cache_key(self.model, processor, split, described, "float32", self.cache.extractor.fingerprint,
                           pooling=pooling)  # fmt: skip
        path = Path(cache_dir) / f"{described.name}-{key[:16]}.npz"  # the key names the pooling (native: as before)
        if path.is_file():
            stored = np.load(path)
            result = (stored["features"], stored["labels"])
        else:
            result = single_view_features(self.model, split, seed=self.seed, serving=serving, cache_pass=cache_pass,
                                          pooling=pooling)  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, features=result[0], labels=result[1])
            tmp.replace(path)
        self._probe_224[memo] = result
        return result


def _view0(table, rows: Sequence[int] | None = None, tile_max: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """
    View-0 features (N, D) and labels of the decodable rows of a cached pass; with `tile_max`, the element-wise max
    of the other views beside it (N, 2D), what the tile-max floor reads.
    """
    table = table.select(rows) if rows is not None else table
    numpy = table.with_format("numpy", columns=["view_features", "label", "has_features"])
    good = np.asarray(numpy["has_features"], dtype=bool)
    views = np.asarray(numpy["view_features"])[good].astype(np.float32)  # (N, V, D)
    if tile_max:
        if views.shape[1] < 2:
            raise ValueError("the tile-max probe needs cached tiles (num_views >= 2)")
        features = np.concatenate([views[:, 0], views[:, 1:].max(axis=1)], axis=1)
    else:
        features = views[:, 0]
    return features, np.asarray(numpy["label"])[good].astype(int)


def visible_roadwork_share(table) -> float | None:
    """
    Of the roadwork rows of a cached pass that have masks, the share whose objects are still in the frame (the global
    view's `view_coverage` > 0): after a validator challenge's crop, the ceiling of any model's recall on that split.
    None when no roadwork row has masks.
    """
    if VIEW_COVERAGE_COLUMN not in table.column_names:
        return None
    coverage, labels = table[VIEW_COVERAGE_COLUMN], table["label"]
    shown = [c[0] > 0 for c, y in zip(coverage, labels) if y == 1 and c is not None]
    return float(np.mean(shown)) if shown else None


def fit_probe(data: QualityData, kind: str, rows: Sequence[int], seed: int, eval_splits: Sequence[str],
              cache_dir: Path, c: float = 1.0, clean_splits: Sequence[str] = (),
              serving_augmentation: float = 0.0, augmenter: RoadworkViewAugmenter | None = None,
              ) -> dict[str, float]:  # fmt: skip
    """
    A probe of `kind` fitted on the clean train `rows` -> serving MCC per split of `eval_splits`, plus the MCC on the
    clean images (no challenge transform; the probe reads no metadata) of each of `clean_splits` as `"<split>/clean"`.
    With `serving_augmentation` > 0 the probe also trains on the cached training passes the models train on
    (`augmenter` and that share of validator challenges, the same draws), so both see the same challenges.
    """
    rows = list(rows)
    passes = data.cache.training_passes(augmenter, data.seed, serving_augmentation) if serving_augmentation else []
    cached = kind in (PROBE_VIEW, PROBE_TILE_MAX)
    tile_max = kind == PROBE_TILE_MAX
    if cached:
        drawn = [_view0(data.clean_train(), rows, tile_max)]
        if passes:
            drawn += [_view0(table, rows, tile_max) for table in data.train_tables(augmenter, serving_augmentation)]
    else:
        pooling = "native" if kind == PROBE_224_NATIVE else None
        drawn = [data.probe_224_features("train", False, cache_dir, pooling=pooling)]
        drawn += [data.probe_224_features("train", False, cache_dir, cache_pass=p, pooling=pooling) for p in passes]
        drawn = [(features[rows], labels[rows]) for features, labels in drawn]
    features = np.concatenate([f for f, _ in drawn])
    labels = np.concatenate([y for _, y in drawn])
    probe = LinearProbe.fit(features, labels, c=c, seed=seed)
    scores = {}
    for name, serving in [(n, True) for n in eval_splits] + [(n, False) for n in clean_splits]:
        if cached:
            table = (
                data.serving_table(name)
                if serving
                else data.cache.extractor.extract(data.splits[name], CachePass.clean())
            )
            eval_features, eval_labels = _view0(table, tile_max=tile_max)
        else:
            eval_features, eval_labels = data.probe_224_features(name, serving, cache_dir, pooling=pooling)
        metrics = classification_metrics(probe.predict_proba(eval_features), eval_labels)
        scores[name if serving else f"{name}/clean"] = float(metrics.get("mcc", math.nan))
    return scores


@dataclass
class HeadRecipe:
    """What a model variant trains with: config overrides, optimisation settings, augmentation, early stopping."""

    model_overrides: dict = field(default_factory=dict)
    settings: HeadTrainingSettings = field(default_factory=HeadTrainingSettings)
    augmenter: RoadworkViewAugmenter | None = None
    early_stopping: bool = False  # select the best epoch on validation serving MCC (patience in settings)
    metadata_dropout: float = 0.5
    metadata_field_dropout: float = 0.2
    serving_augmentation: float = 0.0  # share of training draws turned into validator challenges


def build_head(base_config, overrides: Mapping, seed: int) -> RoadworkForImageClassification:
    """
    A fresh head (initialised from `seed`) with `overrides`; its backbone never runs (features come from the cache).
    """
    config = copy.deepcopy(base_config)
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"unknown RoadworkConfig field {name!r} in the model overrides")
        setattr(config, name, value)
    config.validate_roadwork()
    torch.manual_seed(seed)
    return RoadworkForImageClassification(config)


def train_model_variant(
    data: QualityData, base_config, chosen: QualityVariant, recipe: HeadRecipe, rows: Sequence[int], seed: int,
    eval_splits: Sequence[str], collator: RoadworkDataCollator, device, logits_out: dict | None = None,
) -> dict[str, float]:  # fmt: skip
    """
    Trains `chosen` on the cached train `rows` with `recipe` -> serving MCC per evaluated split. `logits_out`, when
    given, receives split -> ((N, 2) serving logits, (N,) labels) for the post-hoc rows (`posthoc_runs`).
    """
    overrides = {**recipe.model_overrides, **dict(chosen.overrides)}
    # Every cached table this run reads is extracted before the head is seeded: extraction iterates DataLoaders,
    # which draw from the global torch RNG, so a head seeded first trained under other dropout masks in the run
    # that filled the cache than in every later run on it (the first model of a cold benchmark did not reproduce).
    tables = [t.select(rows) for t in data.train_tables(recipe.augmenter, recipe.serving_augmentation)]
    for name in ({"validation"} if recipe.early_stopping else set()) | set(eval_splits):
        data.serving_table(name)
    model = build_head(base_config, overrides, seed).to(device)
    train_dataset = RoadworkCachedDataset(
        CachedSplit(tables, chosen.keep_views), data.processor, vocabularies=model.config, seed=seed,
        metadata_dropout=recipe.metadata_dropout, metadata_field_dropout=recipe.metadata_field_dropout,
    )  # fmt: skip
    settings = dataclasses.replace(recipe.settings, seed=seed)
    validate = None
    if recipe.early_stopping:
        validation = {"serving": data.serving_dataset("validation", model.config, chosen.keep_views)}

        def validate(m):
            conditions = evaluate_conditions(m, validation, collator, settings.per_device_eval_batch_size)
            return conditions["serving"].get("mcc", math.nan)

    train_head(model, train_dataset, collator, settings, validate=validate)
    scores = {}
    for name in eval_splits:
        dataset = data.serving_dataset(name, model.config, chosen.keep_views)
        logits, labels = predict_logits(model, dataset, collator, settings.per_device_eval_batch_size)
        scores[name] = float(classification_metrics(roadwork_probabilities(logits), labels).get("mcc", math.nan))
        if logits_out is not None:
            logits_out[name] = (logits, labels)
    return scores


SEED_ENSEMBLE, VALIDATION_THRESHOLD = "seed_ensemble", "validation_threshold"
POSTHOC_DESCRIPTIONS = {
    SEED_ENSEMBLE: "post hoc, no training: the mean Roadwork margin (logit difference) of {variant}'s heads of every "
                   "seed, thresholded at 0; one number, so its std is 0",
    VALIDATION_THRESHOLD: "post hoc, no training: each seed of {variant} thresholded where its validation serving MCC "
                          "peaks instead of at round(p)",
}  # fmt: skip


def roadwork_margin(logits: np.ndarray) -> np.ndarray:
    """(N, 2) logits -> (N,) Roadwork minus None logit: round(p) says Roadwork exactly where it is > 0."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"expected (N, 2) logits, got shape {logits.shape}")
    return logits[:, 1] - logits[:, 0]


def margin_mcc(margin: np.ndarray, labels: np.ndarray, threshold: float = 0.0) -> float:
    """Serving MCC of calling Roadwork where `margin > threshold` (NaN where it is undefined, one class)."""
    shifted = np.asarray(margin, dtype=np.float64) - threshold
    probabilities = roadwork_probabilities(np.stack([np.zeros_like(shifted), shifted], axis=1))  # no overflow
    return float(classification_metrics(probabilities, labels).get("mcc", math.nan))


def validation_threshold(margin: np.ndarray, labels: np.ndarray) -> float:
    """
    The margin threshold with the best MCC on (`margin`, `labels`): candidates are 0 and the midpoints between
    consecutive distinct margins; among equal scores, the one nearest 0 (round(p)'s own threshold).
    """
    values = np.unique(np.asarray(margin, dtype=np.float64))
    candidates = np.concatenate([[0.0], (values[1:] + values[:-1]) / 2, values[:1] - 1.0, values[-1:] + 1.0])
    scores = np.array([margin_mcc(margin, labels, t) for t in candidates])
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    best = candidates[scores == scores.max()]
    return float(best[np.argmin(np.abs(best))])


def posthoc_runs(name: str, per_seed: Mapping[int, Mapping[str, tuple]], split_names: Sequence[str]) -> list[dict]:
    """
    Runs (as `run_variants` makes them) of two post-hoc rows from `name`'s saved serving logits, seed -> split ->
    (logits, labels): `name+seed_ensemble`, one run scoring the seeds' mean margin at 0 (two seeds at least), and
    `name+validation_threshold`, one run per seed at the threshold its validation margins pick (needs
    'validation' among `split_names`). Rows the inputs cannot make are left out.
    """
    runs = []
    seeds = sorted(per_seed)
    if len(seeds) >= 2:
        mcc = {}
        for split in split_names:
            labels = per_seed[seeds[0]][split][1]
            if any(not np.array_equal(per_seed[s][split][1], labels) for s in seeds):
                raise ValueError(f"the seeds of {name} were scored on different {split} rows; cannot average them")
            mean = np.mean([roadwork_margin(per_seed[s][split][0]) for s in seeds], axis=0)
            mcc[split] = margin_mcc(mean, labels)
        runs.append({"variant": f"{name}+{SEED_ENSEMBLE}", "seed": seeds, "mcc": mcc})
    if "validation" in split_names:
        for seed in seeds:
            threshold = validation_threshold(roadwork_margin(per_seed[seed]["validation"][0]),
                                             per_seed[seed]["validation"][1])  # fmt: skip
            mcc = {s: margin_mcc(roadwork_margin(per_seed[seed][s][0]), per_seed[seed][s][1], threshold)
                   for s in split_names}  # fmt: skip
            runs.append({"variant": f"{name}+{VALIDATION_THRESHOLD}", "seed": seed, "mcc": mcc,
                         "threshold": threshold})  # fmt: skip
    return runs


def posthoc_description(row_name: str) -> str:
    base, _, kind = row_name.partition("+")
    return POSTHOC_DESCRIPTIONS[kind].format(variant=base)


def summarise_runs(runs: Sequence[Mapping], split_names: Sequence[str], key: str = "variant") -> list[dict]:
    """Per `key` value, in first-seen order: mean and std (ddof 1; 0 for one seed) of the MCC on every split."""
    rows = []
    for name in dict.fromkeys(run[key] for run in runs):
        mine = [run for run in runs if run[key] == name]
        row = {key: name, "seeds": len(mine)}
        for split in split_names:
            values = np.array([run["mcc"][split] for run in mine], dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{split}_mean"] = float(finite.mean()) if len(finite) else math.nan
            row[f"{split}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        rows.append(row)
    return rows


def quality_table(rows: Sequence[Mapping], split_names: Sequence[str], descriptions: Mapping[str, str],
                  key: str = "variant") -> str:  # fmt: skip
    """Markdown: one row per variant, serving MCC mean +- std per split."""
    header = "| variant | " + " | ".join(f"{s} serving MCC" for s in split_names) + " | seeds | what it is |"
    lines = [header, "|" + "---|" * (len(split_names) + 3)]
    for row in rows:
        cells = [f"{row[f'{s}_mean']:.3f} +- {row[f'{s}_std']:.3f}" for s in split_names]
        lines.append(
            f"| {row[key]} | " + " | ".join(cells) + f" | {row['seeds']} | {descriptions.get(row[key], '')} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "HARD_SPLITS",
    "HeadRecipe",
    "PEER_PROBES",
    "POSTHOC_DESCRIPTIONS",
    "PROBE_224_NATIVE",
    "PROBE_TILE_MAX",
    "QUALITY_VARIANTS",
    "QUALITY_VARIANT_NAMES",
    "QualityData",
    "QualityVariant",
    "build_head",
    "fit_probe",
    "margin_mcc",
    "posthoc_description",
    "posthoc_runs",
    "roadwork_margin",
    "quality_table",
    "stratified_indices",
    "summarise_runs",
    "train_model_variant",
    "validation_threshold",
    "variant",
    "visible_roadwork_share",
]
