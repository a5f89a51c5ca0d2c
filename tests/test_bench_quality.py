"""The quality benchmark (model vs global view vs probe) and the ablation rows it adds, on tiny settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roadwork_training.ablate import ABLATIONS, markdown_table, summarise
from roadwork_training.quality import (
    QUALITY_VARIANT_NAMES,
    quality_table,
    stratified_indices,
    summarise_runs,
    visible_roadwork_share,
)


ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "dataset: synthetic\nsynthetic_num_train: 32\nsynthetic_num_test: 8\nsynthetic_num_hard_test: 8\n"
    "validation_fraction: 0.25\nuse_text_embeddings: false\ngps_weighting: false\nbackbone_config:\n"
    "  model_type: dinov3_vit\n  hidden_size: 32\n  intermediate_size: 64\n  num_hidden_layers: 1\n"
    "  num_attention_heads: 2\n  patch_size: 16\n  image_size: 32\n  num_register_tokens: 4\nmodel_overrides:\n"
    "  view_size: 32\n  hidden_size: 32\n  num_attention_heads: 4\n  num_attention_layers: 1\n"
    "  fusion_hidden_size: 32\n  classifier_hidden_size: 16\nnum_train_epochs: 1\nper_device_train_batch_size: 8\n"
)


def test_quality_summary_table_and_subsets():
    runs = [
        {"variant": "full", "seed": 0, "mcc": {"test": 0.5, "test_small": 0.2}},
        {"variant": "full", "seed": 1, "mcc": {"test": 0.7, "test_small": 0.4}},
        {"variant": "probe_view", "seed": 0, "mcc": {"test": 0.6, "test_small": math.nan}},
    ]
    rows = summarise_runs(runs, ["test", "test_small"])
    assert rows[0]["test_mean"] == pytest.approx(0.6) and rows[0]["test_std"] == pytest.approx(0.1414, abs=1e-3)
    assert math.isnan(rows[1]["test_small_mean"]) and rows[1]["seeds"] == 1
    table = quality_table(rows, ["test", "test_small"], {"full": "the model"})
    assert "| full | 0.600 +- 0.141 | 0.300 +- 0.141 | 2 | the model |" in table
    labels = np.array([1] * 80 + [0] * 20)
    kept = stratified_indices(labels, 40, seed=0)
    assert len(kept) == 40 and kept == sorted(kept) and labels[kept].sum() == 32
    assert stratified_indices(labels, None, 0) == list(range(100)) == stratified_indices(labels, 500, 0)
    assert {"full", "global_view_only", "probe_view", "probe_224"} <= set(QUALITY_VARIANT_NAMES)


def test_validation_threshold_is_the_best_mcc_cut_and_prefers_round_p_on_ties():
    from roadwork_training.quality import margin_mcc, validation_threshold

    labels = np.array([0, 0, 0, 1, 1, 1])
    margin = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])  # every row above 0: round(p) calls all Roadwork
    assert margin_mcc(margin, labels) == 0.0
    threshold = validation_threshold(margin, labels)
    assert threshold == pytest.approx(1.75) and margin_mcc(margin, labels, threshold) == pytest.approx(1.0)
    separable = np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])  # every cut in (-0.5, 0.5) is perfect: keep 0
    assert validation_threshold(separable, labels) == 0.0
    with pytest.raises(ValueError, match=r"\(N, 2\) logits"):
        from roadwork_training.quality import roadwork_margin

        roadwork_margin(np.zeros((3, 3)))


def test_posthoc_rows_average_the_seeds_margins_and_threshold_each_seed_on_validation():
    from roadwork_training.quality import posthoc_runs

    labels = np.array([0, 0, 1, 1])

    def logits(margin):  # None logit 0, Roadwork logit = margin
        return np.stack([np.zeros(len(margin)), np.asarray(margin, dtype=float)], axis=1)

    per_seed = {
        1: {"validation": (logits([-1, 1, 2, 3]), labels), "test": (logits([-1, -2, 1, -0.5]), labels)},
        2: {"validation": (logits([-3, -2, -1, 1]), labels), "test": (logits([-1, -2, 2, 2]), labels)},
    }
    runs = posthoc_runs("full", per_seed, ["validation", "test"])
    assert [r["variant"] for r in runs] == ["full+seed_ensemble", "full+validation_threshold",
                                            "full+validation_threshold"]  # fmt: skip
    # The mean test margins (-1, -2, 1.5, 0.75) split the labels: MCC 1, where seed 1 alone is at 0.577.
    assert runs[0]["mcc"]["test"] == pytest.approx(1.0) and runs[0]["seed"] == [1, 2]
    # Seed 1's validation is cut perfectly only between 1 and 2, seed 2's only between -2 and -1.
    assert runs[1]["threshold"] == pytest.approx(1.5) and runs[1]["mcc"]["validation"] == pytest.approx(1.0)
    assert runs[2]["threshold"] == pytest.approx(-1.5) and runs[2]["mcc"]["test"] == pytest.approx(1 / np.sqrt(3))
    assert runs[1]["mcc"]["test"] == pytest.approx(0.0)  # seed 1 at 1.5 calls every test row None
    assert posthoc_runs("full", {1: per_seed[1]}, ["test"]) == []  # one seed, no validation: nothing to add
    per_seed[2]["test"] = (logits([0, 0, 0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="different test rows"):
        posthoc_runs("full", per_seed, ["test"])


def test_ablation_table_shows_hard_split_columns():
    runs = [{"ablation": "full", "description": "d", "serving_mcc": 0.2, "metadata_mcc": 0.5,
             "test_small_serving_mcc": 0.1}]  # fmt: skip
    rows = summarise(runs)
    assert rows[0]["test_small_serving_mcc_mean"] == pytest.approx(0.1)
    assert "test_small serving MCC" in markdown_table(rows, "x") and "| 0.100 +- 0.000 |" in markdown_table(rows, "x")
    names = {a.name for a in ABLATIONS}
    assert {"probe_view", "probe_224", "global_view_only", "no_global_linear_path", "global_linear_path"} <= names


@pytest.mark.slow
def test_bench_quality_prints_the_json_line(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_quality.py", "--config", str(config), "--seeds", "2", "--output_dir",
         str(out), "--synthetic_dir", str(tmp_path / "syn"), "--use_cpu"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == "quality_full_minus_probe_test_small" and result["target"] == 0.1
    assert isinstance(result["value"], float) and result["probe"] in ("probe_view", "probe_224")
    assert set(result["margins"]) == {"test", "test_small", "test_occluded", "test_distractor"}
    stored = json.loads((out / "quality.json").read_text())
    trained = ["full", "full_no_linear_path", "full_linear_path", "global_view_only"]
    assert [r["variant"] for r in stored["rows"]] == [*trained, "probe_view", "probe_224", "probe_224_native",
                                                      *(f"{v}+seed_ensemble" for v in trained)]  # fmt: skip
    assert all(r["seeds"] == 2 for r in stored["rows"][:7]) and len(stored["runs"]) == 14 + 4
    assert all(r["seeds"] == 1 for r in stored["rows"][7:])  # no validation split scored: no threshold rows
    saved = np.load(out / "quality_logits.npz")
    assert saved["full/42/test/logits"].shape == (len(saved["full/42/test/labels"]), 2)
    assert len(saved.files) == 4 * 2 * 4 * 2  # variants x seeds x splits x (logits, labels)
    # With the backbone's own pooling (the default) the two 224 px probes read the same features.
    by_variant = {r["variant"]: r for r in stored["rows"]}
    assert by_variant["probe_224"]["test_mean"] == by_variant["probe_224_native"]["test_mean"]
    assert "| probe_224 |" in (out / "quality.md").read_text()


@pytest.mark.slow
def test_ablation_command_has_probe_rows_and_hard_splits(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "roadwork_training.ablate", "--config", str(config), "--seeds", "1", "--output_dir",
         str(out), "--synthetic_dir", str(tmp_path / "syn"), "--extra_eval_splits", "test_small", "test_distractor",
         "--ablations", "full", "no_global_linear_path", "tile_max_floor", "tile_max_token", "probe_view",
         "probe_224", "probe_tile_max"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "ablations.json").read_text())
    assert [r["ablation"] for r in result["rows"]] == ["full", "no_global_linear_path", "tile_max_floor",
                                                       "tile_max_token", "probe_view", "probe_224",
                                                       "probe_tile_max"]  # fmt: skip
    for row in result["rows"]:
        assert {"test_small_serving_mcc_mean", "test_distractor_serving_mcc_mean", "serving_mcc_mean"} <= set(row)
    assert "test_distractor serving MCC" in (out / "ablations.md").read_text()


def test_probes_train_on_the_models_challenge_passes(tmp_path, monkeypatch):
    """With --serving_augmentation the probes see the clean images plus every training pass the model sees."""
    import torch
    from roadwork_testing import tiny_config

    from data_collator import (
        RoadworkViewAugmenter,
        SyntheticDatasetConfig,
        build_vocabularies,
        ensure_synthetic_dataset,
        load_roadwork_splits,
    )
    from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
    from roadwork_training import evaluation, quality
    from roadwork_training.feature_cache import RoadworkFeatureCache, RoadworkFeatureExtractor

    source = ensure_synthetic_dataset(tmp_path / "syn", SyntheticDatasetConfig(num_train=12, num_test=6))
    splits = load_roadwork_splits(str(source))
    torch.manual_seed(0)
    model = RoadworkForImageClassification(
        tiny_config(**build_vocabularies(splits["train"]), use_segmentation=False)
    ).eval()
    processor = RoadworkImageProcessor.from_model_config(model.config)
    cache = RoadworkFeatureCache(RoadworkFeatureExtractor(model, processor, tmp_path / "cache", progress=False), 2)
    data = quality.QualityData(cache, splits, model, processor, seed=3)
    fitted, widths = [], []
    original = evaluation.LinearProbe.fit

    def spy(features, labels, **kwargs):
        fitted.append(len(labels))
        widths.append(features.shape[1])
        return original(features, labels, **kwargs)

    monkeypatch.setattr(quality.LinearProbe, "fit", staticmethod(spy))
    rows = list(range(8))
    augmenter = RoadworkViewAugmenter("light")
    for kind in (quality.PROBE_VIEW, quality.PROBE_224):
        quality.fit_probe(data, kind, rows, 0, ["test"], tmp_path / "cache")
        quality.fit_probe(data, kind, rows, 0, ["test"], tmp_path / "cache", serving_augmentation=0.5,
                          augmenter=augmenter)  # fmt: skip
    assert fitted == [8, 24, 8, 24]  # clean only; clean + the 2 challenge passes
    assert len(data.train_tables(augmenter, 0.5)) == 2  # the model's passes, which probe_view reused

    # The tile-max probe (the tile-max floor alone) reads view 0 and the tiles' element-wise max of the same cache.
    fitted.clear(), widths.clear()
    scores = quality.fit_probe(data, quality.PROBE_TILE_MAX, rows, 0, ["test"], tmp_path / "cache")
    width = model.config.view_feature_size
    assert fitted == [8] and widths == [2 * width] and set(scores) == {"test"}
    features, _ = quality._view0(data.clean_train(), rows, tile_max=True)
    views = np.asarray(data.clean_train().select(rows).with_format("numpy")["view_features"], dtype=np.float32)
    np.testing.assert_array_equal(features, np.concatenate([views[:, 0], views[:, 1:].max(1)], 1))
    assert quality.PROBE_TILE_MAX not in quality.PEER_PROBES  # part of our model, never the peer to beat

    fitted.clear()
    monkeypatch.setattr(evaluation.LinearProbe, "fit", staticmethod(spy))
    evaluation.linear_probe_baseline(model, splits["train"], splits["test"], seed=0, batch_size=4,
                                     serving_augmentation=0.5, num_passes=2)  # fmt: skip
    assert fitted == [3 * len(splits["train"])]


def test_the_first_model_of_a_cold_cache_equals_the_model_trained_on_the_warm_cache(tmp_path, monkeypatch):
    """Extraction draws from the global torch RNG (its DataLoaders do); the head must be seeded after it, or the run
    that fills the cache trains its first model under other dropout masks than every later run."""
    import torch
    from roadwork_testing import tiny_config

    from data_collator import (
        RoadworkDataCollator,
        RoadworkViewAugmenter,
        SyntheticDatasetConfig,
        build_vocabularies,
        ensure_synthetic_dataset,
        load_roadwork_splits,
    )
    from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
    from roadwork_training import quality
    from roadwork_training.feature_cache import RoadworkFeatureCache, RoadworkFeatureExtractor
    from roadwork_training.head_training import HeadTrainingSettings

    source = ensure_synthetic_dataset(tmp_path / "syn", SyntheticDatasetConfig(num_train=12, num_test=6))
    splits = load_roadwork_splits(str(source))
    splits["validation"] = splits["train"].select(range(8, 12))
    torch.manual_seed(0)
    model = RoadworkForImageClassification(
        tiny_config(**build_vocabularies(splits["train"]), use_segmentation=False, hidden_dropout=0.5)
    ).eval()
    processor = RoadworkImageProcessor.from_model_config(model.config)
    recipe = quality.HeadRecipe(
        settings=HeadTrainingSettings(num_train_epochs=2, per_device_train_batch_size=4, early_stopping_patience=2),
        augmenter=RoadworkViewAugmenter("light"), early_stopping=True, metadata_dropout=1.0, serving_augmentation=0.5,
    )  # fmt: skip
    trained = []
    original = quality.train_head

    def spy(head, *args, **kwargs):
        result = original(head, *args, **kwargs)
        trained.append({k: v.detach().clone() for k, v in head.state_dict().items() if "backbone" not in k})
        return result

    monkeypatch.setattr(quality, "train_head", spy)
    collator = RoadworkDataCollator(text_embed_dim=model.config.text_embed_dim)
    scores = []
    for _ in ("cold", "warm"):  # a fresh QualityData each time: the second reads what the first extracted
        extractor = RoadworkFeatureExtractor(model, processor, tmp_path / "cache", progress=False)
        data = quality.QualityData(RoadworkFeatureCache(extractor, 2), splits, model, processor, seed=3)
        scores.append(quality.train_model_variant(
            data, model.config, quality.variant("full"), recipe, list(range(8)), 7, ["test"], collator, "cpu"
        ))  # fmt: skip
    assert len(trained) == 2 and trained[0].keys() == trained[1].keys()
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], rtol=0, atol=0, msg=name)
    assert scores[0] == scores[1] or all(math.isnan(v) for v in (*scores[0].values(), *scores[1].values()))


def test_head_training_warmup_takes_steps_or_a_share_of_the_steps():
    from roadwork_training.head_training import warmup_steps

    assert warmup_steps(5, 1000) == 5 and warmup_steps(0, 1000) == 0
    assert warmup_steps(0.1, 1620) == 162  # a float below 1 is a ratio, as TrainingArguments.warmup_steps
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_steps(-1, 10)


@pytest.mark.slow
def test_recipe_search_selects_on_validation_and_reports_test_beside_it(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_quality.py", "--config", str(config), "--search", "--search_knobs",
         "learning_rate", "--seeds", "1", "--num_train_epochs", "2", "--early_stopping", "true", "--train_size", "12",
         "--output_dir", str(out), "--synthetic_dir", str(tmp_path / "syn"), "--use_cpu"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads((out / "search.json").read_text())
    assert ", 12 training rows (" in stored["data"]
    # --train_size: the cache extracts the 12 rows trained on, not the whole train split (24 after validation).
    keyed = [json.loads(p.read_text()) for p in (out / "feature_cache").rglob("key.json")]
    train_rows = {k["num_rows"] for k in keyed if k["num_rows"] != 8}  # not validation or test (8 rows each)
    assert train_rows == {12}, sorted(k["num_rows"] for k in keyed)
    rows = {r["variant"]: r for r in stored["rows"]}
    assert {"base", "learning_rate=3e-4", "learning_rate=3e-3"} <= set(rows)
    for row in rows.values():
        assert {"validation_mean", "test_mean"} <= set(row)
    # The winner is the value whose validation MCC beat the base's (test plays no part). One knob searched: its
    # winner's row is already the combination, so no combination row is trained, won or not.
    tried = {v: rows[f"learning_rate={v}"]["validation_mean"] for v in ("3e-4", "3e-3")}
    best = max(tried, key=tried.get)
    assert [name for name in rows if name.startswith("combined")] == []
    won = tried[best] > rows["base"]["validation_mean"]
    assert ("search: only learning_rate=" + best + " won" in done.stderr) == won, done.stderr[-2000:]
    table = (out / "search.md").read_text()
    assert "validation serving MCC" in table
    # Every row says what it changed from the recipe.
    assert "| learning_rate=3e-4 |" in table and "recipe with learning_rate=0.0003 |" in table
    assert "the --config recipe, full model |" in table


def test_search_skips_the_recipes_own_values():
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_quality", bench)  # dataclasses look their module up while the file runs
    spec.loader.exec_module(bench)
    config = SimpleNamespace(hidden_dropout=0.3, attention_dropout=0.3, num_attention_layers=2, hidden_size=128,
                             fusion_hidden_size=128, classifier_hidden_size=64)  # fmt: skip
    args = SimpleNamespace(learning_rate=1e-3, early_stopping=True, num_train_epochs=30, weight_decay=0.01)
    augmentation, data = SimpleNamespace(strength="light"), SimpleNamespace(serving_augmentation=1.0)
    space = bench.SEARCH_SPACE
    own = [(k, v) for k in space for v, c in space[k].items() if bench.is_base_recipe(c, config, args, augmentation,
                                                                                        data)]  # fmt: skip
    # With dropout 0.3, early stopping on and a full challenge share, exactly these two values are the recipe's.
    assert sorted(own) == [("early_stopping", "on"), ("serving_augmentation", "1.0")]
    config.hidden_dropout = config.attention_dropout = 0.1
    assert bench.is_base_recipe(space["dropout"]["0.1"], config, args, augmentation, data)
    assert not bench.is_base_recipe(space["learning_rate"]["3e-3"], config, args, augmentation, data)


def test_visible_roadwork_share_counts_roadwork_rows_with_masks_whose_global_view_shows_an_object():
    import datasets

    table = datasets.Dataset.from_dict({
        "label": [1, 1, 1, 0, 1],
        "view_coverage": [[0.01, 0.0], [0.0, 0.0], None, [0.0, 0.0], [0.002, 0.02]],
    })  # fmt: skip
    assert visible_roadwork_share(table) == pytest.approx(2 / 3)  # the row without masks and the none row don't count
    assert visible_roadwork_share(table.remove_columns("view_coverage")) is None
    assert visible_roadwork_share(table.select([2, 3])) is None


def test_target_result_compares_the_named_variant_with_the_best_peer_probe():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_quality import target_result

    splits = ["test", "test_small"]

    def row(name, test, small):
        return {"variant": name, "test_mean": test, "test_small_mean": small}

    summary = [row("full", 0.5, 0.10), row("full_view_detector", 0.6, 0.30), row("probe_view", 0.4, 0.15),
               row("probe_224", 0.45, 0.12), row("probe_tile_max", 0.9, 0.9)]  # tile-max is ours, never a peer
    plain = target_result(summary, splits)
    assert plain["value"] == pytest.approx(-0.05) and not plain["met"] and plain["probe"] == "probe_view"
    detector = target_result(summary, splits, "full_view_detector")
    assert detector["value"] == pytest.approx(0.15) and detector["met"]
    assert detector["margins"] == {"test": pytest.approx(0.15), "test_small": pytest.approx(0.15)}
    assert target_result(summary[:1], splits)["value"] is None  # no peer probe in the run
    ensemble = target_result([*summary, row("full+seed_ensemble", 0.7, 0.4)], splits, "full+seed_ensemble")
    assert ensemble["value"] == pytest.approx(0.25) and ensemble["met"]


def test_target_variant_may_name_a_posthoc_row_and_nothing_else():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_quality import QualityArguments

    assert QualityArguments(target_variant="full+validation_threshold").target_variant == "full+validation_threshold"
    with pytest.raises(ValueError, match="after '\\+' choose from seed_ensemble, validation_threshold"):
        QualityArguments(target_variant="full+bogus")
    with pytest.raises(ValueError, match="unknown variant 'fool'"):
        QualityArguments(target_variant="fool+seed_ensemble")


def test_help_keeps_the_docstrings_lines_and_documents_posthoc():
    """The scripts' --help prints their docstring as written (example commands on their own lines), not re-wrapped."""
    done = subprocess.run([sys.executable, "benchmarks/bench_quality.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert "python benchmarks/bench_quality.py --config configs/quality_quickstart.yaml --seeds 3" in lines
    assert "--no_posthoc" in done.stdout and "quality_logits.npz" in done.stdout
    assert "(default: 42)" in done.stdout  # the flags still show their defaults
