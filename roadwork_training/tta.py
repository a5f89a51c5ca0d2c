"""Test-time augmentation for prediction, with FOODS fusion (filter out-of-distribution augmentations).

Every augmentation acts on the decoded whole image, before the views are cut, so each variant goes through the
processor's own `extract_views` / `normalize` exactly like an ordinary input.

FOODS: each variant's fused vision vector (`outputs.vision_embeds`, 512-d with the default config) is compared with
the training set's distribution of that vector, a mean and a covariance stored with the checkpoint in
`ood_stats.safetensors` ([`fit_ood_stats`], [`save_ood_stats`]). The Mahalanobis distance says how far a variant
drifted from what the model was trained on; the closest `keep_fraction` (80%) of the variants are kept and weighted
by `softmax(-distance / temperature)`; the image's probability is the weighted mean of the kept variants'
probabilities.

Covariance from few rows: the sample covariance of N rows in d dimensions has rank < N and is singular when
N <= d (a quickstart train split has ~200 rows for a 128-d vector). It is therefore shrunk towards a scaled identity
with the Ledoit-Wolf coefficient (scikit-learn's `LedoitWolf`, chosen analytically from the data; it goes to 0 as N
grows), and a ridge of `1e-6 * trace / d` is added before inversion for numerical safety. Both numbers are stored in
the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter


OOD_STATS_NAME = "ood_stats.safetensors"
TTA_MODES = ("none", "flip", "mean", "foods")
FOODS_KEEP_FRACTION = 0.8
RIDGE = 1e-6


# --- augmentations --------------------------------------------------------------------------------------------


def _affine(image: Image.Image, matrix: np.ndarray) -> Image.Image:
    """A 2x3 affine warp of the whole image, borders reflected (a black wedge would itself be out of distribution)."""
    array = np.asarray(image)
    height, width = array.shape[:2]
    warped = cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return Image.fromarray(warped)


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    width, height = image.size
    return _affine(image, cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0))


def _scale(image: Image.Image, factor: float) -> Image.Image:
    """Zoom about the centre: 1.1 magnifies (crops the border away), 0.9 shrinks (reflected border)."""
    width, height = image.size
    return _affine(image, cv2.getRotationMatrix2D((width / 2.0, height / 2.0), 0.0, factor))


def _perspective(image: Image.Image, corners: Sequence[tuple[float, float]]) -> Image.Image:
    """Moves the four corners (top-left, top-right, bottom-right, bottom-left) by fractions of the image size."""
    array = np.asarray(image)
    height, width = array.shape[:2]
    source = np.float32([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]])
    target = source + np.float32([[dx * width, dy * height] for dx, dy in corners])
    matrix = cv2.getPerspectiveTransform(source, target)
    warped = cv2.warpPerspective(
        array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return Image.fromarray(warped)


def _enhance(image: Image.Image, brightness: float = 1.0, contrast: float = 1.0, color: float = 1.0) -> Image.Image:
    if brightness != 1.0:
        image = ImageEnhance.Brightness(image).enhance(brightness)
    if contrast != 1.0:
        image = ImageEnhance.Contrast(image).enhance(contrast)
    if color != 1.0:
        image = ImageEnhance.Color(image).enhance(color)
    return image


def _blur(image: Image.Image, fraction: float) -> Image.Image:
    """Gaussian blur with sigma a fraction of the short side, so it looks the same after the views are resized."""
    return image.filter(ImageFilter.GaussianBlur(radius=max(0.5, fraction * min(image.size))))


@dataclass(frozen=True)
class RoadworkTTAVariant:
    """One deterministic whole-image augmentation: `name` and the function PIL RGB -> PIL RGB (same size)."""

    name: str
    function: object

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.function(image)


# The 16 FOODS augmentations, in this order (fixed parameters: a prediction is a function of the image alone).
FOODS_VARIANTS: tuple[RoadworkTTAVariant, ...] = (
    RoadworkTTAVariant("original", lambda im: im),
    RoadworkTTAVariant("hflip", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT)),
    RoadworkTTAVariant("rotate+10", lambda im: _rotate(im, 10.0)),
    RoadworkTTAVariant("rotate-10", lambda im: _rotate(im, -10.0)),
    RoadworkTTAVariant("scale0.9", lambda im: _scale(im, 0.9)),
    RoadworkTTAVariant("scale1.1", lambda im: _scale(im, 1.1)),
    RoadworkTTAVariant("brightness+15", lambda im: _enhance(im, brightness=1.15)),
    RoadworkTTAVariant("brightness-15", lambda im: _enhance(im, brightness=0.85)),
    RoadworkTTAVariant("contrast+15", lambda im: _enhance(im, contrast=1.15)),
    RoadworkTTAVariant("contrast-15", lambda im: _enhance(im, contrast=0.85)),
    RoadworkTTAVariant("jitter-warm", lambda im: _enhance(im, brightness=1.05, contrast=0.95, color=1.2)),
    RoadworkTTAVariant("jitter-muted", lambda im: _enhance(im, brightness=0.95, contrast=1.05, color=0.8)),
    RoadworkTTAVariant("blur-light", lambda im: _blur(im, 0.0025)),
    RoadworkTTAVariant("blur-strong", lambda im: _blur(im, 0.005)),
    RoadworkTTAVariant("perspective-top", lambda im: _perspective(im, [(0.06, 0.0), (-0.06, 0.0), (0, 0), (0, 0)])),
    RoadworkTTAVariant("perspective-left", lambda im: _perspective(im, [(0.0, 0.06), (0, 0), (0, 0), (0.0, -0.06)])),
)


def tta_variants(mode: str) -> tuple[RoadworkTTAVariant, ...]:
    """The variants of a `--tta` mode: none (the image), flip (image, mirror), mean and foods (all 16)."""
    if mode == "none":
        return FOODS_VARIANTS[:1]
    if mode == "flip":
        return FOODS_VARIANTS[:2]
    if mode in ("mean", "foods"):
        return FOODS_VARIANTS
    raise ValueError(f"unknown TTA mode {mode!r}; use one of {TTA_MODES}")


# --- training-set statistics -----------------------------------------------------------------------------------


@dataclass
class RoadworkOODStats:
    """Mean (d,) and precision (d, d) of the training set's fused vision vectors, for Mahalanobis distances."""

    mean: torch.Tensor
    precision: torch.Tensor
    covariance: torch.Tensor
    num_rows: int
    shrinkage: float
    ridge: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(..., d) features -> (...) Mahalanobis distances to the training mean."""
        if features.shape[-1] != self.dim:
            raise ValueError(
                f"OOD statistics are {self.dim}-d but the model's vision vector is {features.shape[-1]}-d: they were "
                "fitted on another model; refit them with predict.py --fit_ood_stats"
            )
        centred = features.double() - self.mean.to(features.device, torch.float64)
        precision = self.precision.to(features.device, torch.float64)
        squared = torch.einsum("...i,ij,...j->...", centred, precision, centred)
        return squared.clamp_min(0.0).sqrt().float()


def fit_ood_stats(features: np.ndarray | torch.Tensor) -> RoadworkOODStats:
    """(N, d) training vision vectors -> Ledoit-Wolf shrunk mean/covariance plus a ridge (see the module docstring)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(torch.as_tensor(features, dtype=torch.float64).cpu().numpy())
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 rows of (N, d) features to fit OOD statistics, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("the vision vectors contain NaN or inf; check the model before fitting OOD statistics")
    estimator = LedoitWolf().fit(features)
    covariance = estimator.covariance_
    dim = covariance.shape[0]
    ridge = RIDGE * float(np.trace(covariance)) / dim
    covariance = covariance + ridge * np.eye(dim)
    precision = np.linalg.inv(covariance)
    return RoadworkOODStats(
        mean=torch.from_numpy(estimator.location_.copy()),
        precision=torch.from_numpy(precision),
        covariance=torch.from_numpy(covariance),
        num_rows=int(features.shape[0]),
        shrinkage=float(estimator.shrinkage_),
        ridge=ridge,
    )


def save_ood_stats(stats: RoadworkOODStats, folder: str | os.PathLike, extra: dict | None = None) -> str:
    """Writes `folder/ood_stats.safetensors` atomically; returns its path."""
    from safetensors.torch import save_file

    path = os.path.join(folder, OOD_STATS_NAME)
    metadata = {"num_rows": str(stats.num_rows), "shrinkage": repr(stats.shrinkage), "ridge": repr(stats.ridge),
                "method": "ledoit-wolf + ridge", **{k: json.dumps(v) for k, v in (extra or {}).items()}}  # fmt: skip
    temporary = f"{path}.tmp-{os.getpid()}"
    tensors = {"mean": stats.mean.double().contiguous(), "precision": stats.precision.double().contiguous(),
               "covariance": stats.covariance.double().contiguous()}  # fmt: skip
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, path)
    return path


def load_ood_stats(path: str | os.PathLike) -> RoadworkOODStats:
    """Reads a file written by [`save_ood_stats`]."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in ("mean", "precision", "covariance")}
    return RoadworkOODStats(
        **tensors, num_rows=int(metadata.get("num_rows", 0)), shrinkage=float(metadata.get("shrinkage", "nan")),
        ridge=float(metadata.get("ridge", "nan")),
    )  # fmt: skip


def find_ood_stats(*locations: str | None, revision: str | None = None) -> str | None:
    """The first `ood_stats.safetensors` among local folders or Hub repos in `locations` (None where absent)."""
    for location in locations:
        if not location:
            continue
        if os.path.isdir(location):
            path = os.path.join(location, OOD_STATS_NAME)
            if os.path.isfile(path):
                return path
            continue
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(location, OOD_STATS_NAME, revision=revision)
        except Exception:  # noqa: BLE001 - not on the Hub (or no Hub): try the next location
            continue
    return None


# --- fusion ------------------------------------------------------------------------------------------------------


def foods_weights(
    distances: torch.Tensor, keep_fraction: float = FOODS_KEEP_FRACTION, temperature: float = 1.0
) -> torch.Tensor:
    """
    (B, T) Mahalanobis distances of T variants -> (B, T) weights: the `ceil(keep_fraction * T)` closest variants
    get `softmax(-distance / temperature)` over themselves, the rest 0. Each row sums to 1.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, T = distances.shape
    keep = max(1, math.ceil(keep_fraction * T - 1e-9))
    kept = distances.topk(keep, dim=1, largest=False).indices  # (B, keep)
    logits = torch.full_like(distances, float("-inf"))
    logits.scatter_(1, kept, -distances.gather(1, kept) / temperature)
    return logits.softmax(dim=1)


def fuse_tta(
    probabilities: torch.Tensor,
    mode: str,
    distances: torch.Tensor | None = None,
    keep_fraction: float = FOODS_KEEP_FRACTION,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, T) probabilities of the variants -> (B,): the plain mean, or the FOODS-weighted mean (needs distances)."""
    if mode != "foods":
        return probabilities.mean(dim=1)
    if distances is None:
        raise ValueError("FOODS fusion needs the variants' Mahalanobis distances")
    weights = foods_weights(distances, keep_fraction, temperature)
    return (weights * probabilities).sum(dim=1)


__all__ = [
    "FOODS_KEEP_FRACTION",
    "FOODS_VARIANTS",
    "OOD_STATS_NAME",
    "TTA_MODES",
    "RoadworkOODStats",
    "RoadworkTTAVariant",
    "find_ood_stats",
    "fit_ood_stats",
    "foods_weights",
    "fuse_tta",
    "load_ood_stats",
    "save_ood_stats",
    "tta_variants",
]
