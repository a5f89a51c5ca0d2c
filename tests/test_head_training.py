"""train_head's settings: the moving average of the weights (--ema_decay) and the training order's own seed."""

from __future__ import annotations

import pytest
import torch
from roadwork_testing import tiny_config
from test_probe_floor import _collate, _data

from modeling_roadwork import RoadworkForImageClassification
from roadwork_training.head_training import HeadTrainingSettings, WeightAverage, train_head


def _model() -> RoadworkForImageClassification:
    torch.manual_seed(0)
    return RoadworkForImageClassification(tiny_config(use_global_linear_path=False, use_metadata=False)).eval()


def _head_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_update_follows_the_warmed_up_decay_and_skips_frozen_parameters():
    model = _model()
    average = WeightAverage(model, decay=0.9)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not any(id(p) in frozen for p in average.parameters)
    weight = model.classifier.fc2.weight
    start = weight.detach().clone()
    expected = start.clone()
    for n, shift in enumerate([1.0, -2.0, 0.5]):
        with torch.no_grad():
            weight.add_(shift)
        average.update()
        decay = min(0.9, (1 + n) / (10 + n))  # 0.1, 0.1818..., 0.25: the first updates follow the weights closely
        expected = decay * expected + (1 - decay) * weight.detach()
    index = next(i for i, p in enumerate(average.parameters) if p is weight)
    torch.testing.assert_close(average.average[index], expected)


def test_swap_twice_restores_the_live_weights():
    model = _model()
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        for p in average.parameters:
            p.add_(1.0)
    live = _head_weights(model)
    average.swap()
    assert not torch.equal(model.classifier.fc2.weight, live["classifier.fc2.weight"])
    average.swap()
    for name, value in _head_weights(model).items():
        torch.testing.assert_close(value, live[name])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightAverage(_model(), decay)


def test_train_head_without_validation_ends_with_the_average():
    dataset = _data()
    settings = dict(num_train_epochs=2, per_device_train_batch_size=16)
    # Each model is built (seeding the global RNG, which dropout draws from) right before it trains.
    train_head(plain := _model(), dataset, _collate, HeadTrainingSettings(**settings))
    train_head(averaged := _model(), dataset, _collate, HeadTrainingSettings(**settings, ema_decay=0.9))
    # A decay near 0 averages nothing: the same weights as without an average (the plumbing changes no step).
    train_head(tiny_decay := _model(), dataset, _collate, HeadTrainingSettings(**settings, ema_decay=1e-9))
    for name, value in _head_weights(plain).items():
        torch.testing.assert_close(_head_weights(tiny_decay)[name], value)
    assert not torch.allclose(averaged.classifier.fc2.weight, plain.classifier.fc2.weight)


def test_train_head_validates_and_keeps_the_average():
    dataset = _data()
    seen = []

    def validate(model):
        seen.append(_head_weights(model))
        return [0.1, 0.9, 0.2][len(seen) - 1]  # the second epoch is the best

    model = _model()
    train_head(model, dataset, _collate, HeadTrainingSettings(num_train_epochs=3, per_device_train_batch_size=16,
                                                              ema_decay=0.9), validate=validate)  # fmt: skip
    for name, value in _head_weights(model).items():
        torch.testing.assert_close(value, seen[1][name])
    # What validate saw is the average, not the live weights: a run without it validates other weights.
    live_seen = []
    train_head(_model(), dataset, _collate, HeadTrainingSettings(num_train_epochs=1, per_device_train_batch_size=16),
               validate=lambda m: live_seen.append(_head_weights(m)) or 0.0)  # fmt: skip
    assert not torch.allclose(seen[0]["classifier.fc2.weight"], live_seen[0]["classifier.fc2.weight"])


def test_data_seed_fixes_the_order_whatever_the_seed():
    """Two seeds with one data_seed see the same batches: built from one initialisation they end equal."""
    dataset = _data()
    runs = []
    for seed in (1, 2):
        train_head(model := _model(), dataset, _collate, HeadTrainingSettings(
            num_train_epochs=1, per_device_train_batch_size=16, seed=seed, data_seed=7))  # fmt: skip
        runs.append(_head_weights(model))
    train_head(other := _model(), dataset, _collate, HeadTrainingSettings(
        num_train_epochs=1, per_device_train_batch_size=16, seed=1))  # fmt: skip
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value)
    assert not torch.allclose(_head_weights(other)["classifier.fc2.weight"], runs[0]["classifier.fc2.weight"])
