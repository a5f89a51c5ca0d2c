"""The synthetic dataset generator (data_collator/synthetic/) and loading it back (data_collator/schema.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_collator.metadata import parse_gps, parse_tag_list
from data_collator.schema import (
    ROADWORK_COLUMNS,
    decode_seg_masks,
    find_parquet_splits,
    gps_array,
    load_roadwork_splits,
)
from data_collator.synthetic import (
    CITIES,
    MANIFEST_NAME,
    SyntheticDatasetConfig,
    ensure_synthetic_dataset,
    generate_row,
    main,
)
from data_collator.synthetic.dataset import (
    _MALFORMED_GPS,
    HARD_TEST_SPLITS,
    _train_variant,
    generate_synthetic_dataset,
)
from data_collator.synthetic.scene import render_scene


EXPECTED_COLUMNS = list(ROADWORK_COLUMNS) + ["video_info.video_id", "video_info.frame_index", "seg_masks"]
SMALL = SyntheticDatasetConfig(num_train=14, num_test=6, seed=0, rows_per_shard=8)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "roadwork", SMALL)


def test_files_follow_the_hub_layout(synthetic_dir):
    names = sorted(p.name for p in (synthetic_dir / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    manifest = json.loads((synthetic_dir / MANIFEST_NAME).read_text())
    assert manifest["splits"]["train"]["rows"] == 14 and manifest["splits"]["test"]["rows"] == 6


@pytest.mark.parametrize("how", ["parquet_data_dir", "folder"])
def test_round_trip_through_datasets(synthetic_dir, how):
    import datasets

    if how == "parquet_data_dir":
        dataset = datasets.load_dataset("parquet", data_dir=str(synthetic_dir / "data"))
    else:
        dataset = datasets.load_dataset(str(synthetic_dir))
    assert sorted(dataset) == ["test", "train"]
    assert (len(dataset["train"]), len(dataset["test"])) == (14, 6)
    train = dataset["train"]
    assert train.column_names == EXPECTED_COLUMNS
    assert isinstance(train.features["image"], datasets.Image)
    row = train[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (row["width"], row["height"])
    assert set(train["label"]) == {0, 1}
    assert isinstance(row["date_captured"], int) and isinstance(row["gps"], str)


def test_load_roadwork_splits_keeps_bytes_and_filters(synthetic_dir):
    import datasets

    splits = load_roadwork_splits(synthetic_dir)
    image = splits["train"][0]["image"]
    assert (
        isinstance(splits["train"].features["image"], datasets.Image) and not splits["train"].features["image"].decode
    )
    assert isinstance(image["bytes"], bytes) and Image.open(io.BytesIO(image["bytes"])).format == "JPEG"
    filtered = load_roadwork_splits(synthetic_dir, splits=["train"], consistency_filter=True)
    assert list(filtered) == ["train"] and len(filtered["train"]) <= 14
    with pytest.raises(ValueError, match="validation"):
        load_roadwork_splits(synthetic_dir, splits=["validation"])


def test_rows_are_deterministic_in_the_seed():
    a, b = generate_row(SMALL, "train", 3), generate_row(SMALL, "train", 3)
    assert a == b
    other_seed = generate_row(SyntheticDatasetConfig(seed=1), "train", 3)
    assert other_seed["image"]["bytes"] != a["image"]["bytes"]
    assert generate_row(SMALL, "test", 3)["image"]["bytes"] != a["image"]["bytes"]


def test_ensure_reuses_and_regenerates(synthetic_dir):
    shard = synthetic_dir / "data" / "test-00000-of-00001.parquet"
    before = shard.stat().st_mtime_ns
    assert ensure_synthetic_dataset(synthetic_dir, SMALL) == synthetic_dir
    assert shard.stat().st_mtime_ns == before  # same settings: not regenerated


def test_ensure_regenerates_when_settings_change(tmp_path):
    path = tmp_path / "ds"
    ensure_synthetic_dataset(path, SyntheticDatasetConfig(num_train=2, num_test=1, mask_rate=0.0))
    assert json.loads((path / MANIFEST_NAME).read_text())["config"]["num_train"] == 2
    ensure_synthetic_dataset(path, SyntheticDatasetConfig(num_train=3, num_test=1, mask_rate=0.0))
    assert json.loads((path / MANIFEST_NAME).read_text())["config"]["num_train"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_metadata_looks_like_the_real_data(synthetic_dir):
    splits = load_roadwork_splits(synthetic_dir)
    rows = list(splits["train"]) + list(splits["test"])
    gps = gps_array(rows)
    valid = ~np.isnan(gps).any(1)
    assert valid.mean() >= 0.75  # ~4 % malformed in expectation; 4 of these 20 rows happen to be
    centres = np.array([(lat, lon) for _, lat, lon in CITIES])
    distance = np.abs(gps[valid][:, None, :] - centres[None]).max(-1).min(1)
    assert (distance < 0.5).all()  # every valid point is near one of the cities
    assert {r["city_name"] for r in rows} <= {name for name, _, _ in CITIES}
    for row in rows:
        assert row["gps"] == "" or row["gps"] in _MALFORMED_GPS or row["gps"].startswith("[")
        tags = parse_tag_list(row["scene_level_tags.weather"])
        assert all(t == t.lower() for t in tags)
        masks = decode_seg_masks(row["seg_masks"])
        assert masks is None or masks.shape == (6, 32, 32)
        if row["label"] == 1 and row["scene_description"] not in ("", "No Description"):
            text = row["scene_description"].lower()
            assert any(word in text for word in ("cone", "barrier", "sign", "worker", "vehicle", "equipment"))


def test_every_malformed_gps_string_parses_to_none():
    assert all(parse_gps(value) is None for value in _MALFORMED_GPS)


@pytest.mark.parametrize("rate, expect_null", [(1.0, True), (0.0, False)])
def test_metadata_null_rate(rate, expect_null):
    config = SyntheticDatasetConfig(metadata_null_rate=rate, mask_rate=0.0)
    for index in range(3):
        row = generate_row(config, "train", index)
        tags = [row[f"scene_level_tags.{k}"] for k in ("daytime", "scene_environment", "weather")]
        assert all(parse_tag_list(t) == [] for t in tags) == expect_null
        assert "seg_masks" not in row


def test_label_rate_follows_the_config():
    config = SyntheticDatasetConfig(train_positive_rate=1.0, test_positive_rate=0.0)
    assert generate_row(config, "train", 0)["label"] == 1
    assert generate_row(config, "test", 0)["label"] == 0
    with pytest.raises(ValueError, match="mask_rate"):
        SyntheticDatasetConfig(mask_rate=2.0)


def test_cli(tmp_path):
    out = main(
        [
            "--output_dir",
            str(tmp_path / "cli"),
            "--num_train",
            "2",
            "--num_test",
            "1",
            "--seed",
            "5",
            "--mask_rate",
            "0",
        ]
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["config"]["seed"] == 5 and manifest["splits"]["test"]["rows"] == 1


def test_module_command_line_runs_from_a_fresh_process(tmp_path):
    # `python -m data_collator.synthetic` runs the package's __main__ while data_collator imports the package
    # eagerly: no "found in sys.modules" RuntimeWarning, and --help lists the SyntheticDatasetConfig fields.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "data_collator.synthetic", "--help"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for flag in ("--output_dir", "--num_train", "--mask_rate", "--jpeg_quality"):
        assert flag in result.stdout
    assert "--version" not in result.stdout  # the generator's version is not an argument


# --- scene variants and their hard test splits ------------------------------------------------------------------


def _object_coverage(row) -> float:
    """Share of the image covered by any roadwork object (the max over the class masks, 0..1)."""
    masks = decode_seg_masks(row["seg_masks"], 6).astype(np.float32)
    return float(masks.max(0).mean() / (255.0 if masks.max() > 1 else 1.0))


def _orange_share(row) -> float:
    image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")).astype(int)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return float(((r > 200) & (g > 70) & (g < 170) & (b < 80)).mean())


def test_hard_splits_are_balanced_and_ask_their_question():
    config = SyntheticDatasetConfig(mask_rate=1.0)
    rows = {split: [generate_row(config, split, i) for i in range(60)] for split in ("test", *HARD_TEST_SPLITS)}
    for split, split_rows in rows.items():
        share = np.mean([r["label"] for r in split_rows])
        assert 0.35 < share < 0.65, (split, share)
    positives = {split: [r for r in split_rows if r["label"] == 1] for split, split_rows in rows.items()}
    negatives = {split: [r for r in split_rows if r["label"] == 0] for split, split_rows in rows.items()}
    # Small: every roadwork object together covers under 1% of the image, and is still there.
    small = [_object_coverage(r) for r in positives["test_small"]]
    assert max(small) < 0.01 and min(small) > 0, small
    assert np.mean([_object_coverage(r) for r in positives["test"]]) > 10 * np.mean(small)
    # Occluded: cars hide part of the objects, and (almost) never all of them. The same scene (same seed: the
    # objects are placed before the occluding cars are) drawn without its occluders shows more object.
    occluded = np.array([_object_coverage(r) for r in positives["test_occluded"]])
    assert (occluded == 0).mean() <= 0.05
    hidden = []
    for seed in range(30):
        args = (640, 480, True, "Sunny", "Light", "Urban")
        with_cars = render_scene(np.random.default_rng(seed), *args, "occluded")[1].max(0).mean()
        without = render_scene(np.random.default_rng(seed), *args, "standard")[1].max(0).mean()
        hidden.append(1 - with_cars / without)
    assert np.mean(hidden) > 0.25, np.mean(hidden)
    # Distractor: roadwork-free scenes with far more orange than ordinary roadwork-free scenes, and no object.
    assert all(_object_coverage(r) == 0 for r in negatives["test_distractor"])
    assert np.mean([_orange_share(r) for r in negatives["test_distractor"]]) > 3 * np.mean(
        [_orange_share(r) for r in negatives["test"]]
    )


def test_hard_splits_are_written_when_asked(tmp_path):
    config = SyntheticDatasetConfig(num_train=2, num_test=2, num_hard_test=4, mask_rate=0.0)
    generate_synthetic_dataset(tmp_path, config)
    splits = find_parquet_splits(tmp_path)
    assert set(splits) == {"train", "test", *HARD_TEST_SPLITS}
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert {name: counts["rows"] for name, counts in manifest["splits"].items()} == {
        "train": 2, "test": 2, **dict.fromkeys(HARD_TEST_SPLITS, 4)
    }  # fmt: skip
    with pytest.raises(ValueError, match="variant"):
        render_scene(np.random.default_rng(0), 64, 48, True, "Sunny", "Light", "Urban", "tiny")


def test_train_hard_fraction_mixes_hard_scenes_into_train_only():
    plain = SyntheticDatasetConfig(mask_rate=1.0)
    mixed = SyntheticDatasetConfig(mask_rate=1.0, train_hard_fraction=0.6)
    n = 90
    variants = [_train_variant(mixed, i) for i in range(n)]
    counts = {v: variants.count(v) for v in ("standard", *HARD_TEST_SPLITS.values())}
    assert 0.25 < counts["standard"] / n < 0.55, counts  # about 40% stay standard
    assert all(counts[v] >= 8 for v in HARD_TEST_SPLITS.values()), counts  # each hard variant about 20%
    assert {_train_variant(plain, i) for i in range(n)} == {"standard"}
    switched = 0
    for i in range(n):  # a row that stays standard is byte-identical; a switched one is another image
        a, b = generate_row(plain, "train", i), generate_row(mixed, "train", i)
        assert a["label"] == b["label"] and a["id"] == b["id"]
        # As in the hard test splits, a roadwork-free small or occluded scene and a roadwork distractor scene are
        # standard scenes.
        drawn_as = variants[i] if (variants[i] == "distractor") != bool(a["label"]) else "standard"
        assert (a["image"]["bytes"] == b["image"]["bytes"]) == (drawn_as == "standard"), (i, variants[i])
        switched += drawn_as != "standard"
    assert switched >= 20, switched
    small = [
        _object_coverage(generate_row(mixed, "train", i))
        for i in range(n)
        if variants[i] == "small" and generate_row(mixed, "train", i)["label"] == 1
    ]
    assert small and max(small) < 0.01, small  # the small variant's distant objects reach the train split
    assert generate_row(mixed, "test", 3) == generate_row(plain, "test", 3)  # test splits are untouched
    with pytest.raises(ValueError, match="train_hard_fraction"):
        SyntheticDatasetConfig(train_hard_fraction=1.5)
