"""Backbones from local weights (timm folder, timm name + weights file), the backbone's own preprocessing in the
config and the processor, and the "auto" autocast default. Tiny timm models with random weights, no downloads."""

from __future__ import annotations

import json

import pytest
import torch
from roadwork_testing import VIEW_SIZE, pixel_inputs, tiny_config, tiny_dinov3_config
from safetensors.torch import save_file
from transformers import DINOv3ViTModel

from modeling_roadwork import RoadworkConfig, RoadworkForImageClassification, RoadworkImageProcessor


timm = pytest.importorskip("timm")

# EfficientNet-Lite0 with random weights (3.4M parameters; its builder fixes the width and depth multipliers, so
# it cannot be shrunk through model_args): the architecture of the converted quickstart backbone.
ARCH = "efficientnet_lite0"
MODEL_ARGS = {"pad_type": "same", "bn_eps": 1e-3}
NON_IMAGENET = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
    "input_size": [3, 224, 224],
}
HEAD = dict(
    view_size=VIEW_SIZE, hidden_size=32, num_attention_heads=4, num_attention_layers=1, fusion_gate_hidden_size=8,
    classifier_hidden_size=16, fusion_hidden_size=32, gps_embed_dim=16, category_embed_dim=8, text_projection_dim=16,
    seg_resolution=8, pyramid_sizes=[16, 8],
)  # fmt: skip


def _tiny_timm(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, **MODEL_ARGS).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that eps and running stats matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _timm_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(pixels), pre_logits=True)


def _write_timm_folder(path, model, pretrained_cfg=NON_IMAGENET):
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "timm_wrapper", "architecture": ARCH, "num_classes": model.num_classes,
        "num_features": model.num_features, "model_args": MODEL_ARGS, "pretrained_cfg": pretrained_cfg,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), str(path / "model.safetensors"))
    return path


def _view_features(model: RoadworkForImageClassification, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.roadwork.extract_view_features(pixels)


def test_from_backbone_loads_a_local_timm_folder_and_its_preprocessing(tmp_path):
    reference = _tiny_timm()
    folder = _write_timm_folder(tmp_path / "backbone", reference)
    model = RoadworkForImageClassification.from_backbone(str(folder), **HEAD).eval()

    config = model.config
    assert config.backbone_config.model_type == "timm_wrapper" and config.backbone_config.architecture == ARCH
    assert config.backbone_hidden_size == reference.num_features
    assert (config.image_mean, config.image_std, config.resample) == ([0.5] * 3, [0.5] * 3, "bilinear")
    assert not any(p.requires_grad for p in model.roadwork.backbone.parameters())

    pixels = pixel_inputs(2)
    expected = _timm_features(reference, pixels.flatten(0, 1)).view(2, 12, -1)
    torch.testing.assert_close(_view_features(model, pixels), expected, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_from_backbone_timm_name_plus_weights_file_is_self_contained(tmp_path, suffix):
    reference = _tiny_timm(seed=1)
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(reference.state_dict(), str(weights))
    else:
        torch.save({"state_dict": reference.state_dict()}, weights)  # a training checkpoint's layout
    model = RoadworkForImageClassification.from_backbone(
        f"timm:{ARCH}",
        backbone_weights=str(weights),
        backbone_kwargs={"model_args": MODEL_ARGS, "pretrained_cfg": NON_IMAGENET},
        **HEAD,
    ).eval()
    pixels = pixel_inputs(1, seed=3)
    expected = _timm_features(reference, pixels.flatten(0, 1)).view(1, 12, -1)
    torch.testing.assert_close(_view_features(model, pixels), expected, rtol=0, atol=0)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits

    # The checkpoint alone rebuilds the same model: architecture, model_args (bn_eps, pad_type) and weights.
    weights.unlink()
    model.save_pretrained(tmp_path / "roadwork")
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path / "roadwork").eval()
    assert loaded.config.backbone_config.model_args == MODEL_ARGS
    assert loaded.config.image_mean == [0.5] * 3 and loaded.config.resample == "bilinear"
    assert not any(p.requires_grad for p in loaded.roadwork.backbone.parameters())
    eps = {m.eps for m in loaded.roadwork.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {1e-3}
    with torch.no_grad():
        # Same weights; the head's float sums may differ in the last bit (seen: 6e-8 on logits of ~0.3).
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, logits, rtol=1e-6, atol=1e-6)


def test_timm_name_without_pretrained_cfg_gets_timms_registered_default(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(_tiny_timm().state_dict(), str(weights))
    model = RoadworkForImageClassification.from_backbone(
        f"timm:{ARCH}", backbone_weights=str(weights), backbone_kwargs={"model_args": MODEL_ARGS}, **HEAD
    )
    assert model.config.image_mean == pytest.approx([0.485, 0.456, 0.406])  # timm's efficientnet_lite0 default
    # Explicit config fields win over what the backbone says.
    model = RoadworkForImageClassification.from_backbone(
        f"timm:{ARCH}", backbone_weights=str(weights), backbone_kwargs={"model_args": MODEL_ARGS},
        image_mean=[0.1, 0.2, 0.3], **HEAD,
    )  # fmt: skip
    assert model.config.image_mean == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (f"timm:{ARCH}", {}, "needs backbone_weights"),
        ("timm:", {"backbone_weights": "x.safetensors"}, "names no architecture"),
        ("some/hub-id", {"backbone_weights": "x.safetensors"}, "only used with 'timm:"),
        (f"timm:{ARCH}", {"backbone_weights": "missing.safetensors"}, "is not a file"),
        (f"timm:{ARCH}", {"backbone_weights": "x.safetensors", "backbone_kwargs": {"revision": "main"}}, "model_args"),
    ],
)
def test_from_backbone_rejects_bad_local_sources(name, kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        RoadworkForImageClassification.from_backbone(name, **kwargs)


def test_weights_of_another_architecture_are_refused(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(_tiny_timm().state_dict(), str(weights))
    with pytest.raises(ValueError, match="do not fit timm's 'efficientnet_lite1'"):
        RoadworkForImageClassification.from_backbone(
            "timm:efficientnet_lite1", backbone_weights=str(weights), backbone_kwargs={"model_args": MODEL_ARGS}
        )


def test_processor_from_model_config_carries_the_backbones_preprocessing(tmp_path):
    folder = _write_timm_folder(tmp_path / "backbone", _tiny_timm())
    model = RoadworkForImageClassification.from_backbone(str(folder), **HEAD)
    model.save_pretrained(tmp_path / "ckpt")
    processor = RoadworkImageProcessor.from_model_config(model.config)
    processor.save_pretrained(tmp_path / "ckpt")

    saved = json.loads((tmp_path / "ckpt" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == [0.5] * 3 and saved["image_std"] == [0.5] * 3 and saved["view_size"] == VIEW_SIZE
    loaded_config = RoadworkConfig.from_pretrained(tmp_path / "ckpt")
    loaded = RoadworkImageProcessor.from_pretrained(tmp_path / "ckpt")
    rebuilt = RoadworkImageProcessor.from_model_config(loaded_config)
    for candidate in (loaded, rebuilt):
        assert (candidate.image_mean, candidate.image_std) == ([0.5] * 3, [0.5] * 3)
        assert candidate.resample == 2 and candidate.view_size == VIEW_SIZE  # PIL BILINEAR

    # mean = std = 0.5 maps [0, 255] onto [-1, 1]: black is -1, white is +1 (ImageNet's would not be).
    image = torch.zeros(3, 48, 64, dtype=torch.uint8)
    image[:, :, 32:] = 255
    values = loaded(image, return_tensors="pt")["pixel_values"]
    assert values.min().item() == -1.0 and values.max().item() == 1.0
    assert RoadworkImageProcessor.from_model_config(tiny_config()).image_mean == pytest.approx([0.485, 0.456, 0.406])


def test_dinov3_folder_without_image_processor_gets_imagenet_defaults(tmp_path):
    torch.manual_seed(0)
    DINOv3ViTModel(tiny_dinov3_config()).save_pretrained(tmp_path / "dino")
    model = RoadworkForImageClassification.from_backbone(str(tmp_path / "dino"), **HEAD)
    assert model.config.image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert model.config.image_std == pytest.approx([0.229, 0.224, 0.225])


def test_dinov3_folder_with_image_processor_uses_it(tmp_path):
    from transformers import AutoImageProcessor, DINOv3ViTImageProcessorFast

    torch.manual_seed(0)
    DINOv3ViTModel(tiny_dinov3_config()).save_pretrained(tmp_path / "dino")
    DINOv3ViTImageProcessorFast(image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.3, 0.4]).save_pretrained(
        tmp_path / "dino"
    )
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "dino").image_std) == [0.2, 0.3, 0.4]
    model = RoadworkForImageClassification.from_backbone(str(tmp_path / "dino"), **HEAD)
    assert model.config.image_mean == [0.4] * 3 and model.config.image_std == [0.2, 0.3, 0.4]


@pytest.mark.parametrize(
    "field, value",
    [("image_mean", [0.5, 0.5]), ("image_std", [0.5, 0.0, 0.5]), ("image_mean", "imagenet"), ("resample", "nearest")],
)
def test_config_validates_preprocessing_fields(field, value):
    with pytest.raises(ValueError, match=f"RoadworkConfig.{field}="):
        tiny_config(**{field: value})


def test_auto_autocast_is_float32_on_cpu():
    assert RoadworkConfig().backbone_autocast_dtype == "auto"
    pixels = pixel_inputs(1)
    features = {}
    for dtype in ("auto", None, "bfloat16"):
        torch.manual_seed(0)
        model = RoadworkForImageClassification(tiny_config(backbone_autocast_dtype=dtype)).eval()
        seen = []
        linear = next(m for m in model.roadwork.backbone.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda module, args, output: seen.append(torch.is_autocast_enabled("cpu")))
        features[dtype] = _view_features(model, pixels)
        assert seen and all(s == (dtype == "bfloat16") for s in seen), dtype
    torch.testing.assert_close(features["auto"], features[None], rtol=0, atol=0)
    assert not torch.equal(features["auto"], features["bfloat16"]), "bf16 autocast must change features"


def test_train_builds_a_timm_name_plus_weights_backbone_from_yaml(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py is a script at the repo root
    import train

    weights = tmp_path / "w.safetensors"
    save_file(_tiny_timm().state_dict(), str(weights))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"backbone: timm:{ARCH}\nbackbone_weights: {weights}\n"
        f"backbone_kwargs:\n  model_args: {json.dumps(MODEL_ARGS)}\n  pretrained_cfg: {json.dumps(NON_IMAGENET)}\n"
        f"model_overrides: {json.dumps(HEAD)}\noutput_dir: {tmp_path / 'out'}\n"
    )
    model = train.build_model(train.parse_args(["--config", str(config)]).model, {})
    assert model.config.backbone_config.architecture == ARCH and model.config.image_std == [0.5] * 3
    assert RoadworkImageProcessor.from_model_config(model.config).image_std == [0.5] * 3
