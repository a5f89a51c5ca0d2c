"""roadwork: a multi-view roadwork classifier for transformers (config, model, layers, losses, processor)."""

from .configuration_roadwork import CONVNEXTV2_BASE_ID, DINOV3_VITH16PLUS_ID, RoadworkConfig
from .image_processing_roadwork import RoadworkImageProcessor
from .losses_roadwork import LOSS_COMPONENTS, loss_weights, roadwork_loss
from .modeling_roadwork import (
    RoadworkForImageClassification,
    RoadworkImageClassifierOutput,
    RoadworkModel,
    RoadworkModelOutput,
    RoadworkPreTrainedModel,
)
from .text_encoding_roadwork import RoadworkTextEmbedder


__all__ = [
    "CONVNEXTV2_BASE_ID",
    "DINOV3_VITH16PLUS_ID",
    "LOSS_COMPONENTS",
    "RoadworkConfig",
    "RoadworkForImageClassification",
    "RoadworkImageProcessor",
    "RoadworkImageClassifierOutput",
    "RoadworkModel",
    "RoadworkModelOutput",
    "RoadworkPreTrainedModel",
    "RoadworkTextEmbedder",
    "loss_weights",
    "roadwork_loss",
]
