"""Metrics, the condition tables, the model card and the argument layer of roadwork_training."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef, precision_score, recall_score, roc_auc_score

from data_collator.gps_weighting import RoadworkGPSWeightingConfig
from modeling_roadwork import RoadworkConfig
from roadwork_training import classification_metrics, compute_metrics, model_card, roadwork_probabilities
from roadwork_training.arguments import RoadworkArgumentParser, prefixed_arguments, to_config
from roadwork_training.metrics import UNDEFINED, condition_table


def test_metrics_threshold_like_the_validators_and_apply_the_reward_formula():
    probabilities = [0.9, 0.5, 0.2, 0.7, 0.4, 0.51]
    labels = [1, 1, 0, 0, 0, 1]
    metrics = classification_metrics(probabilities, labels)
    predictions = [1, 0, 0, 1, 0, 1]  # round(): 0.5 counts as None
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(f1_score(labels, predictions))
    assert metrics["precision"] == pytest.approx(precision_score(labels, predictions))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predictions))
    # ROC-AUC ranks the probabilities themselves, not the thresholded predictions.
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities))
    assert metrics["roc_auc"] != pytest.approx(roc_auc_score(labels, predictions))
    assert metrics["streetvision_reward"] == pytest.approx((0.5 * max(metrics["mcc"], 0) + 0.5 * 4 / 6) ** 3)
    assert (metrics["num_positive"], metrics["num_negative"]) == (3, 3)


def test_one_class_split_reports_accuracy_and_recall_and_leaves_two_class_metrics_undefined():
    one_class = classification_metrics([0.9, 0.8, 0.3], [1, 1, 1])
    assert one_class["accuracy"] == pytest.approx(2 / 3) and one_class["recall"] == pytest.approx(2 / 3)
    for name in ("mcc", "roc_auc", "streetvision_reward"):
        assert name not in one_class, f"{name} is undefined with one class: absent, not 0 or NaN"
    table = condition_table({f"hard_serving_{k}": v for k, v in one_class.items()}, "hard")
    assert f"| mcc | {UNDEFINED} |" in table and "| accuracy | 0.6667 |" in table
    assert "nan" not in table.lower()


def test_condition_table_puts_serving_first():
    metrics = {"test_metadata_mcc": 0.7, "test_serving_mcc": 0.5, "test_no_metadata_mcc": 0.6}
    header = condition_table(metrics, "test").splitlines()[0]
    assert header == "| metric | serving | no_metadata | metadata |"
    assert "| mcc | 0.5000 | 0.6000 | 0.7000 |" in condition_table(metrics, "test")


def test_compute_metrics_reads_logits():
    logits = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(roadwork_probabilities(logits), [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 0.5])

    class Prediction:
        predictions = (logits,)
        label_ids = np.array([1, 0, 1])

    assert compute_metrics(Prediction())["accuracy"] == pytest.approx(2 / 3)


def test_model_card_leads_with_serving_and_names_every_condition():
    metrics = {
        "test_metadata_mcc": 0.91234, "test_serving_mcc": 0.41234, "test_no_metadata_mcc": 0.6,
        "test_serving_runtime": 3.0, "epoch": 4.0, "validation_serving_mcc": 0.5,
    }  # fmt: skip
    card = model_card(
        repo_id="owner/roadwork", config=RoadworkConfig(), dataset="natix-network-org/roadwork", metrics=metrics,
        base_model="facebook/dinov3-vith16plus-pretrain-lvd1689m",
    )  # fmt: skip
    front = card.split("---")[1]
    assert "datasets:\n- natix-network-org/roadwork" in front and "base_model: facebook/dinov3" in front
    assert "| metric | serving | no_metadata | metadata |" in card
    assert "| mcc | 0.4123 | 0.6000 | 0.9123 |" in card
    assert card.index("### validation") < card.index("### test")
    assert "runtime" not in card and "| epoch |" not in card
    for condition in ("`serving`", "`no_metadata`", "`metadata`"):
        assert condition in card
    assert "SDXL" in card and "nothing in this card measures them" in card
    assert 'from_pretrained("owner/roadwork", trust_remote_code=True)' in card
    assert re.search(r"DINOv3\s+License", card)
    # The probe floor gets its own section (what was fitted, the three validation scores, the choice), not "other".
    floor = {"probe_floor_probe_rows": 204, "probe_floor_probe_passes": 3, "probe_floor_probe_train_mcc": 0.87,
             "probe_floor_choice": "head+probe", "probe_floor_head_score": 0.39, "probe_floor_head+probe_score": 0.41,
             "probe_floor_probe_score": None}  # fmt: skip
    floored = model_card(repo_id="o/r", config=RoadworkConfig(), metrics={**metrics, **floor})
    section = floored.split("### probe floor", 1)[1]
    assert "on 204 training rows (3 cached or drawn passes; its MCC on those rows 0.8700)" in section
    assert "the best was kept: **head+probe**" in section
    assert "| head | 0.3900 |" in section and "| head+probe | 0.4100 |" in section
    assert "| probe | undefined (one class) |" in section
    assert "probe_floor_" not in floored and "### other" not in floored
    local = model_card(repo_id="outputs/quickstart", config=RoadworkConfig(), dataset="synthetic")
    assert "datasets:" not in local.split("---")[1], "only Hub dataset ids go in the metadata"
    assert local.split("---", 2)[2].lstrip().startswith("# quickstart")


def test_prefixed_arguments_take_types_defaults_and_help_from_the_library():
    GPS = prefixed_arguments(RoadworkGPSWeightingConfig, "gps_", exclude=("seed",))
    names = [f for f in GPS.__dataclass_fields__]
    assert "gps_seed" not in names and "gps_num_clusters" in names and "gps_min_fraction_within_50km" in names
    library = RoadworkGPSWeightingConfig.__dataclass_fields__["bracket_weights"]
    assert GPS.__dataclass_fields__["gps_bracket_weights"].metadata["help"] == library.metadata["help"]

    @dataclass
    class Other:
        seed: int = field(default=3, metadata={"help": "a seed of another group"})

    parser = RoadworkArgumentParser((GPS, Other))
    gps, other = parser.parse(["--gps_num_clusters", "3", "--gps_min_fraction_within_50km", "0.2", "--seed", "9"])
    config = to_config(gps, seed=other.seed)
    assert isinstance(config, RoadworkGPSWeightingConfig)
    assert (config.num_clusters, config.min_fraction_within_50km, config.seed) == (3, 0.2, 9)
    assert config.bracket_weights == RoadworkGPSWeightingConfig().bracket_weights
    with pytest.raises(ValueError, match="min_fraction_within_50km"):  # the library's own validation names the field
        to_config(parser.parse(["--gps_min_fraction_within_50km", "2"])[0], seed=0)
