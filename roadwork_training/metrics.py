"""Classification metrics as the StreetVision validators compute them, and `Trainer(compute_metrics=...)`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roadwork_probabilities(logits: np.ndarray) -> np.ndarray:
    """(N, 2) logits -> (N,) P(Roadwork), the score the StreetVision miner returns."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs[:, 1] / probs.sum(axis=-1)


def classification_metrics(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """
    MCC, accuracy, F1 and ROC-AUC (scikit-learn, which the `evaluate` metric scripts wrap; those scripts are fetched
    from the Hub at run time). Predictions are thresholded as the subnet's validators do: `round(p)`, so 0.5 counts as
    None. `streetvision_reward` is the validators' per-miner reward formula applied to the whole set:
    `(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3`.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    predictions = (probabilities > 0.5).astype(int)
    mcc = float(matthews_corrcoef(labels, predictions)) if len(set(labels)) > 1 or len(set(predictions)) > 1 else 0.0
    accuracy = float(accuracy_score(labels, predictions))
    metrics = {
        "mcc": mcc,
        "accuracy": accuracy,
        "f1": float(f1_score(labels, predictions, zero_division=0)),
        # ROC-AUC is undefined with one class in the labels: NaN, never a made-up number.
        "roc_auc": float(roc_auc_score(labels, probabilities)) if len(set(labels)) > 1 else float("nan"),
        "streetvision_reward": float((0.5 * max(mcc, 0.0) + 0.5 * accuracy) ** 3),
    }
    return metrics


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: EvalPrediction of logits (N, 2) and labels (N,) -> metrics."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return classification_metrics(roadwork_probabilities(logits), eval_prediction.label_ids)


__all__ = ["classification_metrics", "compute_metrics", "roadwork_probabilities"]
