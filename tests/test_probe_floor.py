"""The probe floor: the global linear path fitted as a frozen probe, the head's residual, the validation fall-back."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from roadwork_testing import tiny_config
from test_train import TINY_ARGS, read_json, roadwork_cache  # noqa: F401 (a fixture)

import train
from modeling_roadwork import RoadworkForImageClassification
from roadwork_training.evaluation import LinearProbe
from roadwork_training.head_training import HeadTrainingSettings, train_head
from roadwork_training.probe_floor import (
    FLOOR_CHOICES,
    apply_probe_floor,
    fit_global_linear_path,
    global_view_features,
)


D, V = 32, 12  # the tiny backbone's width and the views


class _Features(torch.utils.data.Dataset):
    """Rows of cached view features: `set_epoch` switches between `passes` draws, as the feature cache does."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels, self.epoch = features, labels, 0  # (P, N, V, D), (N,)
        self.split = SimpleNamespace(num_passes=len(features))  # as RoadworkCachedDataset.split (a CachedSplit)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch % len(self.features)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"view_features": self.features[self.epoch, index], "labels": self.labels[index]}


def _collate(rows: list[dict]) -> dict:
    return {"view_features": torch.stack([r["view_features"] for r in rows]),
            "labels": torch.stack([r["labels"] for r in rows])}  # fmt: skip


DIRECTION = torch.randn(D, generator=torch.Generator().manual_seed(123))


def _data(n: int = 96, passes: int = 2, seed: int = 0, noise: float = 0.5) -> _Features:
    """Labels that view 0 predicts linearly (plus `noise`), so the probe is good but not perfect."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(passes, n, V, D, generator=generator)
    labels = ((features[0, :, 0] @ DIRECTION + noise * torch.randn(n, generator=generator)) > 0).long()
    return _Features(features, labels)


def _floor_model(**overrides) -> RoadworkForImageClassification:
    torch.manual_seed(0)
    config = tiny_config(use_global_linear_path=True, global_linear_path_init="probe", use_metadata=False, **overrides)
    return RoadworkForImageClassification(config).eval()


def test_unfitted_probe_path_is_zero_and_frozen_even_after_a_save_load_round_trip(tmp_path):
    model = _floor_model()
    assert model.config.probe_floor
    assert torch.count_nonzero(model.global_classifier.fc.weight) == 0
    assert torch.count_nonzero(model.global_classifier.fc.bias) == 0
    assert not any(p.requires_grad for p in model.global_classifier.parameters())
    assert model.classifier.fc2.weight.requires_grad, "the head still trains"
    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.global_classifier.parameters()), "from_pretrained unfroze it"
    joint = RoadworkForImageClassification(tiny_config(use_global_linear_path=True, global_linear_path_init="joint"))
    assert not joint.config.probe_floor and all(p.requires_grad for p in joint.global_classifier.parameters())
    with pytest.raises(ValueError, match="global_linear_path_init"):
        tiny_config(global_linear_path_init="ridge")


def test_fitted_path_is_exactly_the_probe_on_the_global_view_and_adds_to_the_head():
    dataset = _data()
    model = _floor_model()
    with torch.no_grad():
        model.classifier.fc2.weight.normal_(0, 1.0)  # a trained head's residual
    test = torch.randn(40, V, D)
    with torch.no_grad():
        head = model(view_features=test).logits  # the unfitted path adds nothing
    info = fit_global_linear_path(model, dataset, _collate, seed=0)
    assert info["probe_rows"] == 2 * len(dataset) and info["probe_passes"] == 2
    assert dataset.epoch == 0, "the dataset is set back to epoch 0"
    # The same probe fitted by hand on the layer-normed view-0 features of both passes.
    features, labels = global_view_features(model, dataset, _collate)
    np.testing.assert_array_equal(features[: len(dataset)], dataset.features[0, :, 0].numpy())
    with torch.no_grad():
        normed = model.global_classifier.layer_norm(torch.from_numpy(features)).numpy()
        probe = LinearProbe.fit(normed, labels, seed=0)
        path = model.global_classifier(test[:, 0])
        expected = probe.predict_proba(model.global_classifier.layer_norm(test[:, 0]).numpy())
        torch.testing.assert_close(model(view_features=test).logits, head + path)
    np.testing.assert_allclose(path.softmax(-1)[:, 1].numpy(), expected, atol=1e-5)
    assert info["probe_train_mcc"] > 0.5, "view 0 predicts these labels"
    assert not any(p.requires_grad for p in model.global_classifier.parameters())


def test_while_the_head_trains_the_path_gets_no_gradient_and_stays_zero():
    dataset = _data()
    model = _floor_model()
    model.train()
    model(**_collate([dataset[i] for i in range(16)])).loss.backward()
    assert all(p.grad is None for p in model.global_classifier.parameters())
    assert model.classifier.fc2.weight.grad.abs().sum() > 0
    train_head(model, dataset, _collate, HeadTrainingSettings(num_train_epochs=2, per_device_train_batch_size=16))
    # Without validation train_head fits the probe at the end and serves head + probe.
    assert torch.count_nonzero(model.global_classifier.fc.weight) > 0
    assert torch.count_nonzero(model.classifier.fc2.weight) > 0


def _mcc(model, dataset) -> float:
    from roadwork_training.metrics import classification_metrics

    batch = _collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        probabilities = model(view_features=batch["view_features"]).logits.softmax(-1)[:, 1].numpy()
    return classification_metrics(probabilities, batch["labels"].numpy())["mcc"]


def test_floor_keeps_the_probe_alone_when_the_head_validates_lower():
    train_set, validation = _data(seed=0), _data(seed=1, noise=0.0)
    model = _floor_model()
    with torch.no_grad():  # a head that learned noise: large random residual logits
        model.classifier.fc2.weight.normal_(0, 50.0)
    head_mcc = _mcc(model, validation)
    fit_global_linear_path(model, train_set, _collate)
    result = apply_probe_floor(model, lambda m: _mcc(m, validation))
    assert result["floor_choice"] == "probe"
    assert result["floor_head_score"] == pytest.approx(head_mcc)
    assert result["floor_probe_score"] > max(result["floor_head_score"], result["floor_head+probe_score"])
    assert torch.count_nonzero(model.classifier.fc2.weight) == 0
    assert _mcc(model, validation) == pytest.approx(result["floor_probe_score"])


def test_floor_keeps_the_head_or_the_sum_with_their_weights_restored_exactly():
    dataset = _data()
    model = _floor_model()
    fit_global_linear_path(model, dataset, _collate)
    with torch.no_grad():
        model.classifier.fc2.weight.normal_(0, 1.0)
        model.classifier.fc2.bias.fill_(0.25)
    trained = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("roadwork.backbone.")}

    def norms(m) -> tuple[float, float]:
        return float(m.classifier.fc2.weight.abs().sum()), float(m.global_classifier.fc.weight.abs().sum())

    # A score that wants the head's weights and not the path's: the head alone; then one that wants both: the sum.
    result = apply_probe_floor(model, lambda m: norms(m)[0] - norms(m)[1])
    assert result["floor_choice"] == "head" and torch.count_nonzero(model.global_classifier.fc.weight) == 0
    model.load_state_dict(trained, strict=False)
    assert apply_probe_floor(model, lambda m: min(norms(m)))["floor_choice"] == "head+probe"
    for key, value in model.state_dict().items():
        if key in trained:
            torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    # A tie goes to the head; NaN (an undefined metric) counts as the worst score.
    model.load_state_dict(trained, strict=False)
    assert apply_probe_floor(model, lambda m: 0.5)["floor_choice"] == "head"
    calls = iter([math.nan, math.nan, 0.1])
    result = apply_probe_floor(model, lambda m: next(calls))
    assert result["floor_choice"] == "probe" and result["floor_head_score"] is None
    assert apply_probe_floor(RoadworkForImageClassification(tiny_config(use_global_linear_path=False)),
                             lambda m: 1.0) == {}


def test_train_head_fits_the_probe_and_reports_the_floor():
    dataset = _data()
    validation = _data(seed=3)
    model = _floor_model()
    report = {}
    train_head(model, dataset, _collate, HeadTrainingSettings(num_train_epochs=2, per_device_train_batch_size=16),
               validate=lambda m: _mcc(m, validation), report=report)  # fmt: skip
    assert report["probe_rows"] == 2 * len(dataset)
    assert report["floor_choice"] in FLOOR_CHOICES
    best = max(report[f"floor_{c}_score"] for c in FLOOR_CHOICES)
    assert _mcc(model, validation) == pytest.approx(best)


def test_fit_refuses_a_model_without_the_probe_floor():
    dataset = _data()
    with pytest.raises(ValueError, match="global_linear_path_init='probe'"):
        fit_global_linear_path(RoadworkForImageClassification(tiny_config(use_global_linear_path=False)), dataset,
                               _collate)


@pytest.mark.slow
def test_train_py_fits_the_probe_end_to_end_and_records_the_floor(roadwork_cache, tmp_path, monkeypatch, capsys):  # noqa: F811
    """train.py end to end (pixels, no cache): the probe is fitted from the backbone's view 0 after training, the
    floor decided on validation, and both land in all_results.json, the summary line and the saved weights."""
    monkeypatch.setenv("ROADWORK_CACHE", str(roadwork_cache))
    out = tmp_path / "run"
    summary = train.main([*TINY_ARGS, "--model_overrides", '{"use_global_linear_path": true}', "--num_train_epochs",
                          "2", "--augmentation_strength", "none", "--output_dir", str(out)])  # fmt: skip
    results = read_json(out / "all_results.json")
    assert results["probe_floor_probe_rows"] == 40 and results["probe_floor_probe_passes"] == 1
    assert results["probe_floor_choice"] in FLOOR_CHOICES
    assert summary["metrics"]["probe_floor_choice"] == results["probe_floor_choice"]
    assert f"probe floor: {results['probe_floor_choice']} kept (validation head " in capsys.readouterr().out
    loaded = RoadworkForImageClassification.from_pretrained(out)
    assert loaded.config.probe_floor
    path_on = torch.count_nonzero(loaded.global_classifier.fc.weight) > 0
    head_on = torch.count_nonzero(loaded.classifier.fc2.weight) > 0
    assert (head_on, path_on) == {"head": (True, False), "head+probe": (True, True),
                                  "probe": (False, True)}[results["probe_floor_choice"]]  # fmt: skip


def _one_tile_data(n: int = 160, passes: int = 2, seed: int = 0) -> _Features:
    """Roadwork is one random tile pushed along DIRECTION (a small object in one tile); view 0 does not show it."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(passes, n, V, D, generator=generator)
    labels = (torch.rand(n, generator=generator) < 0.5).long()
    for p in range(passes):
        tiles = torch.randint(1, V, (n,), generator=generator)
        features[p, torch.arange(n), tiles] += 4.0 * labels[:, None] * DIRECTION.abs()[None] / DIRECTION.abs().max()
    return _Features(features, labels)


def test_tile_max_path_is_the_probe_on_the_global_view_and_the_tiles_max():
    model = _floor_model(global_linear_path_input="global+tile_max")
    assert model.config.linear_path_feature_size == 2 * D
    assert model.global_classifier.fc.in_features == 2 * D
    dataset = _one_tile_data()
    fit_global_linear_path(model, dataset, _collate, seed=0)
    features, labels = global_view_features(model, dataset, _collate)
    first = dataset.features[0]
    expected_input = torch.cat([first[:, 0], first[:, 1:].amax(1)], -1)
    np.testing.assert_array_equal(features[: len(dataset)], expected_input.numpy())
    test = _one_tile_data(seed=7)
    batch = _collate([test[i] for i in range(len(test))])
    with torch.no_grad():
        normed = model.global_classifier.layer_norm(torch.from_numpy(features)).numpy()
        probe = LinearProbe.fit(normed, labels, seed=0)
        cat = torch.cat([batch["view_features"][:, 0], batch["view_features"][:, 1:].amax(1)], -1)
        expected = probe.predict_proba(model.global_classifier.layer_norm(cat).numpy())
        model.classifier.fc2.weight.zero_()
        model.classifier.fc2.bias.zero_()  # the probe alone
        actual = model(view_features=batch["view_features"]).logits.softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # The signal sits in one tile: the tile-max probe finds it, the global view's probe cannot.
    global_model = _floor_model()
    fit_global_linear_path(global_model, dataset, _collate, seed=0)
    with torch.no_grad():
        global_model.classifier.fc2.weight.zero_()
        global_model.classifier.fc2.bias.zero_()
    assert _mcc(model, test) > 0.8 and _mcc(global_model, test) < 0.3


def test_tile_max_path_reads_pixels_like_the_cache_and_survives_save_load(tmp_path):
    from roadwork_testing import VIEW_SIZE

    from roadwork_training.probe_floor import _path_input

    model = _floor_model(global_linear_path_input="global+tile_max")
    pixels = torch.randn(3, V, 3, VIEW_SIZE, VIEW_SIZE)
    with torch.no_grad():
        views = model.roadwork.extract_view_features(pixels)
        from_pixels = _path_input(model, {"pixel_values": pixels}, torch.device("cpu"))
        from_cache = _path_input(model, {"view_features": views}, torch.device("cpu"))
    torch.testing.assert_close(from_pixels, from_cache)
    torch.testing.assert_close(from_cache, torch.cat([views[:, 0], views[:, 1:].amax(1)], -1))
    fit_global_linear_path(model, _one_tile_data(n=48), _collate, seed=0)
    model.save_pretrained(tmp_path)
    loaded = RoadworkForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.global_linear_path_input == "global+tile_max"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_tile_max_input_is_validated():
    with pytest.raises(ValueError, match="global_linear_path_input='tiles'.*must be one of"):
        tiny_config(global_linear_path_input="tiles")
    with pytest.raises(ValueError, match="needs tiles: num_views >= 2, got 1"):
        tiny_config(global_linear_path_input="global+tile_max", num_views=1, use_view_pruning=False)
