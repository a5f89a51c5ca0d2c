"""A small in-process training loop for the roadwork head, for the ablations and the cache benchmark.

`RoadworkTrainer` (train.py) is the full recipe: checkpoints, early stopping, logging, several processes. Training
from the feature cache takes seconds, where Trainer's per-run set-up would dominate, so the ablations use this loop:
AdamW on the trainable parameters, linear warm-up then cosine decay, gradient clipping, the GPS-weighted sampler,
`set_epoch` each epoch (augmentation passes, metadata dropout), and the final model evaluated per condition.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_collator.gps_weighting import make_gps_sampler

from .metrics import classification_metrics, roadwork_probabilities
from .probe_floor import apply_probe_floor, fit_global_linear_path


@dataclass
class HeadTrainingSettings:
    """The optimisation settings of `train_head` (named as the TrainingArguments they stand for)."""

    num_train_epochs: int = 4
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: float = 5  # steps, or a share of all steps when below 1 (as TrainingArguments.warmup_steps)
    max_grad_norm: float = 1.0
    seed: int = 42
    # The training order's seed (as TrainingArguments.data_seed); None: `seed`. Fixed across seeds, the heads differ
    # by their initialisation (and dropout) alone.
    data_seed: int | None = None
    # With a `validate` callable: stop after this many epochs without a better score, keep the best epoch's head.
    early_stopping_patience: int | None = None
    # An exponential moving average of the trainable weights (`WeightAverage`): validated, kept and returned instead
    # of the last step's weights. None: off.
    ema_decay: float | None = None


class WeightAverage:
    """
    An exponential moving average of a model's trainable parameters (timm's `ModelEmaV3` rule: the decay warms up as
    `min(decay, (1 + n) / (10 + n))` after `n` updates, so the first steps are not frozen into the average).
    `update()` after each optimizer step; `swap()` exchanges the live weights and the average in place, so calling it
    twice restores the live ones. Frozen parameters (the backbone) and buffers are not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.parameters]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.parameters], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        for live, average in zip(self.parameters, self.average):
            buffer = live.detach().clone()
            live.copy_(average)
            average.copy_(buffer)


def warmup_steps(warmup: float, total: int) -> int:
    """Warm-up steps: `warmup` itself, or that share of the `total` steps when 0 < warmup < 1 (as transformers)."""
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup}")
    return math.ceil(warmup * total) if warmup < 1 else int(warmup)


def _schedule(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_head(
    model, train_dataset, collator, settings: HeadTrainingSettings, sample_weights: Sequence[float] | None = None,
    num_workers: int = 0, validate: Callable[[object], float] | None = None, report: dict | None = None,
) -> list[float]:  # fmt: skip
    """
    Trains `model` (its trainable parameters) in place on `train_dataset`; the GPS-weighted sampler when
    `sample_weights` is given, else a seeded random order. Returns the wall time of every epoch in seconds.
    `validate(model) -> score` (higher is better) runs after every epoch when given: the model ends with the weights
    of its best epoch, and with `settings.early_stopping_patience` training stops after that many epochs without a
    better score (as train.py's `load_best_model_at_end` + early stopping).
    With `config.probe_floor` the global linear path is then fitted as a probe on `train_dataset`
    (`probe_floor.fit_global_linear_path`), and with `validate` the best of the head, the head plus the probe and the
    probe alone on validation is kept (`apply_probe_floor`), as in train.py; without `validate` the model is the head
    plus the probe. What the floor did goes into `report` when given.
    With `settings.ema_decay` the moving average of the weights (`WeightAverage`) is what is validated and kept.
    """
    device = next(model.parameters()).device
    data_seed = settings.seed if settings.data_seed is None else settings.data_seed
    generator = torch.Generator().manual_seed(data_seed)
    if sample_weights is not None:
        sampler = make_gps_sampler(sample_weights, num_samples=len(train_dataset), seed=data_seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_dataset, generator=generator)
    loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=settings.per_device_train_batch_size, sampler=sampler, collate_fn=collator,
        num_workers=num_workers,
    )  # fmt: skip
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total = settings.num_train_epochs * len(loader)
    warmup = warmup_steps(settings.warmup_steps, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, warmup, total))
    average = WeightAverage(model, settings.ema_decay) if settings.ema_decay is not None else None
    times = []
    best_score, best_state, stale = -math.inf, None, 0
    for epoch in range(settings.num_train_epochs):
        started = time.perf_counter()
        model.train()
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update()
        times.append(time.perf_counter() - started)
        if validate is not None:
            model.eval()
            if average is not None:
                average.swap()  # validate (and keep) the average
            score = float(validate(model))
            score = score if math.isfinite(score) else -math.inf
            stop = False
            if best_state is None or score > best_score:
                best_score, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()
                              if not k.startswith("roadwork.backbone.")}  # fmt: skip
            else:
                stale += 1
                stop = settings.early_stopping_patience is not None and stale >= settings.early_stopping_patience
            if average is not None:
                average.swap()
            if stop:
                break
    if average is not None and best_state is None:
        average.swap()  # no validation: the model ends with the average of the whole run
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    floor = {}
    if getattr(model.config, "probe_floor", False):
        floor = fit_global_linear_path(model, train_dataset, collator, seed=settings.seed)
        if validate is not None:
            floor.update(apply_probe_floor(model, validate))
    if report is not None:
        report.update(floor)
    return times


@torch.no_grad()
def predict_logits(model, dataset, collator, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) logits and (N,) labels of `model` on `dataset`, in row order (one DataLoader pass, no shuffling)."""
    device = next(model.parameters()).device
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    logits, labels = [], []
    accepted = inspect.signature(model.forward).parameters
    for batch in loader:
        labels.append(batch.pop("labels").numpy())
        # Only the model's inputs: a collator may add bookkeeping keys, which Trainer would also drop.
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k in accepted}
        logits.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_conditions(model, datasets: Mapping[str, object], collator, batch_size: int = 32) -> dict[str, dict]:
    """condition -> `classification_metrics` (MCC thresholds round(p), ...) of `model` on that condition's dataset."""
    results = {}
    for condition, dataset in datasets.items():
        logits, labels = predict_logits(model, dataset, collator, batch_size)
        results[condition] = classification_metrics(roadwork_probabilities(logits), labels)
    return results


__all__ = [
    "HeadTrainingSettings", "WeightAverage", "evaluate_conditions", "predict_logits", "train_head", "warmup_steps",
]  # fmt: skip
