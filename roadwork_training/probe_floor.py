"""The probe floor: the global linear path as a fitted logistic-regression probe, and the choice made on validation.

With `use_global_linear_path=True` and `global_linear_path_init="probe"` (`config.probe_floor`) the path is zero
(frozen, it adds nothing) while the head trains. Then:

1. `fit_global_linear_path(model, train_dataset, collator)` fits `LinearProbe` (standardised features, L2 logistic
   regression, as the benchmarks' probes) on the layer-normed global-view feature of every training row of every
   pass and folds the standardisation into `global_classifier.fc`, so that the path's softmax is the probe's
   P(Roadwork). The model's logits are now the head's plus the probe's.
2. `apply_probe_floor(model, score)` scores three models on validation with `score` (validation serving MCC in
   train.py and the benchmarks): the head alone (the path zeroed), the head plus the probe, and the probe alone (the
   classifier's last layer zeroed), and leaves the model as the best of them.

So on the validation split the model that is saved is never below the probe on its own global-view feature: a floor
by construction, not by luck; on other splits as far as validation predicts them. Why not train the head on top of
the probe (boosting)? Measured: a probe fitted on the training rows separates them perfectly (training MCC 1.000 on
850 synthetic rows x 3 passes, 1280 features), so its logits leave the head no loss to learn from, and the head
stayed the probe (README, "Quality against the simplest peer").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from modeling_roadwork.modeling_roadwork import linear_path_features, tile_max

from .evaluation import LinearProbe
from .metrics import classification_metrics


logger = logging.getLogger(__name__)


def _dataset_passes(dataset) -> int:
    """How many distinct passes a training dataset holds (the feature cache's K; 1 for live decoding)."""
    return int(getattr(getattr(dataset, "split", None), "num_passes", 1))


def _path_input(model, batch, device) -> torch.Tensor:
    """What the model's linear path reads for one collated batch (`config.global_linear_path_input`) -> (B, W)."""
    base = model.roadwork
    view_features = batch.get("view_features")
    if view_features is None:
        pixel_values = batch["pixel_values"].to(device)
        if model.config.global_linear_path_input == "global":  # the global view alone: embed view 0 only
            return base.embed_images(pixel_values[:, 0])  # (B, 3, S, S) -> (B, D)
        view_features = base.extract_view_features(pixel_values)  # (B, V, 3, S, S) -> (B, V, D)
    view_features = view_features.to(device)
    return linear_path_features(model.config, view_features[:, 0], tile_max(view_features))


@torch.no_grad()
def global_view_features(model, dataset, collator, *, num_passes: int | None = None, batch_size: int = 64):
    """
    What the linear path reads (the pooled backbone feature of the global view, view 0, and with
    `global_linear_path_input="global+tile_max"` the tiles' element-wise max beside it) for every decodable row of
    `dataset`, over `num_passes` epochs' draws (default: every cached pass, one for live decoding) -> features (N, W)
    float32, labels (N,). Rows the collator drops (undecodable images) are left out. The dataset is set back to
    epoch 0.
    """
    device = next(model.parameters()).device
    num_passes = num_passes or _dataset_passes(dataset)
    features, labels = [], []
    for epoch in range(num_passes):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
        for batch in loader:
            features.append(_path_input(model, batch, device).float().cpu())
            labels.append(batch["labels"].cpu())
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    if not features:
        raise ValueError("fit_global_linear_path: the training dataset yielded no decodable rows")
    return torch.cat(features).numpy(), torch.cat(labels).numpy().astype(int)


@torch.no_grad()
def fit_global_linear_path(
    model, train_dataset, collator, *, c: float = 1.0, seed: int = 0, num_passes: int | None = None,
    batch_size: int = 64,
) -> dict:  # fmt: skip
    """
    Writes a logistic-regression probe on what the path reads of the training rows (`global_view_features`) into
    `model.global_classifier` (frozen). `c` is the probe's inverse L2 strength (the benchmarks' `--probe_c`). Returns
    what was fitted (rows, passes, the probe's MCC on its own training rows).
    """
    config = model.config
    if not config.probe_floor:
        raise ValueError(
            "fit_global_linear_path needs use_global_linear_path=True and global_linear_path_init='probe', got "
            f"use_global_linear_path={config.use_global_linear_path}, "
            f"global_linear_path_init={config.global_linear_path_init!r}"
        )
    if config.num_labels != 2:
        raise ValueError(f"the probe floor is binary (None / Roadwork); num_labels={config.num_labels}")
    was_training = model.training
    model.eval()
    path = model.global_classifier
    features, labels = global_view_features(model, train_dataset, collator, num_passes=num_passes,
                                            batch_size=batch_size)  # fmt: skip
    device = path.fc.weight.device
    normed = path.layer_norm(torch.from_numpy(features).to(device)).float().cpu().numpy()  # what fc reads
    probe = LinearProbe.fit(normed, labels, c=c, seed=seed)
    # logit(P) = coef . (x - mean) / scale + b = w . x + b', with w = coef / scale, b' = b - w . mean; the two logits
    # are -/+ half of it, so softmax(logits)[1] = sigmoid(w . x + b').
    coef = probe.classifier.coef_[0] / probe.scale
    intercept = float(probe.classifier.intercept_[0] - coef @ probe.mean)
    weight = torch.as_tensor(coef, dtype=path.fc.weight.dtype, device=device)
    path.fc.weight.copy_(torch.stack([-weight / 2, weight / 2]))
    path.fc.bias.copy_(torch.tensor([-intercept / 2, intercept / 2], dtype=path.fc.bias.dtype, device=device))
    path.requires_grad_(False)
    model.train(was_training)
    train_mcc = classification_metrics(probe.predict_proba(normed), labels).get("mcc", math.nan)
    info = {"probe_rows": len(labels), "probe_passes": num_passes or _dataset_passes(train_dataset),
            "probe_train_mcc": float(train_mcc)}  # fmt: skip
    logger.info("global linear path fitted as a probe on %d rows (%d passes); its training MCC %.3f",
                info["probe_rows"], info["probe_passes"], info["probe_train_mcc"])  # fmt: skip
    return info


FLOOR_CHOICES = ("head", "head+probe", "probe")  # in this order of preference on a tie


@torch.no_grad()
def apply_probe_floor(model, score: Callable[[object], float]) -> dict:
    """
    Scores the head alone, the head plus the fitted probe path and the probe alone with `score(model) -> float`
    (higher is better; NaN counts as the worst) and leaves `model` as the best: the path's `fc` or the classifier's
    last layer (`classifier.fc2`) zeroed, or both kept. A tie goes to the first of `FLOOR_CHOICES`. Returns
    `{"floor_choice", "floor_head_score", "floor_head+probe_score", "floor_probe_score"}`; `{}` when the config has no
    probe floor.
    """
    if not model.config.probe_floor:
        return {}
    layers = {"path": model.global_classifier.fc, "head": model.classifier.fc2}
    saved = {name: (layer.weight.detach().clone(), layer.bias.detach().clone()) for name, layer in layers.items()}
    zeroed = {"head": ("path",), "head+probe": (), "probe": ("head",)}

    def set_choice(choice: str) -> None:
        for name, layer in layers.items():
            weight, bias = saved[name]
            layer.weight.copy_(torch.zeros_like(weight) if name in zeroed[choice] else weight)
            layer.bias.copy_(torch.zeros_like(bias) if name in zeroed[choice] else bias)

    scores = {}
    for choice in FLOOR_CHOICES:
        set_choice(choice)
        value = float(score(model))
        scores[choice] = value if math.isfinite(value) else -math.inf
    best = max(FLOOR_CHOICES, key=lambda choice: (scores[choice], -FLOOR_CHOICES.index(choice)))
    set_choice(best)
    logger.info("probe floor on validation: %s -> %s kept",
                ", ".join(f"{c} {scores[c]:.4f}" for c in FLOOR_CHOICES), best)  # fmt: skip
    result = {"floor_choice": best}
    result.update({f"floor_{c}_score": (v if math.isfinite(v) else None) for c, v in scores.items()})
    return result


__all__ = ["FLOOR_CHOICES", "apply_probe_floor", "fit_global_linear_path", "global_view_features"]
