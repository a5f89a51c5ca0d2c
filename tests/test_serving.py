"""Training and selecting for what serving sends: metadata dropout, the three evaluation conditions, fresh draws,
stratified subsets, datasets without metadata, extra evaluation splits and the linear-probe baseline."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from roadwork_testing import tiny_config

from data_collator import RoadworkDataCollator, RoadworkDataset, make_gps_sampler
from data_collator.collator import decode_draw, encode_draw
from data_collator.metadata import METADATA_FIELDS
from data_collator.synthetic import SyntheticDatasetConfig, generate_row
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
from roadwork_training.build import condition_datasets, heads_without_labels, stratified_subset
from roadwork_training.evaluation import LinearProbe, evaluate_split_conditions, linear_probe_baseline
from roadwork_training.metrics import CONDITIONS


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
import train  # noqa: E402


VIEW_SIZE = 32
VOCABS = {"weather_vocab": ["sunny", "rainy"], "daytime_vocab": ["light", "dark"], "scene_vocab": ["urban", "rural"]}


@pytest.fixture(scope="module")
def rows():
    """Twelve synthetic rows with full metadata (no NULL tags), GPS and descriptions."""
    config = SyntheticDatasetConfig(seed=3, metadata_null_rate=0.0, malformed_gps_rate=0.0, mask_rate=0.0)
    return [generate_row(config, "train", i) for i in range(12)]


@pytest.fixture(scope="module")
def processor():
    return RoadworkImageProcessor(view_size=VIEW_SIZE)


def _has_metadata(example) -> dict[str, bool]:
    return {
        "gps": bool(np.isfinite(example["gps"]).all()),
        "weather_ids": example["weather_ids"] != 0,
        "daytime_ids": example["daytime_ids"] != 0,
        "scene_ids": example["scene_ids"] != 0,
        "description": example["description"] is not None,
    }


# --- metadata dropout and the conditions ------------------------------------------------------------------------


def test_use_metadata_false_gives_all_null_metadata_and_keeps_the_weather_target(rows, processor):
    dataset = RoadworkDataset(rows, processor, vocabularies=VOCABS, use_metadata=False, seed=0)
    with_metadata = RoadworkDataset(rows, processor, vocabularies=VOCABS, seed=0)
    assert any(any(_has_metadata(with_metadata[i]).values()) for i in range(len(rows))), "the rows carry metadata"
    for i in range(len(rows)):
        example = dataset[i]
        assert not any(_has_metadata(example).values()), example
        assert example["weather_labels"] == with_metadata[i]["weather_labels"], "the vision target stays"
        torch.testing.assert_close(example["pixel_values"], with_metadata[i]["pixel_values"])


def test_metadata_dropout_rates_and_reproducibility(rows, processor):
    many = rows * 40  # 480 draws
    whole = RoadworkDataset(many, processor, vocabularies=VOCABS, metadata_dropout=0.5, seed=1)
    # Only the metadata matters here: read the dataset's metadata step directly instead of decoding 480 images.
    share = np.mean([not any(_has_metadata(whole._metadata(row, i, 0)).values()) for i, row in enumerate(many)])
    assert 0.42 < share < 0.58, share
    again = RoadworkDataset(many, processor, vocabularies=VOCABS, metadata_dropout=0.5, seed=1)
    assert [_has_metadata(again._metadata(row, i, 0)) for i, row in enumerate(many[:50])] == [
        _has_metadata(whole._metadata(row, i, 0)) for i, row in enumerate(many[:50])
    ], "seeded: a rerun drops the same fields"

    fields = RoadworkDataset(many, processor, vocabularies=VOCABS, metadata_field_dropout=0.3, seed=2)
    present = np.array([list(_has_metadata(fields._metadata(row, i, 0)).values()) for i, row in enumerate(many)])
    reference = np.array([list(_has_metadata(fields.metadata_parser(row)).values()) for row in many])
    kept = present[reference].mean()  # share of available fields that survived
    assert 0.62 < kept < 0.78, kept
    lost = (reference & ~present).sum(axis=1)  # fields lost per row
    assert 0 < (lost == 0).mean() < 1 and ((lost > 0) & (lost < reference.sum(axis=1))).any(), (
        "fields are dropped independently, not all at once"
    )
    with pytest.raises(ValueError, match="metadata_dropout"):
        RoadworkDataset(rows, processor, vocabularies=VOCABS, metadata_dropout=1.5)
    assert set(METADATA_FIELDS) == set(_has_metadata(whole[0]))


def test_condition_datasets_are_serving_no_metadata_and_metadata(rows, processor):
    config = tiny_config(**VOCABS, view_size=VIEW_SIZE)
    datasets = condition_datasets(rows, processor, config, seed=7)
    assert list(datasets) == list(CONDITIONS) == ["serving", "no_metadata", "metadata"]
    serving, no_metadata, metadata = (datasets[c][0] for c in CONDITIONS)
    assert not any(_has_metadata(serving).values()) and not any(_has_metadata(no_metadata).values())
    assert any(_has_metadata(metadata).values())
    # no_metadata sees the full image (as metadata does); serving sees the validators' challenge of it.
    torch.testing.assert_close(no_metadata["pixel_values"], metadata["pixel_values"])
    assert not torch.equal(serving["pixel_values"], no_metadata["pixel_values"])
    # The challenge is seeded per row: a rerun, and a second dataset, give the same pixels.
    again = condition_datasets(rows, processor, config, seed=7)["serving"][0]
    torch.testing.assert_close(again["pixel_values"], serving["pixel_values"])
    other_row = datasets["serving"][1]["pixel_values"]
    assert not torch.equal(other_row, serving["pixel_values"])


# --- fresh draws ------------------------------------------------------------------------------------------------


def test_repeated_draws_of_a_row_get_distinct_reproducible_augmentation(rows, processor):
    dataset = RoadworkDataset(rows, processor, vocabularies=VOCABS, augmentation="heavy", seed=5)
    n = len(rows)
    assert decode_draw(encode_draw(3, 2, n), n) == (3, 2) and decode_draw(3, n) == (3, 0)
    first, second = dataset[3], dataset[encode_draw(3, 1, n)]
    assert first["id"] == second["id"]
    assert not torch.equal(first["pixel_values"], second["pixel_values"]), "a repeat must get fresh augmentation"
    torch.testing.assert_close(dataset[encode_draw(3, 1, n)]["pixel_values"], second["pixel_values"])

    weights = np.array([1.0] * (n - 1) + [50.0])  # the last row is drawn many times
    indices = list(make_gps_sampler(weights, seed=0))
    rows_drawn = [i % n for i in indices]
    assert len(set(indices)) == len(indices), "every draw is a distinct dataset index"
    assert rows_drawn.count(n - 1) > 1
    assert sorted(i // n for i in indices if i % n == n - 1) == list(range(rows_drawn.count(n - 1)))


# --- data selection ---------------------------------------------------------------------------------------------


def test_stratified_subset_is_seeded_and_keeps_both_classes():
    import datasets

    labels = [0] * 50 + [1] * 50  # sorted by class, like a folder sorted by file name
    split = datasets.Dataset.from_dict({"label": labels, "id": [str(i) for i in range(100)]})
    subset = stratified_subset(split, 10, seed=0)
    assert len(subset) == 10 and sorted(subset["label"]) == [0] * 5 + [1] * 5
    assert subset["id"] == stratified_subset(split, 10, seed=0)["id"]
    assert subset["id"] != stratified_subset(split, 10, seed=1)["id"]
    assert stratified_subset(split, None, seed=0) is split


def _image_bytes(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_image_label_folder(path: Path, with_hard_split: bool = False) -> Path:
    """A Parquet folder with only `image` and `label`: no GPS, tags, descriptions or masks."""
    import datasets

    rng = np.random.default_rng(0)

    def split(n, positive_rate):
        labels = (rng.random(n) < positive_rate).astype(int).tolist()
        labels[:2] = [0, 1]
        images = [{"bytes": _image_bytes((200, 90, 20) if y else (90, 90, 90)), "path": None} for y in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}).cast_column("image", datasets.Image())

    (path / "data").mkdir(parents=True)
    split(40, 0.5).to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))
    split(12, 0.5).to_parquet(str(path / "data" / "test-00000-of-00001.parquet"))
    if with_hard_split:
        hard = split(6, 1.0).filter(lambda row: row["label"] == 1)  # one class only
        hard.to_parquet(str(path / "data" / "hard-00000-of-00001.parquet"))
    return path


TINY_BACKBONE = json.dumps({
    "model_type": "dinov3_vit", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "patch_size": 16, "image_size": 32, "num_register_tokens": 0,
})  # fmt: skip
TINY_HEAD = json.dumps({
    "view_size": 32, "hidden_size": 32, "num_attention_heads": 2, "num_attention_layers": 1, "fusion_hidden_size": 32,
    "classifier_hidden_size": 16, "fusion_gate_hidden_size": 8, "pyramid_sizes": [16, 8],
})  # fmt: skip


def test_heads_without_labels_are_switched_off():
    import datasets

    bare = datasets.Dataset.from_dict({"label": [0, 1]})
    reasons = heads_without_labels(bare, {"weather_vocab": [], "daytime_vocab": [], "scene_vocab": []})
    assert set(reasons) == {"use_weather_head", "use_segmentation"}
    full = datasets.Dataset.from_dict({"label": [0, 1], "seg_masks": [b"x", None]})
    assert heads_without_labels(full, {"weather_vocab": ["sunny"]}) == {}


@pytest.mark.slow
def test_image_and_label_only_folder_trains_and_one_class_split_reports_undefined_mcc(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    data = _write_image_label_folder(tmp_path / "data", with_hard_split=True)
    out = tmp_path / "run"
    summary = train.main([
        "--dataset", str(data), "--extra_eval_splits", "hard", "--backbone_config", TINY_BACKBONE,
        "--model_overrides", TINY_HEAD, "--output_dir", str(out), "--use_cpu", "true", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
        "--gps_weighting", "false", "--use_text_embeddings", "false", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert "use_weather_head=False: no training row has a weather tag" in caplog.text
    assert "use_segmentation=False: no training row has seg_masks" in caplog.text
    config = json.loads((out / "config.json").read_text())
    assert config["use_weather_head"] is False and config["weather_vocab"] == []
    metrics = summary["metrics"]
    for condition in CONDITIONS:
        assert f"test_{condition}_mcc" in metrics
        assert f"hard_{condition}_accuracy" in metrics and f"hard_{condition}_recall" in metrics
        assert f"hard_{condition}_mcc" not in metrics and f"hard_{condition}_roc_auc" not in metrics
    card = (out / "README.md").read_text()
    assert "### hard" in card and "| mcc | undefined (one class) |" in card
    assert "nan" not in card.lower()
    assert "roadwork: best validation serving_mcc not evaluated at epoch nan" in capsys.readouterr().out


# --- evaluation outside the Trainer and the probe ---------------------------------------------------------------


def test_linear_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    features = rng.normal(size=(80, 16)) + labels[:, None] * 1.5
    probe = LinearProbe.fit(features, labels, seed=0)
    assert ((probe.predict_proba(features) > 0.5) == labels).mean() > 0.9
    with pytest.raises(ValueError, match="both classes"):
        LinearProbe.fit(features[:10], np.ones(10, dtype=int))


def test_evaluate_conditions_and_probe_on_a_tiny_model(rows, processor):
    torch.manual_seed(0)
    config = tiny_config(**VOCABS, view_size=VIEW_SIZE, use_text=False)
    model = RoadworkForImageClassification(config).eval()
    metrics = evaluate_split_conditions(model, rows, seed=0, image_processor=processor, batch_size=4)
    for condition in CONDITIONS:
        assert 0.0 <= metrics[f"{condition}_accuracy"] <= 1.0
    # Identical to the model's own forward on the serving dataset.
    dataset = condition_datasets(rows, processor, config, seed=0)["serving"]
    batch = RoadworkDataCollator(text_embed_dim=config.text_embed_dim)([dataset[i] for i in range(len(rows))])
    labels = batch.pop("labels")
    with torch.no_grad():
        predictions = (model(**batch).logits.softmax(-1)[:, 1] > 0.5).long()
    assert metrics["serving_accuracy"] == pytest.approx((predictions == labels).float().mean().item())

    baseline = linear_probe_baseline(model, rows, rows, seed=0, batch_size=4)
    assert list(baseline)[0].startswith("serving_")
    assert baseline["metadata_accuracy"] == baseline["no_metadata_accuracy"], "the probe reads no metadata"


def test_pipeline_serving_check_equals_the_serving_condition(rows, tmp_path):
    """A miner's `pipeline("image-classification")` on the seeded challenges scores what the serving condition does."""
    from roadwork_training.evaluation import pipeline_serving_probabilities, predict_probabilities

    torch.manual_seed(0)
    config = tiny_config(**VOCABS, view_size=VIEW_SIZE, use_text=False)
    model = RoadworkForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    RoadworkImageProcessor.from_model_config(config).save_pretrained(tmp_path / "ckpt")
    served, labels = pipeline_serving_probabilities(str(tmp_path / "ckpt"), rows, seed=5)
    processor = RoadworkImageProcessor.from_model_config(config)
    dataset = condition_datasets(rows, processor, config, seed=5)["serving"]
    expected, expected_labels = predict_probabilities(
        model, dataset, RoadworkDataCollator(text_embed_dim=config.text_embed_dim), batch_size=4
    )
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(served, expected, atol=1e-5)
