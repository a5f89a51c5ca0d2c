"""
roadwork_loss (modeling_roadwork/losses_roadwork.py) called directly: which components run, and the weighted total.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_roadwork import LOSS_COMPONENTS, RoadworkConfig, loss_weights, roadwork_loss
from modeling_roadwork.losses_roadwork import (
    LOSS_WEIGHT_FIELDS,
    dice_loss,
    focal_loss,
    view_consistency_loss,
    view_detector_loss,
)


B, KEPT, LABELS, WEATHER, SEG = 4, 3, 2, 3, 6
# Distinct weights, so that a weight looked up under the wrong name changes the total.
WEIGHTS = {
    "focal_loss_weight": 1.0,
    "consistency_loss_weight": 2.0,
    "weather_loss_weight": 3.0,
    "seg_loss_weight": 5.0,
    "detector_loss_weight": 7.0,
}
VIEWS = 5
NAN = float("nan")


def _config(**overrides) -> RoadworkConfig:
    return RoadworkConfig(weather_vocab=["sunny", "rainy", "cloudy"], **{**WEIGHTS, **overrides})


def _inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(B, LABELS, generator=g, requires_grad=True),
        "labels": torch.tensor([0, 1, 1, 0]),
        "view_logits": torch.randn(B, KEPT, LABELS, generator=g),
        "weather_logits": torch.randn(B, WEATHER, generator=g),
        "weather_labels": torch.tensor([1, -100, 2, 7]),  # rows 1 and 3 are unknown
        "seg_logits": torch.randn(B, SEG, 8, 8, generator=g),
        "seg_masks": torch.rand(B, SEG, 16, 16, generator=g),
        "seg_mask_valid": torch.tensor([True, False, False, True]),
        "view_detector_logits": torch.randn(B, VIEWS, generator=g, requires_grad=True),
        # row 0: one positive view, a sliver (ignored) and negatives; row 2: no masks; row 3: nothing but negatives
        "view_coverage": torch.tensor([[0.02, 0.0005, 0.0, 0.0, 0.00001], [0.0] * VIEWS, [NAN] * VIEWS,
                                       [0.0] * VIEWS]),  # fmt: skip
    }


def test_weights_are_read_from_the_config_by_component_name():
    assert tuple(LOSS_WEIGHT_FIELDS) == LOSS_COMPONENTS
    assert loss_weights(_config()) == {
        "focal_loss": 1.0,
        "consistency_loss": 2.0,
        "weather_loss": 3.0,
        "seg_loss": 5.0,
        "detector_loss": 7.0,
    }


def test_every_component_and_the_weighted_total():
    inputs = _inputs()
    total, components = roadwork_loss(_config(), **inputs)
    assert set(components) == set(LOSS_COMPONENTS) and all(v is not None for v in components.values())
    logits, labels = inputs["logits"], inputs["labels"]
    expected = {
        "focal_loss": focal_loss(logits, labels, gamma=2.0, alpha=0.25, label_smoothing=0.1),
        "consistency_loss": view_consistency_loss(inputs["view_logits"]),
        "weather_loss": F.cross_entropy(inputs["weather_logits"][[0, 2]], torch.tensor([1, 2])),
        "seg_loss": dice_loss(inputs["seg_logits"][[0, 3]], inputs["seg_masks"][[0, 3]]),
        "detector_loss": view_detector_loss(inputs["view_detector_logits"], inputs["view_coverage"], 0.001),
    }
    for name, value in expected.items():
        torch.testing.assert_close(components[name], value, msg=name)
    torch.testing.assert_close(total, 1.0 * expected["focal_loss"] + 2.0 * expected["consistency_loss"]
                               + 3.0 * expected["weather_loss"] + 5.0 * expected["seg_loss"]
                               + 7.0 * expected["detector_loss"])  # fmt: skip
    total.backward()
    assert inputs["logits"].grad.abs().sum() > 0


def test_consistency_target_final_distils_the_detached_prediction():
    inputs = _inputs()
    _, components = roadwork_loss(_config(consistency_target="final"), **inputs)
    target = inputs["logits"].detach().softmax(-1)
    torch.testing.assert_close(components["consistency_loss"], view_consistency_loss(inputs["view_logits"], target))


@pytest.mark.parametrize(
    "drop, overrides, skipped",
    [
        (("view_logits",), {}, {"consistency_loss"}),
        (("weather_labels",), {}, {"weather_loss"}),
        (("weather_logits",), {}, {"weather_loss"}),
        (("seg_masks",), {}, {"seg_loss"}),
        ((), {"seg_loss_weight": 0.0, "focal_loss_weight": 0.0}, {"seg_loss", "focal_loss"}),
        (("view_coverage",), {}, {"detector_loss"}),
        (("view_detector_logits",), {}, {"detector_loss"}),
        ((), {"detector_loss_weight": 0.0}, {"detector_loss"}),
        (("view_logits", "weather_logits", "seg_logits", "view_detector_logits"), {},
         {"consistency_loss", "weather_loss", "seg_loss", "detector_loss"}),
    ],
)
def test_a_component_without_its_inputs_or_weight_is_none(drop, overrides, skipped):
    inputs = {k: v for k, v in _inputs().items() if k not in drop}
    config = _config(**overrides)
    total, components = roadwork_loss(config, **inputs)
    assert {name for name, value in components.items() if value is None} == skipped
    weights = loss_weights(config)
    torch.testing.assert_close(total, sum(weights[n] * v for n, v in components.items() if v is not None))


def test_rows_without_labels_skip_a_component_instead_of_giving_nan():
    inputs = _inputs()
    inputs["weather_labels"] = torch.full((B,), -100)
    inputs["seg_mask_valid"] = torch.zeros(B, dtype=torch.bool)
    total, components = roadwork_loss(_config(), **inputs)
    assert components["weather_loss"] is None and components["seg_loss"] is None
    assert torch.isfinite(total)


def test_all_seg_rows_valid_when_no_validity_mask_is_given():
    inputs = _inputs()
    del inputs["seg_mask_valid"]
    _, components = roadwork_loss(_config(), **inputs)
    torch.testing.assert_close(components["seg_loss"], dice_loss(inputs["seg_logits"], inputs["seg_masks"]))


def test_nothing_to_compute_gives_a_zero_that_keeps_the_graph():
    inputs = _inputs()
    total, components = roadwork_loss(_config(focal_loss_weight=0.0), logits=inputs["logits"], labels=inputs["labels"])
    assert all(value is None for value in components.values())
    assert total.item() == 0.0 and total.requires_grad


def test_view_detector_loss_counts_clear_views_only():
    """Positives at coverage >= the threshold, negatives below a tenth of it; slivers and mask-free rows ignored."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    coverage = torch.tensor([[0.01, 0.0, 0.0005, 0.00009], [NAN] * 4])
    loss = view_detector_loss(logits, coverage, positive_coverage=0.001)
    # counted: view 0 (positive), view 1 and view 3 (negatives); view 2 is a sliver; row 1 has no masks
    expected = F.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0, 3.0]), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[1].abs().sum() == 0 and logits.grad[0, 0] != 0
    assert view_detector_loss(logits, torch.full((2, 4), NAN), positive_coverage=0.001) is None


def test_view_detector_focal_gamma_weighs_each_view_by_its_error():
    """gamma > 0 scales each counted view's BCE by (1 - p_t) ** gamma; an easy view weighs less than a hard one."""
    logits = torch.tensor([[4.0, -4.0, 3.0, -2.0]])
    coverage = torch.tensor([[0.01, 0.0, 0.0, 0.02]])  # easy positive, easy negative, hard negative, hard positive
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    bce = F.binary_cross_entropy_with_logits(logits[0], targets, reduction="none")
    p_t = torch.tensor([torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(4.0)),
                        torch.sigmoid(torch.tensor(-3.0)), torch.sigmoid(torch.tensor(-2.0))])  # fmt: skip
    expected = ((1 - p_t) ** 2 * bce).mean()
    torch.testing.assert_close(view_detector_loss(logits, coverage, 0.001, gamma=2.0), expected)
    torch.testing.assert_close(view_detector_loss(logits, coverage, 0.001, gamma=0.0), bce.mean())
    # Through the config: roadwork_loss passes detector_focal_gamma on.
    inputs = _inputs()
    _, plain = roadwork_loss(_config(), **inputs)
    _, focused = roadwork_loss(_config(detector_focal_gamma=2.0), **inputs)
    torch.testing.assert_close(focused["detector_loss"], view_detector_loss(
        inputs["view_detector_logits"], inputs["view_coverage"], 0.001, gamma=2.0))  # fmt: skip
    assert focused["detector_loss"] < plain["detector_loss"]


def test_detector_focal_gamma_must_not_be_negative():
    with pytest.raises(ValueError, match="detector_focal_gamma"):
        RoadworkConfig(detector_focal_gamma=-1.0)
