"""Which views show roadwork: the share of each view's area that the roadwork masks cover.

The synthetic scenes (and pseudo-masked real rows) carry ``seg_masks`` over the whole image. A view's coverage is the
mean of the union of those masks over the view's box: 0 for a tile that shows no roadwork object, about 0.02 for a
tile holding one distant cone, more for a near one. `RoadworkDataset` computes it in the frame the views are cut from
(after the validators' challenge transform, whose geometry the masks follow: `RoadworkValidatorTransform.warp_masks`),
the feature cache stores it beside each pass's features, and the model's per-view detector
(`RoadworkConfig.use_view_detector`) learns from it which tile holds an object: a small object's tile is
supervised directly instead of only through the image label.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


VIEW_COVERAGE_COLUMN = "view_coverage"


def view_coverage(union: np.ndarray, image_size: tuple[int, int], boxes: Sequence[Sequence[int]]) -> np.ndarray:
    """
    The mean of a mask over each view box -> (V,) float32 in [0, 1].

    Args:
        union (`np.ndarray` of shape `(h, w)`): roadwork-object mask in [0, 1] over the whole image (any resolution;
            the union over classes of the ``seg_masks``).
        image_size (`tuple[int, int]`): (width, height) of the image the `boxes` refer to.
        boxes: `(left, top, right, bottom)` view boxes in that image's pixels (`RoadworkImageProcessor.view_boxes`).
    """
    union = np.asarray(union, dtype=np.float32)
    if union.ndim != 2:
        raise ValueError(f"the mask must be (h, w), got {union.shape}")
    width, height = int(image_size[0]), int(image_size[1])
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if union.shape != (height, width):
        union = cv2.resize(union, (width, height), interpolation=cv2.INTER_LINEAR)
    # Box sums from one integral image: (H + 1, W + 1), so a box is four look-ups.
    integral = cv2.integral(np.clip(union, 0.0, 1.0).astype(np.float64))
    out = np.zeros(len(boxes), dtype=np.float32)
    for i, (left, top, right, bottom) in enumerate(boxes):
        left, right = max(0, int(left)), min(width, int(right))
        top, bottom = max(0, int(top)), min(height, int(bottom))
        area = (right - left) * (bottom - top)
        if area <= 0:
            continue
        total = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
        out[i] = total / area
    return np.clip(out, 0.0, 1.0)


__all__ = ["VIEW_COVERAGE_COLUMN", "view_coverage"]
