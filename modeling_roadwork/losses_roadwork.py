"""The four-part roadwork loss: focal, view consistency, auxiliary weather, Dice on pseudo masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 2.0, alpha: float = 0.25, label_smoothing: float = 0.1
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
    predictions (the plan's formula); pass the detached final prediction to distil it into every view instead.
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


__all__ = ["focal_loss", "view_consistency_loss", "dice_loss"]
