"""The crop-share benchmark of the synthetic scenes: its mask geometry, and a small run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_synthetic_crops import crop_object_share, visible_object_pixels  # noqa: E402


def test_visible_pixels_follow_the_crop():
    full = np.ones((32, 32), dtype=np.float32)
    # The centre square of a 640x480 image, everything covered: the whole 224 x 224 challenge is object.
    assert visible_object_pixels(full, (640, 480), {"level": 0}, 224) == pytest.approx(224 * 224, rel=1e-3)
    left_strip = np.zeros((32, 32), dtype=np.float32)
    left_strip[:, :3] = 1.0  # x < 60 of 640 (upsampling blurs it by ~10 px): left of the centre square x >= 80
    assert visible_object_pixels(left_strip, (640, 480), {"level": 0}, 224) == pytest.approx(0.0, abs=1e-6)
    crop = {"level": 1, "angle": 0.0, "crop": (0, 0, 240, 240)}  # (top, left, h, w): the top-left corner
    assert visible_object_pixels(left_strip, (640, 480), crop, 224) == pytest.approx(224 * 224 / 4, rel=0.05)


def test_crop_object_share_small_run():
    result = crop_object_share(num_test=6, draws_per_scene=3)
    assert result["scenes"] >= 1 and result["draws"] == 3 * result["scenes"]
    assert 0.0 <= result["share"] <= result["share_any_pixel"] <= 1.0
    assert 0.0 < result["mean_retained"] <= 1.0
