"""`backbone_pooling`: the backbone's own pooled output, the spatial max, or both, for DINOv3 and timm backbones."""

from __future__ import annotations

import pytest
import torch
from roadwork_testing import pixel_inputs, tiny_config, tiny_timm_config

from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
from roadwork_training.feature_cache import CachePass, cache_key


BACKBONES = {"dinov3": {}, "timm": {"backbone_config": tiny_timm_config()}}


def _model(backbone: str, pooling: str) -> RoadworkForImageClassification:
    torch.manual_seed(0)
    return RoadworkForImageClassification(tiny_config(backbone_pooling=pooling, **BACKBONES[backbone])).eval()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_pooling_is_the_backbones_output_pooled_as_named(backbone):
    native, spatial, both = (_model(backbone, p) for p in ("native", "max", "native_max"))
    for other in (spatial, both):  # same seed, same backbone weights
        other.roadwork.backbone.load_state_dict(native.roadwork.backbone.state_dict())
    pixels = pixel_inputs(2)[:, 0]  # (2, 3, S, S)
    with torch.no_grad():
        output = native.roadwork.backbone(pixel_values=pixels)
        hidden = output.last_hidden_state
        if backbone == "dinov3":  # (N, 1 + registers + patches, C): the max runs over the patch tokens only
            expected_max = hidden[:, 1 + native.config.backbone_config.num_register_tokens :].amax(1)
        else:  # a CNN's map (N, C, h, w)
            expected_max = hidden.amax(dim=(2, 3))
        D = native.config.backbone_hidden_size
        torch.testing.assert_close(native.roadwork.embed_images(pixels), output.pooler_output.float())
        torch.testing.assert_close(spatial.roadwork.embed_images(pixels), expected_max.float())
        torch.testing.assert_close(both.roadwork.embed_images(pixels), torch.cat([output.pooler_output,
                                                                                  expected_max], -1).float())
        # A probe can ask for another pooling than the model's.
        torch.testing.assert_close(spatial.roadwork.embed_images(pixels, pooling="native"),
                                   output.pooler_output.float())  # fmt: skip
    assert (native.config.view_feature_size, spatial.config.view_feature_size, both.config.view_feature_size) == (
        D, D, 2 * D
    )
    assert not torch.allclose(expected_max, output.pooler_output), "the test would not tell the poolings apart"
    for model in (native, spatial, both):
        out = model(pixel_values=pixel_inputs(2))
        assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()


def test_view_features_of_another_pooling_are_refused_with_advice():
    model = _model("dinov3", "native_max")
    width = model.config.backbone_hidden_size
    with pytest.raises(ValueError, match=r"backbone_pooling='native_max'.*another backbone or pooling"):
        model(view_features=torch.randn(2, 12, width))
    assert model(view_features=torch.randn(2, 12, 2 * width)).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="backbone_pooling"):
        tiny_config(backbone_pooling="mean")


def test_cache_key_names_the_pooling_and_keeps_native_keys_as_before():
    import datasets

    split = datasets.Dataset.from_dict({"id": ["row-0", "row-1"], "label": [0, 1]})
    processor = RoadworkImageProcessor.from_model_config(_model("dinov3", "native").config)
    keys = {}
    for pooling in ("native", "max", "native_max"):
        keys[pooling], described = cache_key(_model("dinov3", pooling), processor, split, CachePass.clean(),
                                             fingerprint="f")  # fmt: skip
        assert ("backbone_pooling" in described) == (pooling != "native"), "native keys stay as they were"
    assert len(set(keys.values())) == 3
    # A probe's pooling override keys its features as a model of that pooling would: they are the same features.
    native_model, max_model = _model("dinov3", "native"), _model("dinov3", "max")
    as_native = cache_key(max_model, processor, split, CachePass.clean(), fingerprint="f", pooling="native")[0]
    as_max = cache_key(native_model, processor, split, CachePass.clean(), fingerprint="f", pooling="max")[0]
    assert (as_native, as_max) == (keys["native"], keys["max"])
