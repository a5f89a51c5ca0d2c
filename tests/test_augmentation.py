"""Per-view augmentation and the validators' serving-condition transform (data_collator/augmentation.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from data_collator.augmentation import (
    AUGMENTATION_GROUPS,
    RoadworkAugmentationConfig,
    RoadworkValidatorTransform,
    RoadworkViewAugmenter,
    build_augmentation,
    view_seeds,
)


SIZE = 48


def _views(num_views: int = 12, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return [base.copy() for _ in range(num_views)]  # identical inputs: any difference comes from the draws


# The documented defaults of RoadworkAugmentationConfig ("heavy" = pre-training probabilities), written out so
# that a changed default fails here.
HEAVY_PROBABILITIES = {
    "hflip_p": 0.7, "rotate_p": 0.5, "perspective_p": 0.25, "zoom_p": 0.4,
    "brightness_p": 0.5, "contrast_p": 0.5, "saturation_p": 0.4, "hue_p": 0.25,
    "rain_p": 0.25, "fog_p": 0.25, "shadow_p": 0.3, "sun_flare_p": 0.2,
    "noise_p": 0.2, "motion_blur_p": 0.15, "gaussian_blur_p": 0.15,
}  # fmt: skip


def test_heavy_is_the_documented_table_and_light_halves_every_probability():
    heavy = RoadworkAugmentationConfig(strength="heavy").probabilities()
    light = RoadworkAugmentationConfig(strength="light").probabilities()
    none = RoadworkAugmentationConfig(strength="none").probabilities()
    assert heavy == pytest.approx(HEAVY_PROBABILITIES)
    assert light == pytest.approx({k: v / 2 for k, v in HEAVY_PROBABILITIES.items()})
    assert set(none.values()) == {0.0}
    assert sorted(sum(AUGMENTATION_GROUPS.values(), ())) == sorted(HEAVY_PROBABILITIES)


def test_scale_multiplies_every_probability_and_caps_at_one():
    heavier = RoadworkAugmentationConfig(strength="heavy", scale=1.5).probabilities()
    assert heavier == pytest.approx({k: min(1.0, v * 1.5) for k, v in HEAVY_PROBABILITIES.items()})
    assert heavier["hflip_p"] == 1.0, "0.7 x 1.5 is capped"
    lighter = RoadworkAugmentationConfig(strength="light", scale=0.75).probabilities()
    assert lighter == pytest.approx({k: v * 0.5 * 0.75 for k, v in HEAVY_PROBABILITIES.items()})
    built = [t.p for t in RoadworkViewAugmenter(RoadworkAugmentationConfig(scale=0.75)).build_transforms(SIZE, SIZE)]
    assert sorted(built) == pytest.approx(sorted(v * 0.75 for v in HEAVY_PROBABILITIES.values()))


def test_built_transforms_carry_the_configured_probabilities():
    for strength, scale in (("heavy", 1.0), ("light", 0.5)):
        augmenter = RoadworkViewAugmenter(strength)
        built = [t.p for t in augmenter.build_transforms(SIZE, SIZE)]
        expected = [HEAVY_PROBABILITIES[name] * scale for name in RoadworkAugmentationConfig.probability_names()]
        assert sorted(built) == pytest.approx(sorted(expected))
        assert len(built) == len(expected)


def test_default_parameter_ranges():
    c = RoadworkAugmentationConfig()
    assert (c.rotate_limit, c.zoom_range, c.brightness, c.contrast, c.saturation, c.hue_degrees) == (
        15.0, [0.7, 1.3], 0.3, 0.3, 0.2, 15.0,
    )  # fmt: skip
    assert c.noise_sigma == [5.0, 10.0] and c.gaussian_blur_kernel == [3, 5]
    assert RoadworkAugmentationConfig(zoom_range=(0.8, 1.2)).zoom_range == [0.8, 1.2]  # tuples are stored as lists


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": "medium"}, "'medium'"),
        ({"scale": -1.0}, "scale"),
        ({"rain_p": 1.5}, "rain_p"),
        ({"zoom_range": (1.3, 0.7)}, "zoom_range"),
        ({"gaussian_blur_kernel": (4, 5)}, "gaussian_blur_kernel"),
    ],
)
def test_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoadworkAugmentationConfig(**kwargs)


def test_a_seeded_draw_is_reproducible_and_differs_between_views():
    augmenter = RoadworkViewAugmenter("heavy")
    first = augmenter.augment_views(_views(), seed=123)
    augmenter.augment_views(_views(), seed=7)  # state left behind must not matter
    second = RoadworkViewAugmenter("heavy").augment_views(_views(), seed=123)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    distinct = {v.tobytes() for v in first}
    assert len(distinct) >= 11  # 12 independent draws of ~15 transforms: collisions are (near) impossible
    other = augmenter.augment_views(_views(), seed=124)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    for view in first:
        assert view.dtype == np.uint8 and view.shape == (SIZE, SIZE, 3)


def test_view_seeds_are_distinct_and_stable():
    seeds = view_seeds(5, 12)
    assert len(set(seeds)) == 12 and seeds == view_seeds(5, 12) and seeds != view_seeds(6, 12)
    assert view_seeds(None, 3) == [None, None, None]


def test_strength_none_is_the_identity():
    augmenter = RoadworkViewAugmenter("none")
    views = _views()
    out = augmenter.augment_views(views, seed=0)
    assert not augmenter.enabled
    assert all(a is b for a, b in zip(out, views))
    masks = np.zeros((6, SIZE, SIZE), np.float32)
    image, same_masks = augmenter(views[0], seed=1, masks=masks)
    assert image is views[0] and same_masks is masks


def test_masks_follow_the_geometric_transform_of_view_zero():
    only_flip = {name: 0.0 for name in RoadworkAugmentationConfig.probability_names()}
    only_flip["hflip_p"] = 1.0
    augmenter = RoadworkViewAugmenter(RoadworkAugmentationConfig(**only_flip))
    views = _views(3)
    masks = np.zeros((6, SIZE, SIZE), np.float32)
    masks[2, 5:20, 0:10] = 1.0  # on the left
    out, out_masks = augmenter.augment_views(views, seed=0, masks=masks)
    np.testing.assert_array_equal(out[0], views[0][:, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])  # now on the right, like the image


def test_photometric_transforms_leave_masks_alone():
    only_color = {name: 0.0 for name in RoadworkAugmentationConfig.probability_names()}
    only_color.update(brightness_p=1.0, noise_p=1.0, rain_p=1.0)
    augmenter = RoadworkViewAugmenter(RoadworkAugmentationConfig(**only_color))
    masks = np.random.default_rng(0).random((6, SIZE, SIZE)).astype(np.float32)
    image, out_masks = augmenter(_views(1)[0], seed=0, masks=masks)
    assert not np.array_equal(image, _views(1)[0])
    np.testing.assert_array_equal(out_masks, masks)


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        RoadworkViewAugmenter("heavy")(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1920, 1080), (120, 90)])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_validator_transform_outputs_224_rgb(size, level):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    transform = RoadworkValidatorTransform()
    out = transform(image, seed=3, level=level)
    assert out.size == (224, 224) and out.mode == "RGB"
    assert transform.last_params["level"] == level


def test_validator_transform_is_reproducible_and_draws_every_level():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    transform = RoadworkValidatorTransform()
    a = np.asarray(transform(image, seed=11))
    params = dict(transform.last_params)
    b = np.asarray(transform(image, seed=11))
    assert np.array_equal(a, b) and transform.last_params == params
    levels = set()
    for seed in range(40):
        transform(image, seed=seed)
        levels.add(transform.last_params["level"])
    assert levels == {0, 1, 2, 3}


def test_validator_level_zero_is_a_centre_square_crop():
    # Left half black, right half white: the centre square of a 400x200 image is 100..300, half and half.
    array = np.zeros((200, 400, 3), np.uint8)
    array[:, 200:] = 255
    out = np.asarray(RoadworkValidatorTransform(jpeg_quality=None)(Image.fromarray(array), level=0))
    assert out[:, :100].mean() < 5 and out[:, 124:].mean() > 250


def test_validator_transform_validates():
    with pytest.raises(ValueError, match="sum to 1"):
        RoadworkValidatorTransform(level_probs=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="level must be 0..3"):
        RoadworkValidatorTransform()(Image.new("RGB", (64, 64)), level=4)


def test_build_augmentation_presets():
    assert build_augmentation("none") is None
    assert isinstance(build_augmentation("validator"), RoadworkValidatorTransform)
    light = build_augmentation("light")
    assert isinstance(light, RoadworkViewAugmenter) and light.config.strength == "light"
    with pytest.raises(ValueError, match="'extreme'"):
        build_augmentation("extreme")


def test_config_round_trips_through_a_dict():
    config = RoadworkAugmentationConfig(strength="light", rain_p=0.1)
    assert RoadworkAugmentationConfig(**config.to_dict()) == config
    assert dataclasses.asdict(config)["strength"] == "light"


def test_validator_transform_probability_mixes_challenges_with_whole_images():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    # probability 1 makes no extra draw: the seeded serving challenges are unchanged by the field.
    np.testing.assert_array_equal(
        np.asarray(RoadworkValidatorTransform(probability=1.0)(image, seed=5)),
        np.asarray(RoadworkValidatorTransform()(image, seed=5)),
    )
    never = RoadworkValidatorTransform(probability=0.0)
    out = never(image, seed=5)
    assert out.size == image.size and never.last_params == {"applied": False}
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))
    half = RoadworkValidatorTransform(probability=0.5)
    applied = []
    for seed in range(200):
        out = half(image, seed=seed)
        applied.append(half.last_params["applied"])
        assert out.size == ((224, 224) if applied[-1] else image.size)
    assert 70 < sum(applied) < 130
    first = np.asarray(half(image, seed=3))
    np.testing.assert_array_equal(first, np.asarray(half(image, seed=3)))  # seeded: the same draw again
    with pytest.raises(ValueError, match="probability"):
        RoadworkValidatorTransform(probability=1.5)


def test_validator_transform_applies_predicts_the_calls_draw():
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    half = RoadworkValidatorTransform(probability=0.5)
    for seed in range(30):
        half(image, seed=seed)
        assert half.applies(seed) == half.last_params["applied"]
    assert all(RoadworkValidatorTransform().applies(seed) for seed in range(30))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (960, 540)])
def test_validator_warp_masks_lands_where_the_transform_puts_the_pixels(size):
    """A white box drawn on the image and on a 32x32 mask: after the challenge the warped mask covers the box."""
    from PIL import ImageDraw

    width, height = size
    box = (int(width * 0.3), int(height * 0.4), int(width * 0.6), int(height * 0.7))
    image = Image.new("RGB", size, (90, 90, 90))
    ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255))
    canvas = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(canvas).rectangle(
        (box[0] * 128 / width, box[1] * 128 / height, box[2] * 128 / width, box[3] * 128 / height), fill=255
    )
    mask = (np.asarray(canvas.resize((32, 32), Image.BOX), dtype=np.float32) / 255.0)[None]  # (1, 32, 32)
    transform = RoadworkValidatorTransform(jpeg_quality=None)
    flips = set()
    for seed in range(8):
        for level in (0, 1):
            out = transform(image, seed=seed, level=level)
            white = np.asarray(out)[..., 0] > 170
            warped = transform.warp_masks(mask)  # (1, 224, 224)
            assert warped.shape == (1, 224, 224) and warped.dtype == np.float32
            covered = warped[0] > 0.5
            iou = (white & covered).sum() / max((white | covered).sum(), 1)
            assert iou > 0.9, (seed, level, transform.last_params, iou)
            flips.add((transform.last_params.get("hflip"), transform.last_params.get("vflip")))
    assert {(True, False), (False, True), (True, True)} <= flips  # every flip was exercised
    assert transform.warp_masks(mask, params={"applied": False}) is not None
    np.testing.assert_array_equal(transform.warp_masks(mask, params={"applied": False}), mask)
