"""Reading rows, the dataset and the collator (data_collator/schema.py, data_collator/collator.py)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data_collator.augmentation import RoadworkValidatorTransform
from data_collator.collator import (
    FORWARD_KEYS,
    SEED_STREAM_TRANSFORM,
    RoadworkDataCollator,
    RoadworkDataset,
    example_seed,
)
from data_collator.schema import (
    build_vocabularies,
    consistent_mask,
    decode_seg_masks,
    encode_seg_masks,
    filter_consistent_rows,
    find_parquet_splits,
    gps_array,
    labels_array,
)
from data_collator.synthetic import SyntheticDatasetConfig, generate_row
from data_collator.view_coverage import view_coverage
from modeling_roadwork.image_processing_roadwork import RoadworkImageProcessor


VIEW_SIZE = 32
VOCABS = {
    "weather_vocab": ["sunny", "cloudy", "overcast", "rainy", "foggy"],
    "daytime_vocab": ["light", "dark", "twilight"],
    "scene_vocab": ["urban", "highway", "residential", "rural"],
}


@pytest.fixture(scope="module")
def rows():
    """Six synthetic rows of the real schema, with masks on some (deterministic)."""
    config = SyntheticDatasetConfig(seed=0, mask_rate=0.7)
    return [generate_row(config, "train", i) for i in range(6)]


@pytest.fixture(scope="module")
def processor():
    return RoadworkImageProcessor(view_size=VIEW_SIZE)


def _jpeg_bytes(size=(64, 48), color=(200, 90, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


# --- schema ---------------------------------------------------------------------------------------------------


def _desc_rows():
    return [
        {"label": 1, "scene_description": "Cones on the right."},  # consistent
        {"label": 0, "scene_description": ""},  # consistent
        {"label": 0, "scene_description": None},  # consistent
        {"label": 0, "scene_description": "A clear road."},  # described but label 0 -> dropped
        {"label": 1, "scene_description": ""},  # undescribed but label 1 -> dropped
        {"label": 1, "scene_description": None},  # undescribed but label 1 -> dropped
        {"label": 0, "scene_description": "No Description"},  # validator: a non-empty string counts -> dropped
        {"label": 1, "scene_description": "No Description"},  # validator: kept; clean rule: dropped
        {"label": 1, "scene_description": float("nan")},  # NaN is a null -> dropped
    ]


def test_consistency_filter_validator_rule_counts():
    filtered, report = filter_consistent_rows(_desc_rows(), rule="validator")
    assert (report.total, report.kept, report.described_but_none, report.undescribed_but_roadwork) == (9, 4, 2, 3)
    assert report.dropped == 5
    assert [r["scene_description"] for r in filtered] == ["Cones on the right.", "", None, "No Description"]
    assert "kept 4/9" in report.summary()


def test_consistency_filter_clean_rule_counts():
    _, report = filter_consistent_rows(_desc_rows(), rule="clean")
    assert (report.kept, report.described_but_none, report.undescribed_but_roadwork) == (4, 1, 4)
    with pytest.raises(ValueError, match="'loose'"):
        consistent_mask(_desc_rows(), rule="loose")


def test_consistency_filter_on_a_datasets_dataset_and_a_dict_of_columns():
    import datasets

    rows = [r for r in _desc_rows() if not isinstance(r["scene_description"], float)]
    columns = {"label": [r["label"] for r in rows], "scene_description": [r["scene_description"] for r in rows]}
    filtered, report = filter_consistent_rows(datasets.Dataset.from_dict(columns))
    assert len(filtered) == report.kept == 4
    filtered_columns, report_columns = filter_consistent_rows(columns)
    assert filtered_columns["label"] == filtered["label"] and report_columns == report


def test_build_vocabularies_is_deterministic_and_counts_all_weather_tags():
    columns = ("scene_level_tags.weather", "scene_level_tags.daytime", "scene_level_tags.scene_environment")
    values = [("['Cloudy', 'Rainy']", "Light", "Urban"), ("['Rainy']", "Dark", None), (None, "light", "null"),
              ("[]", "", "Highway")]  # fmt: skip
    rows = [dict(zip(columns, v)) for v in values]
    vocabs = build_vocabularies(rows)
    assert vocabs == {
        "weather_vocab": ["rainy", "cloudy"],
        "daytime_vocab": ["light", "dark"],
        "scene_vocab": ["highway", "urban"],
    }
    assert build_vocabularies(rows[::-1]) == vocabs
    assert build_vocabularies({"label": [1, 0]}) == {"weather_vocab": [], "daytime_vocab": [], "scene_vocab": []}


def test_gps_array_and_labels_array():
    rows = [
        {"gps": "[39.7, -86.1]", "label": 1},
        {"gps": "bad", "label": 0},
        {"gps": None, "label": None},
        {"gps": "[0, 0]"},
    ]
    gps = gps_array(rows)
    assert gps.shape == (4, 2) and gps.dtype == np.float64
    np.testing.assert_allclose(gps[0], [39.7, -86.1])
    assert np.isnan(gps[1:]).all()
    assert labels_array(rows).tolist() == [1, 0, -1, -1]


def test_find_parquet_splits(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "test-00000-of-00001.parquet"):
        (data / name).write_bytes(b"")
    splits = find_parquet_splits(tmp_path)
    assert sorted(splits) == ["test", "train"] and len(splits["train"]) == 2
    assert find_parquet_splits(tmp_path / "nothing") == {}


def test_seg_mask_codec():
    masks = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    decoded = decode_seg_masks(encode_seg_masks(masks))
    assert decoded.shape == (6, 32, 32) and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, masks, atol=1 / 255)
    assert decode_seg_masks(None) is None and decode_seg_masks(b"") is None
    np.testing.assert_array_equal(decode_seg_masks((masks > 0.5).tolist()), (masks > 0.5).astype(np.float32))
    with pytest.raises(ValueError):
        decode_seg_masks(b"\x00" * 100)
    with pytest.raises(ValueError):
        decode_seg_masks(np.zeros((5, 8, 8)))


# --- dataset and collator -------------------------------------------------------------------------------------


def test_collator_keys_shapes_and_dtypes(rows, processor):
    dataset = RoadworkDataset(rows, processor, VOCABS, augmentation="heavy", seed=0)
    batch = RoadworkDataCollator()([dataset[i] for i in range(len(rows))])
    assert set(batch) <= set(FORWARD_KEYS)
    B, V = len(rows), 12
    expected = {
        "pixel_values": ((B, V, 3, VIEW_SIZE, VIEW_SIZE), torch.float32),
        "gps": ((B, 2), torch.float32),
        "weather_ids": ((B,), torch.int64),
        "daytime_ids": ((B,), torch.int64),
        "scene_ids": ((B,), torch.int64),
        "text_embeds": ((B, 384), torch.float32),
        "labels": ((B,), torch.int64),
        "weather_labels": ((B,), torch.int64),
        "seg_masks": ((B, 6, 32, 32), torch.float32),
        "seg_mask_valid": ((B,), torch.bool),
        "view_coverage": ((B, V), torch.float32),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
    assert torch.isfinite(batch["pixel_values"]).all()
    assert batch["labels"].tolist() == [r["label"] for r in rows]
    assert batch["seg_mask_valid"].tolist() == [r["seg_masks"] is not None for r in rows]
    assert batch["seg_masks"][~batch["seg_mask_valid"]].eq(0).all()
    assert ((batch["seg_masks"] >= 0) & (batch["seg_masks"] <= 1)).all()
    known = batch["weather_ids"] > 0
    assert torch.equal(batch["weather_labels"][known], batch["weather_ids"][known] - 1)
    assert batch["weather_labels"][~known].eq(-100).all()
    assert torch.equal(torch.isnan(batch["gps"]).all(1), torch.isnan(batch["gps"]).any(1))  # whole rows only


def test_no_augmentation_is_exactly_the_serving_path(rows, processor):
    dataset = RoadworkDataset(rows[:2], processor, VOCABS, augmentation="none")
    for i, row in enumerate(rows[:2]):
        expected = processor(row["image"], return_tensors="pt")["pixel_values"][0]
        assert torch.equal(dataset[i]["pixel_values"], expected)


def test_whole_image_transform_decodes_as_serving_does(rows, processor):
    # An RGBA PNG whose transparent half hides red: the processor composites it on white, as it does at serving
    # time; a plain `.convert("RGB")` (a decoder of its own) would show the red.
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:, :32, 3] = 255, 255
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    cell = {"bytes": buffer.getvalue(), "path": "rgba.png"}
    seen = []

    def identity(image, seed=None):
        seen.append(image)
        return image

    dataset = RoadworkDataset([dict(rows[0], image=cell)], processor, VOCABS, image_transform=identity)
    pixel_values = dataset[0]["pixel_values"]
    assert seen and seen[0].mode == "RGB" and seen[0].size == (64, 48)
    assert torch.equal(pixel_values, processor(cell, return_tensors="pt")["pixel_values"][0])
    plain = Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
    assert not torch.equal(pixel_values, processor(plain, return_tensors="pt")["pixel_values"][0])


def test_seeded_dataset_is_reproducible_per_epoch(rows, processor):
    a = RoadworkDataset(rows[:1], processor, VOCABS, augmentation="heavy", seed=3)
    b = RoadworkDataset(rows[:1], processor, VOCABS, augmentation="heavy", seed=3)
    first = a[0]["pixel_values"]
    assert torch.equal(first, b[0]["pixel_values"]) and torch.equal(first, a[0]["pixel_values"])
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["pixel_values"])


def test_validator_image_transform_feeds_the_processor(rows, processor):
    dataset = RoadworkDataset(rows[:2], processor, VOCABS, image_transform="validator", seed=0)
    example = dataset[0]
    assert example["pixel_values"].shape == (12, 3, VIEW_SIZE, VIEW_SIZE)
    with pytest.raises(ValueError, match="image_transform"):
        RoadworkDataset(rows, processor, VOCABS, augmentation="validator")


def test_challenge_masks_and_view_coverage_follow_the_transform(rows, processor):
    """The validators' challenge moves the masks with the image; view_coverage is measured in the challenge frame."""
    row = next(r for r in rows if r["seg_masks"] is not None and r["label"] == 1)
    transform = RoadworkValidatorTransform()
    dataset = RoadworkDataset([row], processor, VOCABS, image_transform=transform, seed=0)
    example = dataset[0]
    source = decode_seg_masks(row["seg_masks"])
    assert transform.last_params["applied"] and transform.last_params["source_size"] == (row["width"], row["height"])
    np.testing.assert_allclose(example["seg_masks"], transform.warp_masks(source, size=source.shape[-1]), atol=1e-6)
    union = transform.warp_masks(source.max(axis=0)[None], size=224)[0]
    expected = view_coverage(union, (224, 224), processor.view_boxes(224, 224))
    np.testing.assert_allclose(example["view_coverage"], expected, atol=1e-6)
    assert example["view_coverage"].shape == (12,) and example["view_coverage"][0] > 0
    # untransformed: the coverage of the source masks over the source image's boxes
    plain = RoadworkDataset([row], processor, VOCABS, seed=0)[0]["view_coverage"]
    boxes = processor.view_boxes(row["width"], row["height"])
    np.testing.assert_allclose(plain, view_coverage(source.max(axis=0), (row["width"], row["height"]), boxes),
                               atol=1e-6)  # fmt: skip
    # a transform that cannot move masks drops them (and so the coverage)
    dropped = RoadworkDataset([row], processor, VOCABS, image_transform=lambda image, seed=None: image, seed=0)[0]
    assert dropped["seg_masks"] is None and dropped["view_coverage"] is None


def test_view_coverage_is_the_mask_mean_over_each_box():
    union = np.zeros((40, 80), dtype=np.float32)
    union[0:10, 0:20] = 1.0  # the top-left quarter of the top-left quarter
    boxes = [(0, 0, 160, 80), (0, 0, 40, 20), (0, 0, 80, 40), (80, 40, 160, 80)]
    np.testing.assert_allclose(view_coverage(union, (160, 80), boxes), [1 / 16, 1.0, 0.25, 0.0], atol=0.02)
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        view_coverage(np.zeros((1, 4, 4)), (4, 4), boxes)


def test_partial_validator_transform_keeps_source_masks_where_it_did_not_act(rows, processor):
    """--serving_augmentation below 1: rows left whole keep their masks as they are; challenges get them warped."""
    with_masks = [r for r in rows if r["seg_masks"] is not None][:6]
    transform = RoadworkValidatorTransform(probability=0.5)
    dataset = RoadworkDataset(with_masks, processor, VOCABS, image_transform=transform, seed=1)
    outcomes = []
    for i in range(len(with_masks)):
        for epoch in range(3):
            dataset.set_epoch(epoch)
            example = dataset[i]
            applied = transform.applies(example_seed(1, epoch, i, SEED_STREAM_TRANSFORM, 0))
            outcomes.append(applied)
            source = decode_seg_masks(with_masks[i]["seg_masks"])
            assert example["seg_masks"] is not None
            if source.max() > 0:  # a roadwork-free row's masks are zero in any frame
                assert np.allclose(example["seg_masks"], source, atol=1e-6) != applied
            if not applied:  # untouched: exactly the plain training example
                plain = RoadworkDataset(with_masks, processor, VOCABS, seed=1)
                plain.set_epoch(epoch)
                assert torch.equal(example["pixel_values"], plain[i]["pixel_values"])
    assert any(outcomes) and not all(outcomes)


def test_corrupt_images_are_flagged_counted_logged_once_and_dropped(rows, processor, caplog):
    good = [dict(r) for r in rows[:2]]
    bad_bytes = dict(rows[2], image={"bytes": b"definitely not a jpeg", "path": "x.jpg"}, id="bad-1")
    truncated = dict(rows[3], image={"bytes": rows[3]["image"]["bytes"][:300], "path": None}, id="bad-2")
    no_image = dict(rows[4], image=None, id="bad-3")
    dataset = RoadworkDataset(
        [good[0], bad_bytes, truncated, no_image, good[1]], processor, VOCABS, augmentation="light", seed=0
    )
    with caplog.at_level(logging.WARNING, logger="data_collator.collator"):
        examples = [dataset[i] for i in range(5)]
        dataset[1]  # the same row again: counted, not logged again
    assert [e.get("corrupt", False) for e in examples] == [False, True, True, True, False]
    assert examples[1]["labels"] == bad_bytes["label"] and examples[1]["id"] == "bad-1"
    assert dataset.num_corrupt == 4 and dataset.corrupt_ids == {"bad-1", "bad-2", "bad-3"}
    dataset_warnings = [r for r in caplog.records if "does not decode" in r.getMessage()]
    assert len(dataset_warnings) == 3

    collator = RoadworkDataCollator()
    batch = collator(examples)
    assert batch["pixel_values"].shape[0] == 2 and batch["labels"].tolist() == [good[0]["label"], good[1]["label"]]
    assert collator.num_dropped == 3
    refill = collator([examples[1], examples[2]])  # nothing decodable: the last good example stands in
    assert refill["pixel_values"].shape[0] == 1 and collator.num_dropped == 5
    assert torch.equal(refill["pixel_values"][0], examples[4]["pixel_values"])
    with pytest.raises(RuntimeError, match="corrupt"):
        RoadworkDataCollator()([examples[1]])


def test_corrupt_rows_survive_a_dataloader(rows, processor):
    rows_with_bad = list(rows[:3]) + [dict(rows[3], image={"bytes": b"\xff\xd8\xff garbage", "path": None})]
    dataset = RoadworkDataset(rows_with_bad, processor, VOCABS, augmentation="light", seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=RoadworkDataCollator(), num_workers=0)
    sizes = [batch["labels"].shape[0] for batch in loader]
    assert sizes == [2, 1]


def test_text_embedder_and_cached_features(rows, processor):
    dataset = RoadworkDataset(rows[:3], processor, VOCABS)
    examples = [dataset[i] for i in range(3)]
    seen = []

    def embedder(texts):
        seen.append(list(texts))
        return torch.stack([torch.full((384,), float(len(t))) if t else torch.zeros(384) for t in texts])

    batch = RoadworkDataCollator(text_embedder=embedder)(examples)
    descriptions = [e["description"] for e in examples]
    assert None in descriptions and any(descriptions)  # both cases are exercised
    assert seen == [descriptions]
    for embed, text in zip(batch["text_embeds"], descriptions):
        assert embed.eq(len(text) if text else 0).all()
    assert RoadworkDataCollator()(examples)["text_embeds"].eq(0).all()
    with pytest.raises(ValueError, match="text_embedder returned"):
        RoadworkDataCollator(text_embedder=lambda texts: torch.zeros(len(texts), 8))(examples)

    # Rows carrying cached backbone features and text embeddings skip decoding entirely.
    cached_rows = [dict(r, image={"bytes": b"unused", "path": None}, view_features=np.ones((12, 16), np.float32),
                        text_embeds=np.full(384, 0.5, np.float32)) for r in rows[:2]]  # fmt: skip
    cached = RoadworkDataset(cached_rows, processor, VOCABS, augmentation="heavy")
    batch = RoadworkDataCollator()([cached[0], cached[1]])
    assert "pixel_values" not in batch and batch["view_features"].shape == (2, 12, 16)
    assert batch["text_embeds"].eq(0.5).all() and cached.num_corrupt == 0
    assert set(batch) <= set(FORWARD_KEYS)


def test_dataset_logs_one_metadata_summary_for_the_split(rows, processor, caplog):
    bad = [dict(rows[0], gps="nonsense"), dict(rows[1], gps="[0, 0]"), dict(rows[2], gps="also bad")]
    with caplog.at_level(logging.INFO, logger="data_collator.metadata"):
        dataset = RoadworkDataset(bad, processor, VOCABS)
        dataset[0]
    lines = [r.getMessage() for r in caplog.records if r.name == "data_collator.metadata"]
    assert len(lines) == 1 and "3 rows" in lines[0] and "gps_malformed=2" in lines[0] and "gps_zero=1" in lines[0]
    assert dataset.report.counts["gps_malformed"] == 1  # the per-item report counts what this process parsed


def test_seg_masks_are_resized_and_flagged(rows, processor):
    dataset = RoadworkDataset(rows, processor, VOCABS)
    examples = [dataset[i] for i in range(len(rows))]
    batch = RoadworkDataCollator(seg_mask_size=8)(examples)
    assert batch["seg_masks"].shape == (len(rows), 6, 8, 8)
    no_masks = RoadworkDataset(rows, processor, VOCABS, with_seg_masks=False)
    assert "seg_masks" not in RoadworkDataCollator()([no_masks[0]])
    none_valid = RoadworkDataCollator()([dict(examples[0], seg_masks=None)])
    assert none_valid["seg_masks"].shape == (1, 6, 32, 32) and not none_valid["seg_mask_valid"].any()


def test_roadwork_rows_have_masks_where_the_objects_are(rows, processor):
    dataset = RoadworkDataset(rows, processor, VOCABS)
    checked = set()
    for i, row in enumerate(rows):
        masks = dataset[i]["seg_masks"]
        if masks is not None:
            assert (masks.sum() > 0) == bool(row["label"])
            checked.add(row["label"])
    assert checked == {0, 1}


def test_batch_runs_through_the_model(rows, processor):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from roadwork_testing import tiny_config

    from modeling_roadwork import RoadworkForImageClassification

    torch.manual_seed(0)
    config = tiny_config()
    dataset = RoadworkDataset(rows[:4], processor, config, augmentation="light", seed=0)
    batch = RoadworkDataCollator()([dataset[i] for i in range(4)])
    output = RoadworkForImageClassification(config)(**batch)
    assert output.logits.shape == (4, 2) and torch.isfinite(output.loss)


@pytest.mark.parametrize(
    "config_class, flags",
    [
        (
            "RoadworkGPSWeightingConfig",
            ["--num_clusters", "3", "--bracket_weights", "8", "2", "1", "0.5", "--min_fraction_within_50km", "0.4",
             "--min_fraction_within_100km", "0.6", "--max_mean_distance_km", "200"],
        ),
        ("SyntheticDatasetConfig", ["--num_train", "12", "--mask_rate", "0.5"]),
        ("RoadworkAugmentationConfig",
         ["--strength", "light", "--zoom_range", "0.9", "1.1", "--motion_blur_kernel", "3", "7"]),
    ],
)  # fmt: skip
def test_data_configs_parse_as_command_line_flags(config_class, flags):
    # train.py parses these dataclasses with HfArgumentParser instead of mirroring their fields: every field must
    # be a parsable flag with a help text, and the GPS pass criteria (which the failure advice tells users to relax)
    # must be among them.
    from dataclasses import fields

    from transformers import HfArgumentParser

    import data_collator

    cls = getattr(data_collator, config_class)
    parser = HfArgumentParser(cls)
    help_text = " ".join(parser.format_help().split())
    for f in fields(cls):
        if f.init:
            assert f.metadata.get("help"), f"{config_class}.{f.name} has no help"
            assert f"--{f.name}" in help_text
    (parsed,) = parser.parse_args_into_dataclasses(args=flags)
    assert parsed == cls(**{f.name: getattr(parsed, f.name) for f in fields(cls) if f.init})
    given = dict(zip(flags[::1], flags[1:]))
    for flag, value in given.items():
        if flag.startswith("--") and not value.startswith("--"):
            parsed_value = getattr(parsed, flag[2:])
            first = parsed_value[0] if isinstance(parsed_value, list) else parsed_value
            assert str(first) == value or float(first) == float(value), (flag, parsed_value)
