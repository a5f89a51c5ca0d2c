"""The roadwork loss: focal, view consistency, auxiliary weather, Dice on pseudo masks, and the per-view detector's
binary cross-entropy on the views' mask coverage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig


# The loss components, in the order they are logged. Each is an output field of `RoadworkImageClassifierOutput`
# and has a weight in the config field `LOSS_WEIGHT_FIELDS[name]` (`focal_loss` -> `focal_loss_weight`).
LOSS_COMPONENTS = ("focal_loss", "consistency_loss", "weather_loss", "seg_loss", "detector_loss")
LOSS_WEIGHT_FIELDS = {name: f"{name}_weight" for name in LOSS_COMPONENTS}


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """
    Focal loss on label-smoothed cross-entropy: `alpha_t * (1 - p_t) ** gamma * CE_smoothed`, where `p_t` is the
    predicted probability of the true class and `alpha_t` is `alpha` for class 1 (Roadwork) and `1 - alpha` for the
    others (RetinaNet's class balancing). logits (B, L), labels (B,) -> scalar
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    p_t = logits.softmax(dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
    alpha_t = torch.where(labels == 1, torch.full_like(p_t, alpha), torch.full_like(p_t, 1.0 - alpha))
    return (alpha_t * (1.0 - p_t).pow(gamma) * ce).mean()


def view_consistency_loss(view_logits: torch.Tensor, target_probs: torch.Tensor | None = None) -> torch.Tensor:
    """
    `sum_i KL(p_i || p_target)` over views, averaged over the batch. `p_target` defaults to the mean of the view
    predictions (`consistency_target="views_mean"`); pass the detached final prediction to distil it into every
    view instead.
    view_logits (B, N, L), target_probs (B, L) or None -> scalar
    """
    log_p = view_logits.float().log_softmax(dim=-1)  # (B, N, L)
    if target_probs is None:
        target_probs = log_p.exp().mean(dim=1)
    log_target = target_probs.float().clamp_min(1e-8).log().unsqueeze(1)  # (B, 1, L)
    return (log_p.exp() * (log_p - log_target)).sum(dim=(-1, -2)).mean()


def dice_loss(mask_logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """
    Soft Dice loss per image and class, averaged. Masks are resized (area) to the prediction's resolution.
    mask_logits (B, K, R, R), masks (B, K, H, W) in [0, 1] -> scalar
    """
    masks = masks.float()
    if masks.shape[-2:] != mask_logits.shape[-2:]:
        masks = F.interpolate(masks, size=mask_logits.shape[-2:], mode="area")
    probs = torch.sigmoid(mask_logits.float())
    intersection = (probs * masks).sum(dim=(-1, -2))
    total = probs.sum(dim=(-1, -2)) + masks.sum(dim=(-1, -2))
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def view_detector_loss(view_detector_logits: torch.Tensor, view_coverage: torch.Tensor,
                       positive_coverage: float, gamma: float = 0.0) -> torch.Tensor | None:  # fmt: skip
    """
    Binary cross-entropy of each view's detector logit against whether the roadwork masks cover it: a view is a
    positive at coverage >= `positive_coverage`, a negative below a tenth of it, and ignored in between (an object's
    sliver at a tile's edge) and in rows without masks (NaN coverage). `None` when no view counts.
    With `gamma > 0` each view's term is scaled by `(1 - p_t) ** gamma` (focal binary cross-entropy, `p_t` the
    detector's probability of the view's target): views it already gets right (most empty tiles) weigh little, the
    hard ones (an orange look-alike it fires on, a distant cone it misses) weigh most. `gamma=0` is plain BCE.
    view_detector_logits (B, V), view_coverage (B, V) -> scalar or None
    """
    coverage = view_coverage.to(view_detector_logits.device).float()
    positive = coverage >= positive_coverage
    counted = (positive | (coverage < 0.1 * positive_coverage)) & torch.isfinite(coverage)
    if not counted.any():
        return None
    logits, targets = view_detector_logits.float()[counted], positive[counted].float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        p_t = torch.where(targets > 0, torch.sigmoid(logits), torch.sigmoid(-logits))
        bce = (1.0 - p_t).pow(gamma) * bce
    return bce.mean()


def loss_weights(config: PretrainedConfig) -> dict[str, float]:
    """The weight of every loss component, read from its config field (`LOSS_WEIGHT_FIELDS`)."""
    return {name: getattr(config, field) for name, field in LOSS_WEIGHT_FIELDS.items()}


def roadwork_loss(
    config: PretrainedConfig,
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    view_logits: torch.Tensor | None = None,
    weather_logits: torch.Tensor | None = None,
    weather_labels: torch.Tensor | None = None,
    seg_logits: torch.Tensor | None = None,
    seg_masks: torch.Tensor | None = None,
    seg_mask_valid: torch.Tensor | None = None,
    view_detector_logits: torch.Tensor | None = None,
    view_coverage: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """
    The weighted loss of [`RoadworkForImageClassification`] and its unweighted components.

    A component is computed only if its weight in `config` is > 0 and its inputs are there: `view_logits` for the
    consistency loss, `weather_logits` and rows of `weather_labels` inside the weather vocabulary for the weather loss,
    `seg_logits` and rows of `seg_masks` marked valid for the Dice loss. A skipped component is `None`, never zero or
    NaN; the total is the weighted sum of the computed ones (a zero that keeps the graph if none was).

    Args:
        config ([`RoadworkConfig`]): weights (`focal_loss_weight`, ...), `focal_gamma`, `focal_alpha`,
            `label_smoothing` and `consistency_target`.
        logits (`torch.FloatTensor` of shape `(B, num_labels)`), labels (`torch.LongTensor` of shape `(B,)`).
        view_logits (`torch.FloatTensor` of shape `(B, num_kept, num_labels)`, *optional*).
        weather_logits (`torch.FloatTensor` of shape `(B, len(weather_vocab))`, *optional*),
            weather_labels (`torch.LongTensor` of shape `(B,)`, *optional*): -100 (or any id outside the vocabulary)
            where unknown.
        seg_logits (`torch.FloatTensor` of shape `(B, K, R, R)`, *optional*), seg_masks (`torch.FloatTensor` of shape
            `(B, K, H, W)`, *optional*), seg_mask_valid (`torch.BoolTensor` of shape `(B,)`, *optional*): all rows are
            valid when it is not given.
        view_detector_logits (`torch.FloatTensor` of shape `(B, V)`, *optional*), view_coverage (`torch.FloatTensor`
            of shape `(B, V)`, *optional*): the per-view detector's logits and each view's mask coverage (NaN rows:
            no masks); see `view_detector_loss`.

    Returns:
        `(total, components)`: total of shape `()`; components maps every name in `LOSS_COMPONENTS` to a scalar or
        `None`.
    """
    B = logits.shape[0]
    weights = loss_weights(config)
    components: dict[str, torch.Tensor | None] = dict.fromkeys(LOSS_COMPONENTS)
    labels = labels.to(logits.device).long().view(B)
    if weights["focal_loss"] > 0:
        components["focal_loss"] = focal_loss(
            logits, labels, gamma=config.focal_gamma, alpha=config.focal_alpha, label_smoothing=config.label_smoothing
        )
    if view_logits is not None and weights["consistency_loss"] > 0:
        target = logits.detach().float().softmax(-1) if config.consistency_target == "final" else None
        components["consistency_loss"] = view_consistency_loss(view_logits, target)
    if weather_logits is not None and weather_labels is not None and weights["weather_loss"] > 0:
        weather_labels = weather_labels.to(logits.device).long().view(B)
        known = (weather_labels >= 0) & (weather_labels < weather_logits.shape[-1])
        if known.any():
            components["weather_loss"] = F.cross_entropy(weather_logits[known].float(), weather_labels[known])
    if seg_logits is not None and seg_masks is not None and weights["seg_loss"] > 0:
        valid = (
            seg_mask_valid.to(seg_logits.device).bool().view(B)
            if seg_mask_valid is not None
            else torch.ones(B, dtype=torch.bool, device=seg_logits.device)
        )
        if valid.any():
            components["seg_loss"] = dice_loss(seg_logits[valid], seg_masks.to(seg_logits.device)[valid])
    if view_detector_logits is not None and view_coverage is not None and weights["detector_loss"] > 0:
        components["detector_loss"] = view_detector_loss(
            view_detector_logits, view_coverage, config.view_detector_positive_coverage,
            gamma=config.detector_focal_gamma,
        )
    present = [weights[name] * value for name, value in components.items() if value is not None]
    total = torch.stack(present).sum() if present else logits.sum() * 0.0
    return total, components


__all__ = [
    "LOSS_COMPONENTS",
    "LOSS_WEIGHT_FIELDS",
    "focal_loss",
    "view_consistency_loss",
    "dice_loss",
    "view_detector_loss",
    "loss_weights",
    "roadwork_loss",
]
