"""Metrics and the model card of data_collator.training."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from data_collator.training import classification_metrics, compute_metrics, model_card, roadwork_probabilities
from modeling_roadwork import RoadworkConfig


def test_metrics_threshold_like_the_validators_and_apply_the_reward_formula():
    probabilities = [0.9, 0.5, 0.2, 0.7, 0.4, 0.51]
    labels = [1, 1, 0, 0, 0, 1]
    metrics = classification_metrics(probabilities, labels)
    predictions = [1, 0, 0, 1, 0, 1]  # round(): 0.5 counts as None
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["streetvision_reward"] == pytest.approx((0.5 * max(metrics["mcc"], 0) + 0.5 * 4 / 6) ** 3)
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    one_class = classification_metrics([0.9, 0.8], [1, 1])
    assert math.isnan(one_class["roc_auc"]) and one_class["mcc"] == 0.0


def test_compute_metrics_reads_logits():
    logits = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(roadwork_probabilities(logits), [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 0.5])

    class Prediction:
        predictions = (logits,)
        label_ids = np.array([1, 0, 1])

    assert compute_metrics(Prediction())["accuracy"] == pytest.approx(2 / 3)


def test_model_card_content():
    card = model_card(
        repo_id="owner/roadwork", config=RoadworkConfig(), dataset="natix-network-org/roadwork",
        metrics={"test_mcc": 0.91234, "test_runtime": 3.0, "epoch": 4.0}, base_model="facebook/dinov3-vith16plus-pretrain-lvd1689m",
    )  # fmt: skip
    front = card.split("---")[1]
    assert "datasets:\n- natix-network-org/roadwork" in front and "base_model: facebook/dinov3" in front
    assert "| test_mcc | 0.9123 |" in card and "runtime" not in card and "| epoch |" not in card
    assert 'from_pretrained("owner/roadwork", trust_remote_code=True)' in card
    assert re.search(r"DINOv3\s+License", card)
    local = model_card(repo_id="outputs/quickstart", config=RoadworkConfig(), dataset="synthetic")
    assert "datasets:" not in local.split("---")[1], "only Hub dataset ids go in the metadata"
    assert local.split("---", 2)[2].lstrip().startswith("# quickstart")
