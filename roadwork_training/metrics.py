"""Classification metrics as the StreetVision validators compute them, and `Trainer(compute_metrics=...)`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def roadwork_probabilities(logits: np.ndarray) -> np.ndarray:
    """(N, 2) logits -> (N,) P(Roadwork), the score the StreetVision miner returns."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs[:, 1] / probs.sum(axis=-1)


# The conditions every evaluation reports, in the order reports show them: what a StreetVision miner is scored on
# first. `serving`: no metadata, each image through the validators' challenge transform (seeded per row);
# `no_metadata`: no metadata, the full image; `metadata`: the row's metadata as stored.
CONDITIONS = ("serving", "no_metadata", "metadata")
PRIMARY_CONDITION = "serving"

# Metrics that need both classes among the labels. On a one-class split they are undefined: absent from the
# metrics (never 0, never NaN), and tables print UNDEFINED.
TWO_CLASS_METRICS = ("mcc", "roc_auc", "streetvision_reward")
UNDEFINED = "undefined (one class)"


def classification_metrics(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """
    MCC, accuracy, precision, recall, F1 and ROC-AUC (scikit-learn, which the `evaluate` metric scripts wrap; those
    scripts are fetched from the Hub at run time). Predictions are thresholded as the subnet's validators do:
    `round(p)`, so 0.5 counts as None. `streetvision_reward` is the validators' per-miner reward formula applied to
    the whole set: `(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3`. With one class among the labels, MCC, ROC-AUC and
    the reward are undefined and left out (`TWO_CLASS_METRICS`); `num_positive` / `num_negative` say why.
    """
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        matthews_corrcoef,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if probabilities.shape != labels.shape:
        raise ValueError(f"{probabilities.shape[0]} probabilities for {labels.shape[0]} labels")
    predictions = (probabilities > 0.5).astype(int)
    accuracy = float(accuracy_score(labels, predictions))
    metrics = {
        "accuracy": accuracy,
        "precision": float(precision_score(labels, predictions, zero_division=0)),
        "recall": float(recall_score(labels, predictions, zero_division=0)),
        "f1": float(f1_score(labels, predictions, zero_division=0)),
        "num_positive": int(labels.sum()),
        "num_negative": int(len(labels) - labels.sum()),
    }
    if len(set(labels.tolist())) > 1:
        mcc = float(matthews_corrcoef(labels, predictions))
        metrics["mcc"] = mcc
        metrics["roc_auc"] = float(roc_auc_score(labels, probabilities))
        metrics["streetvision_reward"] = float((0.5 * max(mcc, 0.0) + 0.5 * accuracy) ** 3)
    return metrics


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: EvalPrediction of logits (N, 2) and labels (N,) -> metrics."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return classification_metrics(roadwork_probabilities(logits), eval_prediction.label_ids)


def format_metric(value, name: str | None = None) -> str:
    """A metric for a table: 4 decimals, integers as they are; a missing two-class metric (`name` in
    `TWO_CLASS_METRICS`) is UNDEFINED, any other missing one "-"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return UNDEFINED if name in TWO_CLASS_METRICS else "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def condition_table(metrics: Mapping[str, float], split: str, names: Sequence[str] = ("mcc", "accuracy", "f1",
                    "roc_auc", "streetvision_reward")) -> str:  # fmt: skip
    """
    A markdown table of one split's metrics under each condition, side by side, serving first. `metrics` holds keys
    `{split}_{condition}_{name}` (as `Trainer.evaluate` writes them for a dict of eval datasets).
    """
    present = [c for c in CONDITIONS if any(k.startswith(f"{split}_{c}_") for k in metrics)]
    if not present:
        return ""
    rows = ["| metric | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for name in names:
        rows.append(
            f"| {name} | "
            + " | ".join(format_metric(metrics.get(f"{split}_{c}_{name}"), name) for c in present)
            + " |"
        )
    return "\n".join(rows)


__all__ = [
    "CONDITIONS",
    "PRIMARY_CONDITION",
    "TWO_CLASS_METRICS",
    "UNDEFINED",
    "classification_metrics",
    "compute_metrics",
    "condition_table",
    "format_metric",
    "roadwork_probabilities",
]
