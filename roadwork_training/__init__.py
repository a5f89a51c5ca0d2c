"""Training glue shared by the scripts: the Trainer subclass, metrics, the model card and the argument/YAML layer."""

from .metrics import classification_metrics, compute_metrics, roadwork_probabilities
from .model_card import model_card
from .trainer import RoadworkTrainer


__all__ = ["RoadworkTrainer", "classification_metrics", "compute_metrics", "model_card", "roadwork_probabilities"]
