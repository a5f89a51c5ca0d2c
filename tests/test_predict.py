"""predict.py: inputs of every kind (no input lost), TTA and FOODS, ensembles sharing the backbone, the report."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from data_collator import RoadworkDataCollator, SyntheticDatasetConfig, ensure_synthetic_dataset, load_roadwork_splits
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
from roadwork_training.build import condition_datasets
from roadwork_training.ensemble import RoadworkEnsemble, load_ensemble
from roadwork_training.predict import atomic_write
from roadwork_training.predict_inputs import normalize_on_device
from roadwork_training.report import balanced_indices, windowed_reward
from roadwork_training.tta import (
    FOODS_VARIANTS,
    fit_ood_stats,
    foods_weights,
    fuse_tta,
    load_ood_stats,
    save_ood_stats,
    tta_variants,
)
from tests.roadwork_testing import tiny_config


def _image(size=(96, 64), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    model = RoadworkForImageClassification(tiny_config(use_text=False)).eval()
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return str(ensure_synthetic_dataset(folder, SyntheticDatasetConfig(num_train=24, num_test=16)))


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- TTA and FOODS ------------------------------------------------------------------------------------------------


def test_tta_variants_are_16_deterministic_and_keep_the_size():
    assert len(FOODS_VARIANTS) == 16 and len({v.name for v in FOODS_VARIANTS}) == 16
    assert [len(tta_variants(m)) for m in ("none", "flip", "mean", "foods")] == [1, 2, 16, 16]
    image = _image((120, 80))
    original = np.asarray(image)
    for variant in FOODS_VARIANTS:
        out = variant(image)
        assert out.size == image.size and out.mode == "RGB", variant.name
        assert np.array_equal(np.asarray(variant(image)), np.asarray(out)), variant.name  # deterministic
        if variant.name != "original":
            assert not np.array_equal(np.asarray(out), original), variant.name
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_variants("heavy")


def test_foods_keeps_the_closest_80_percent_with_softmax_weights():
    distances = torch.arange(16, dtype=torch.float32).flip(0)[None]  # variant 15 is the closest
    weights = foods_weights(distances)
    assert (weights > 0).sum() == 13 and torch.isclose(weights.sum(), torch.tensor(1.0))
    assert torch.all(weights[0, :3] == 0)  # the three farthest are dropped
    expected = torch.softmax(-distances[0, 3:], dim=0)
    assert torch.allclose(weights[0, 3:], expected)
    probabilities = torch.linspace(0, 1, 16)[None]
    assert torch.isclose(fuse_tta(probabilities, "mean"), probabilities.mean())
    assert torch.isclose(fuse_tta(probabilities, "foods", distances), (weights * probabilities).sum())
    with pytest.raises(ValueError, match="distances"):
        fuse_tta(probabilities, "foods")


def test_ood_stats_from_fewer_rows_than_dimensions(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 64))  # N < d: the sample covariance is singular, the shrunk one is not
    stats = fit_ood_stats(features)
    assert 0 < stats.shrinkage <= 1 and stats.ridge > 0 and stats.num_rows == 20
    assert np.isfinite(stats.precision.numpy()).all()
    assert stats.distance(stats.mean.float()[None]).item() == pytest.approx(0.0, abs=1e-3)
    far = stats.distance(torch.as_tensor(features[:1] * 10, dtype=torch.float32))
    near = stats.distance(torch.as_tensor(features[:1], dtype=torch.float32))
    assert far.item() > near.item() > 0
    loaded = load_ood_stats(save_ood_stats(stats, tmp_path))
    assert torch.equal(loaded.precision, stats.precision) and loaded.shrinkage == stats.shrinkage
    with pytest.raises(ValueError, match="refit"):
        stats.distance(torch.zeros(1, 32))


def test_normalize_on_device_matches_the_processor():
    processor = RoadworkImageProcessor.from_model_config(tiny_config())
    views = processor.extract_views(_image())
    expected = processor.normalize(views)
    got = normalize_on_device(torch.from_numpy(views)[None, None], processor)[0, 0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)


# --- ensembles ----------------------------------------------------------------------------------------------------


def test_hand_written_ensemble_file(tmp_path):
    (tmp_path / "base").mkdir()
    path = tmp_path / "ensemble.json"
    members = [{"model": "base", "adapter": None, "weight": 1, "validation_serving_mcc": 0.6},
               {"model": "base", "adapter": None, "weight": 3, "validation_serving_mcc": -0.1}]  # fmt: skip
    p = np.array([[0.2, 0.6], [0.9, 0.1]])
    # The one format (roadwork_training/ensemble.py): `mean` ignores the weights, `mcc_weighted` uses the file's
    # weights normalised (finetune_dora.py writes them from the clipped MCCs).
    for combine, expected in (
        ("mean", p.mean(axis=1)),
        ("mcc_weighted", p @ [0.25, 0.75]),
        ("stacked", 1 / (1 + np.exp(-(p @ [2.0, -1.0] + 0.5)))),
    ):
        path.write_text(json.dumps({"members": members, "combine": combine,
                                    "stacking": {"coefficients": [2.0, -1.0], "intercept": 0.5}}))  # fmt: skip
        ensemble = load_ensemble(str(path))
        assert ensemble.resolved_members()[0].model == str(tmp_path / "base")  # relative to the file
        np.testing.assert_allclose(ensemble.combine(p), expected)
    path.write_text(json.dumps({"members": members, "combine": "stacked", "stacking": {"coefficients": [1.0]}}))
    with pytest.raises(ValueError, match="coefficients"):
        load_ensemble(str(path))
    path.write_text(json.dumps({"members": members, "combine": "stacked", "meta_learner": {"coef": [1.0, 1.0]}}))
    with pytest.raises(ValueError, match='"meta_learner" is spelt stacking'):
        load_ensemble(str(path))
    path.write_text(json.dumps({"members": [{"adapter": "x"}]}))
    with pytest.raises(ValueError, match='needs a "model"'):
        load_ensemble(str(path))
    with pytest.raises(ValueError, match="combine"):
        RoadworkEnsemble(ensemble.members, "vote")
    assert windowed_reward(np.array([0.9, 0.1] * 60), np.array([1, 0] * 60), seed=0) == pytest.approx(1.0)
    labels = np.array([1] * 30 + [0] * 5)
    assert np.bincount(labels[balanced_indices(labels, 0)]).tolist() == [5, 5]


def _adapter(checkpoint, folder):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = RoadworkForImageClassification.from_pretrained(checkpoint)
    config = LoraConfig(r=4, use_dora=True, target_modules=["classifier.fc1", "classifier.fc2"])
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a fresh adapter is the identity; make it change the predictions
    model.save_pretrained(folder)
    return str(folder)


def test_ensemble_shares_one_backbone_pass_and_matches_each_member(checkpoint, tmp_path, monkeypatch):
    adapter = _adapter(checkpoint, tmp_path / "adapter")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _image((80 + 10 * i, 64), seed=i).save(images / f"{i}.png")
    spec = {"members": [{"model": checkpoint, "adapter": None}, {"model": checkpoint, "adapter": adapter}],
            "combine": "mean"}  # fmt: skip
    (tmp_path / "ensemble.json").write_text(json.dumps(spec))

    from modeling_roadwork.modeling_roadwork import RoadworkModel

    calls = []
    original = RoadworkModel.extract_view_features

    def counting(self, pixel_values):
        calls.append(pixel_values.shape[0])
        return original(self, pixel_values)

    monkeypatch.setattr(RoadworkModel, "extract_view_features", counting)
    out = tmp_path / "out"
    code = predict.main(["--ensemble", str(tmp_path / "ensemble.json"), "--inputs", str(images), "--output_dir",
                         str(out), "--tta", "flip", "--num_workers", "0", "--batch_size", "4"])  # fmt: skip
    assert code == 0
    assert calls == [3 * 2]  # one backbone pass for 3 images x 2 variants, shared by both members
    rows = _read_csv(out / "predictions.csv")
    member_columns = [c for c in rows[0] if c.startswith("prob_m")]
    assert len(member_columns) == 2

    # Each member on its own (no sharing, no PEFT multi-adapter switching) gives the same scores.
    from peft import PeftModel

    plain = RoadworkForImageClassification.from_pretrained(checkpoint).eval()
    processor = RoadworkImageProcessor.from_model_config(plain.config)
    adapted = PeftModel.from_pretrained(RoadworkForImageClassification.from_pretrained(checkpoint), adapter).eval()
    for row in rows:
        image = Image.open(row["input"]).convert("RGB")
        flipped = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixel_values = processor([image, flipped], return_tensors="pt")["pixel_values"]  # (2, V, 3, S, S)
        with torch.no_grad():
            p_plain = plain(pixel_values=pixel_values).logits.softmax(-1)[:, 1].mean().item()
            p_adapted = adapted(pixel_values=pixel_values).logits.softmax(-1)[:, 1].mean().item()
        assert float(row[member_columns[0]]) == pytest.approx(p_plain, abs=1e-5)
        assert float(row[member_columns[1]]) == pytest.approx(p_adapted, abs=1e-5)
        assert abs(p_plain - p_adapted) > 1e-4  # the adapter matters, so the check above can fail
        assert float(row["prob_roadwork"]) == pytest.approx((p_plain + p_adapted) / 2, abs=1e-5)


# --- no input lost ------------------------------------------------------------------------------------------------


def _write_inputs(root):
    """Good-but-awkward images and bad inputs of every kind; returns (good paths, bad paths, extra args)."""
    good_dir, bad_dir = root / "good", root / "bad"
    good_dir.mkdir()
    bad_dir.mkdir()
    good = {}
    _image((200, 150)).convert("CMYK").save(good_dir / "cmyk.jpg")
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)).save(good_dir / "gray16.png")
    assert Image.open(good_dir / "gray16.png").mode.startswith("I")
    _image((80, 60)).convert("RGBA").save(good_dir / "alpha.png")
    _image((80, 60)).convert("P").save(good_dir / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _image((120, 80)).save(good_dir / "exif_rotated.jpg", exif=exif)
    _image((90, 70)).save(good_dir / "photo.webp")
    _image((60, 120)).save(good_dir / "portrait.jpg")
    Image.new("RGB", (4032, 3024), (120, 110, 100)).save(good_dir / "big.jpg", quality=50)
    good = sorted(str(p) for p in good_dir.iterdir())

    bad = {}
    (bad_dir / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    _image((200, 150)).save(buffer, format="JPEG")
    (bad_dir / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (bad_dir / "notes.jpg").write_text("this is not an image")
    (bad_dir / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    Image.new("RGB", (1, 1)).save(bad_dir / "tiny.png")
    Image.new("1", (10_000, 10_000)).save(bad_dir / "bomb.png")  # 100 M pixels in a few kB
    for name in ("empty.jpg", "truncated.jpg", "notes.jpg", "drawing.svg", "tiny.png", "bomb.png"):
        bad[str(bad_dir / name)] = None
    (root / "no_images").mkdir()
    (root / "no_images" / "readme.txt").write_text("nothing here")
    bad[str(root / "does_not_exist.jpg")] = None
    bad[str(root / "no_images")] = None
    return good, bad


def test_no_input_lost(checkpoint, tmp_path):
    good, bad = _write_inputs(tmp_path)
    out = tmp_path / "out"
    code = predict.main(["--model", checkpoint, "--inputs", str(tmp_path / "good"), *bad, "--output_dir", str(out),
                         "--num_workers", "2", "--batch_size", "3"])  # fmt: skip
    assert code == 0
    rows = _read_csv(out / "predictions.csv")
    assert sorted(r["input"] for r in rows) == good  # every awkward image predicted
    for row in rows:
        p = float(row["prob_roadwork"])
        assert 0 <= p <= 1 and int(row["label"]) == int(p > 0.5)
    jsonl = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in jsonl] == [r["input"] for r in rows]
    errors = {r["input"]: r["error"] for r in _read_csv(out / "errors.csv")}
    reasons = {os.path.basename(k): v for k, v in errors.items()}
    assert set(errors) >= set(bad), set(bad) - set(errors)
    assert "empty file" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "not an image" in reasons["notes.jpg"] and "not an image" in reasons["drawing.svg"]
    assert "smaller than --min_image_size" in reasons["tiny.png"]
    assert "--max_image_pixels" in reasons["bomb.png"]
    assert "no such file" in reasons["does_not_exist.jpg"]
    assert "no image files" in reasons["no_images"]
    assert "unsupported file type '.txt'" in reasons["readme.txt"]

    # Nothing predictable: exit status 2, and the reasons are still written.
    assert predict.main(["--model", checkpoint, "--inputs", *bad, "--output_dir", str(tmp_path / "none"),
                         "--num_workers", "0"]) == 2  # fmt: skip
    assert len(_read_csv(tmp_path / "none" / "errors.csv")) >= len(bad)
    # --strict: the first error is fatal.
    with pytest.raises(SystemExit, match="--strict"):
        predict.main(["--model", checkpoint, "--inputs", good[0], str(tmp_path / "bad" / "empty.jpg"), "--output_dir",
                      str(tmp_path / "strict"), "--num_workers", "0", "--strict"])  # fmt: skip


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "predictions.csv"
    atomic_write(str(target), "old\n")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(str(target), "new\n" * 1000)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["predictions.csv"]


def test_help_documents_errors_and_exit_status(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    for phrase in ("errors.csv", "Exit status", "--strict", "--max_image_pixels", "--tta", "--serving",
                   "--fit_ood_stats", "--ensemble", "--no_metadata", "decompression"):  # fmt: skip
        assert phrase in text, phrase


# --- datasets, serving, FOODS and the report -------------------------------------------------------------------


def test_serving_predictions_match_the_training_serving_condition(checkpoint, dataset_dir, tmp_path):
    out = tmp_path / "serving"
    code = predict.main(["--model", checkpoint, "--inputs", dataset_dir, "--split", "test", "--serving",
                         "--output_dir", str(out), "--num_workers", "0"])  # fmt: skip
    assert code == 0
    rows = _read_csv(out / "predictions.csv")
    split = load_roadwork_splits(dataset_dir, splits=["test"])["test"]
    assert len(rows) == len(split) and all(r["true_label"] in ("0", "1") for r in rows)

    # The same images, through train.py's serving evaluation condition (RoadworkDataset, seed 42).
    model = RoadworkForImageClassification.from_pretrained(checkpoint).eval()
    processor = RoadworkImageProcessor.from_model_config(model.config)
    dataset = condition_datasets(split, processor, model.config, 42)["serving"]
    batch = RoadworkDataCollator(include_text_embeds=False)([dataset[i] for i in range(len(dataset))])
    batch.pop("labels")
    batch.pop("weather_labels")
    with torch.no_grad():
        expected = model(**batch).logits.softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose([float(r["prob_roadwork"]) for r in rows], expected, atol=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["num_positive"] + metrics["overall"]["num_negative"] == len(split)
    assert set(metrics["confusion_matrix"]) == {"true_none_pred_none", "true_none_pred_roadwork",
                                                "true_roadwork_pred_none", "true_roadwork_pred_roadwork"}  # fmt: skip
    assert "city" in metrics["groups"] and "gps_cluster" in metrics["groups"]
    assert sum(g["count"] for g in metrics["groups"]["city"]) == len(split)
    balanced = metrics["serving_balanced"]
    assert balanced["num_rows"] == 2 * min(metrics["overall"]["num_positive"], metrics["overall"]["num_negative"])
    for name in ("confusion_matrix", "calibration", "score_histogram", "group_mcc"):
        assert (out / "plots" / f"{name}.png").is_file()
    assert len(list((out / "plots").glob("worst_*.png"))) == min(10, len(split))


def test_metadata_is_used_from_rows_unless_switched_off(checkpoint, dataset_dir, tmp_path):
    runs = {}
    for name, flags in (("metadata", []), ("no_metadata", ["--no_metadata"])):
        out = tmp_path / name
        predict.main(["--model", checkpoint, "--inputs", dataset_dir, "--split", "test", "--output_dir", str(out),
                      "--num_workers", "0", "--no_report", *flags])  # fmt: skip
        runs[name] = np.array([float(r["prob_roadwork"]) for r in _read_csv(out / "predictions.csv")])
        assert not (out / "metrics.json").exists()
    assert np.abs(runs["metadata"] - runs["no_metadata"]).max() > 1e-5


@pytest.mark.slow  # fits statistics and runs 16 variants three times: about a minute on 2 busy cores
def test_foods_end_to_end(checkpoint, dataset_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(checkpoint, model_dir)
    with pytest.raises(SystemExit, match="--fit_ood_stats"):
        predict.main(["--model", str(model_dir), "--inputs", dataset_dir, "--split", "test", "--tta", "foods",
                      "--output_dir", str(tmp_path / "x"), "--num_workers", "0"])  # fmt: skip
    assert predict.main(["--model", str(model_dir), "--fit_ood_stats", "--inputs", dataset_dir, "--split", "train",
                         "--num_workers", "0"]) == 0  # fmt: skip
    stats = load_ood_stats(model_dir / "ood_stats.safetensors")
    assert stats.num_rows == 24 and stats.dim == 32
    probabilities = {}
    for mode in ("none", "mean", "foods"):
        out = tmp_path / mode
        assert predict.main(["--model", str(model_dir), "--inputs", dataset_dir, "--split", "test", "--tta", mode,
                             "--serving", "--output_dir", str(out), "--num_workers", "0"]) == 0  # fmt: skip
        probabilities[mode] = np.array([float(r["prob_roadwork"]) for r in _read_csv(out / "predictions.csv")])
        assert ((probabilities[mode] >= 0) & (probabilities[mode] <= 1)).all()
    assert not np.allclose(probabilities["foods"], probabilities["mean"])
    assert not np.allclose(probabilities["mean"], probabilities["none"])


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (scripts/test.sh installs it)")
def test_report_renders_its_plots_in_headless_chromium(checkpoint, dataset_dir, tmp_path):
    out = tmp_path / "report"
    assert predict.main(["--model", checkpoint, "--inputs", dataset_dir, "--split", "test", "--serving",
                         "--output_dir", str(out), "--num_workers", "0"]) == 0  # fmt: skip
    page = (out / "report.html").resolve().as_uri()
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
              "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'chromium-profile'}"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'data-loaded="true"' in dom, dom[-2000:]
    images = re.findall(r"<img[^>]*>", dom)
    plots = [tag for tag in images if 'class="plot"' in tag]
    assert len(plots) == 4 and len(images) == 4 + 10
    for tag in images:
        assert 'data-rendered="true"' in tag, tag  # Chromium decoded it: the plot shows
        source = re.search(r'src="([^"]+)"', tag).group(1)
        assert not os.path.isabs(source)
        with Image.open(out / source) as image:
            image.load()
    screenshot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,2400", page], capture_output=True,
                   timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.std() > 10  # not a blank page
