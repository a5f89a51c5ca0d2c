"""Tiny configs and inputs shared by the tests (built in code, no downloads)."""

from __future__ import annotations

import torch
from transformers import DINOv3ViTConfig, TimmWrapperConfig

from modeling_roadwork import RoadworkConfig


VIEW_SIZE = 32


def tiny_dinov3_config(**overrides) -> DINOv3ViTConfig:
    kwargs = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8,
        image_size=VIEW_SIZE, num_register_tokens=2,
    )  # fmt: skip
    kwargs.update(overrides)
    return DINOv3ViTConfig(**kwargs)


def tiny_timm_config() -> TimmWrapperConfig:
    # A ConvNeXt V2 of the same family as convnextv2_base, shrunk: 1 block per stage, narrow.
    return TimmWrapperConfig(
        architecture="convnextv2_atto", model_args={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
    )


def tiny_config(**overrides) -> RoadworkConfig:
    kwargs = dict(
        backbone_config=tiny_dinov3_config(), view_size=VIEW_SIZE, hidden_size=32, num_attention_heads=4,
        num_attention_layers=2, fusion_gate_hidden_size=8, classifier_hidden_size=16, fusion_hidden_size=32,
        gps_embed_dim=16, category_embed_dim=8, text_projection_dim=16, seg_resolution=8, pyramid_sizes=[16, 8],
        weather_vocab=["sunny", "rainy", "cloudy"], daytime_vocab=["light", "dark"], scene_vocab=["urban", "highway"],
    )  # fmt: skip
    kwargs.update(overrides)
    return RoadworkConfig(**kwargs)


def metadata_inputs(batch_size: int, mode: str, generator: torch.Generator | None = None) -> dict:
    """Metadata for `mode` in {"filled", "null", "mixed"} in the forward's format."""
    g = generator or torch.Generator().manual_seed(0)
    gps = torch.stack(
        [torch.rand(batch_size, generator=g) * 20 + 30, torch.rand(batch_size, generator=g) * 40 - 120], 1
    )
    ids = {k: torch.randint(1, 3, (batch_size,), generator=g) for k in ("weather_ids", "daytime_ids", "scene_ids")}
    text = torch.nn.functional.normalize(torch.randn(batch_size, 384, generator=g), dim=-1)
    if mode == "filled":
        return dict(gps=gps, text_embeds=text, **ids)
    if mode == "null":
        return dict(
            gps=torch.full((batch_size, 2), float("nan")),
            text_embeds=torch.zeros(batch_size, 384),
            **{k: torch.zeros_like(v) for k, v in ids.items()},
        )
    if mode == "mixed":
        null_rows = torch.arange(batch_size) % 2 == 0
        gps[null_rows] = float("nan")
        text[null_rows] = 0
        return dict(gps=gps, text_embeds=text, **{k: v.masked_fill(null_rows, 0) for k, v in ids.items()})
    raise ValueError(mode)


def pixel_inputs(batch_size: int, num_views: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, num_views, 3, VIEW_SIZE, VIEW_SIZE, generator=torch.Generator().manual_seed(seed))


# Prepended to code run by `fresh_python` to prove that a checkpoint is self-contained: the project's packages are
# installed (editable) in the venv, so they are blocked here rather than merely absent from sys.path.
BLOCK_PROJECT_IMPORTS = """
import importlib.abc, sys
class _BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_roadwork", "data_collator"):
            raise ImportError(f"{name} must not be imported: the checkpoint has to be self-contained")
        return None
sys.meta_path.insert(0, _BlockProject())
"""
