"""Loading a pretrained backbone for `from_backbone`, and reading the preprocessing it was trained with.

Three sources are accepted:

- a Hub id (`facebook/dinov3-vith16plus-pretrain-lvd1689m`, `timm/convnextv2_base.fcmae_ft_in22k_in1k`);
- a local folder in the Hub layout of either kind: a transformers DINOv3 folder, or a timm folder (`config.json`
  with `architecture`, `model_args`, `pretrained_cfg`, plus `model.safetensors` with plain timm keys), which
  transformers' `TimmWrapperModel` loads;
- `"timm:<architecture>"` plus a weights file (`.safetensors`, `.pth`, `.pt` or `.bin` with a timm state dict).

This file ships with every checkpoint (`trust_remote_code`): it imports only torch, safetensors and transformers
(timm only through transformers' `TimmWrapperModel`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModel, PreTrainedModel, TimmWrapperConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"

# Antialiasing filters the roadwork image processor accepts, by name; PIL's integer codes map onto them.
RESAMPLE_NAMES = ("bicubic", "bilinear", "lanczos", "box", "hamming")
_PIL_RESAMPLE_CODES = {3: "bicubic", 2: "bilinear", 1: "lanczos", 4: "box", 5: "hamming"}
_DEFAULT_RESAMPLE = "bicubic"

# `from_pretrained` arguments that also make sense for fetching the backbone's image processor.
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def resample_name(value: Any) -> str:
    """A timm `interpolation` string or a PIL resampling code as one of `RESAMPLE_NAMES`. NEAREST and unknown
    filters become bicubic: the views are downscaled, and the processor only uses antialiasing filters."""
    if isinstance(value, str) and value.lower() in RESAMPLE_NAMES:
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return _PIL_RESAMPLE_CODES.get(int(value), _DEFAULT_RESAMPLE)
    return _DEFAULT_RESAMPLE


def default_preprocessing() -> dict:
    """The ImageNet mean/std and bicubic resampling: what a backbone without preprocessing metadata gets."""
    return {"image_mean": list(IMAGENET_DEFAULT_MEAN), "image_std": list(IMAGENET_DEFAULT_STD), "resample": "bicubic"}


def timm_preprocessing(backbone: PreTrainedModel) -> dict:
    """Mean, std and interpolation of a `TimmWrapperModel`: the config's `pretrained_cfg` (what a timm Hub folder
    ships), else the default `pretrained_cfg` that timm registers for the architecture."""
    pretrained_cfg = getattr(backbone.config, "pretrained_cfg", None) or getattr(
        backbone.timm_model, "pretrained_cfg", None
    )
    result = default_preprocessing()
    if pretrained_cfg:
        result["image_mean"] = [float(v) for v in pretrained_cfg.get("mean", result["image_mean"])]
        result["image_std"] = [float(v) for v in pretrained_cfg.get("std", result["image_std"])]
        result["resample"] = resample_name(pretrained_cfg.get("interpolation"))
    return result


def image_processor_preprocessing(name_or_path: str, hub_kwargs: dict) -> dict:
    """Mean, std and resampling from the backbone's own image processor (DINOv3 on the Hub), ImageNet defaults
    where it has none (a local folder saved without `preprocessor_config.json`)."""
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError) as error:
        logger.info("no image processor for %r (%s); using the ImageNet mean/std", name_or_path, error)
        return default_preprocessing()
    result = default_preprocessing()
    if getattr(processor, "image_mean", None) is not None:
        result["image_mean"] = [float(v) for v in processor.image_mean]
    if getattr(processor, "image_std", None) is not None:
        result["image_std"] = [float(v) for v in processor.image_std]
    resample = getattr(processor, "resample", None)
    result["resample"] = resample_name(int(resample) if resample is not None else None)
    return result


def _classifier_prefixes(timm_model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classification head(s) of a timm model (dropped: the backbone has none)."""
    names = (getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier", "classifier")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A timm state dict from `.safetensors` or a torch pickle (`.pth`/`.pt`/`.bin`, tensors only; a training
    checkpoint's `state_dict`/`model` entry is unwrapped, `module.`/`timm_model.` prefixes are stripped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone_weights={path!r} is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    elif path.endswith((".pth", ".pt", ".bin")):
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
    else:
        raise ValueError(f"backbone_weights={path!r}: use a .safetensors, .pth, .pt or .bin file")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"backbone_weights={path!r} does not hold a state dict of tensors")
    for prefix in ("module.", "timm_model."):
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def load_timm_weights(backbone: PreTrainedModel, path: str | os.PathLike) -> None:
    """Loads a timm state dict into `backbone.timm_model`: every backbone tensor must be present; only the
    classification head may be extra."""
    timm_model = backbone.timm_model
    state_dict = read_state_dict(path)
    head = _classifier_prefixes(timm_model)
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith(head)}
    missing, unexpected = timm_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"backbone_weights={os.fspath(path)!r} do not fit timm's {backbone.config.architecture!r} built with "
            f"model_args={backbone.config.model_args}: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}). Check the architecture name and model_args (e.g. widths)."
        )


def load_backbone(
    name_or_path: str, *, weights: str | os.PathLike | None = None, kwargs: dict | None = None
) -> tuple[PreTrainedModel, dict]:
    """
    Loads a pretrained backbone and the preprocessing it expects.

    Args:
        name_or_path (`str`): Hub id, local folder, or `"timm:<architecture>"` (then `weights` is required).
        weights (`str` or `os.PathLike`, *optional*): timm weights file, only with `"timm:<architecture>"`.
        kwargs (`dict`, *optional*): for a Hub id or folder, arguments of `AutoModel.from_pretrained` (`revision`,
            `token`, `cache_dir`, ...); for `"timm:<architecture>"`, fields of `TimmWrapperConfig`: `model_args`
            (timm `create_model` arguments such as `{"pad_type": "same"}`) and `pretrained_cfg` (at least `mean`,
            `std`, optionally `interpolation`; without it timm's registered default for the architecture applies).

    Returns:
        `(backbone, preprocessing)`: the backbone model and `{"image_mean", "image_std", "resample"}`.
    """
    kwargs = dict(kwargs or {})
    name_or_path = os.path.expanduser(os.fspath(name_or_path))  # "~/.cache/..." from a YAML file
    if weights is not None:
        weights = os.path.expanduser(os.fspath(weights))
    if name_or_path.startswith(TIMM_PREFIX):
        architecture = name_or_path[len(TIMM_PREFIX) :]
        if not architecture:
            raise ValueError(f"backbone {name_or_path!r} names no architecture; use e.g. 'timm:efficientnet_lite0'")
        if weights is None:
            raise ValueError(
                f"backbone {name_or_path!r} needs backbone_weights (a .safetensors or .pth file); for random weights "
                "build RoadworkConfig(backbone_config=TimmWrapperConfig(architecture=...)) instead"
            )
        unknown = sorted(set(kwargs) - {"model_args", "pretrained_cfg", "do_pooling"})
        if unknown:
            raise ValueError(
                f"backbone_kwargs {unknown} are not TimmWrapperConfig fields; with 'timm:<architecture>' use "
                "model_args, pretrained_cfg or do_pooling"
            )
        config = TimmWrapperConfig(architecture=architecture, **kwargs)
        backbone = AutoModel.from_config(config)
        load_timm_weights(backbone, weights)
        return backbone, timm_preprocessing(backbone)
    if weights is not None:
        raise ValueError(
            f"backbone_weights is only used with 'timm:<architecture>' backbones, not with {name_or_path!r}: a Hub "
            "id or folder carries its own weights"
        )
    backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
    if backbone.config.model_type == "timm_wrapper":
        return backbone, timm_preprocessing(backbone)
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    return backbone, image_processor_preprocessing(name_or_path, hub_kwargs)


__all__ = [
    "RESAMPLE_NAMES", "TIMM_PREFIX", "default_preprocessing", "load_backbone", "read_state_dict", "resample_name"
]
