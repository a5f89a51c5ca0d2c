"""Augmentation for roadwork training and evaluation.

Two kinds:

- [`RoadworkViewAugmenter`]: per-view augmentation (albumentations 2.x). Four groups (geometric, weather, colour,
  noise / blur) with the probabilities of [`RoadworkAugmentationConfig`], applied to each of the 12 views
  independently (one draw per view), after view extraction and before normalisation. Strengths: ``"heavy"``
  (the configured probabilities, pre-training), ``"light"``
  (half of each probability, fine-tuning), ``"none"`` (identity, evaluation).
- [`RoadworkValidatorTransform`]: the StreetVision validators' serving conditions, applied to the whole
  image before view extraction: one of four equally likely levels (0: centre square crop; 1: rotation
  +-20 degrees, square RandomResizedCrop with scale 0.2..1 and random h/v flips; 2: level 1 plus mild
  saturation / contrast / down-up-sampling distortions; 3: level 1 plus stronger ones and colour noise and
  Gaussian blur), resized to 224x224 and round-tripped through JPEG (PIL's default quality 75), as the
  validator encodes the challenge it sends. Reimplemented from the subnet's description of its pipeline,
  not imported, so the project does not depend on the subnet's code.

Both are reproducible from an integer seed: a 12-view draw with seed ``s`` is the same every time and the
views get different draws (their seeds are spawned from ``s`` with `numpy.random.SeedSequence`).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image


AUGMENTATION_STRENGTHS = {"heavy": 1.0, "light": 0.5, "none": 0.0}

# Names of the probability fields of RoadworkAugmentationConfig, by group, in the order they are applied.
AUGMENTATION_GROUPS = {
    "geometric": ("hflip_p", "rotate_p", "perspective_p", "zoom_p"),
    "weather": ("rain_p", "fog_p", "shadow_p", "sun_flare_p"),
    "color": ("brightness_p", "contrast_p", "saturation_p", "hue_p"),
    "noise_blur": ("noise_p", "motion_blur_p", "gaussian_blur_p"),
}


@dataclass
class RoadworkAugmentationConfig:
    """Per-view augmentation settings. Probabilities are the "heavy" ones; `strength` scales them.

    Args:
        strength (`str`, *optional*, defaults to `"heavy"`): ``"heavy"`` (x1), ``"light"`` (x0.5) or ``"none"`` (x0).
        scale (`float`, *optional*, defaults to 1.0): a further factor on every probability (capped at 1), e.g. 1.5
            and 0.75 for ensemble members 2 and 3 (`configs/ensemble/`).
        hflip_p (`float`, *optional*, defaults to 0.7): horizontal flip.
        rotate_p (`float`, *optional*, defaults to 0.5): rotation by up to `rotate_limit` degrees.
        perspective_p (`float`, *optional*, defaults to 0.25): perspective warp with `perspective_scale`.
        zoom_p (`float`, *optional*, defaults to 0.4): zoom by a factor in `zoom_range`.
        brightness_p (`float`, *optional*, defaults to 0.5): brightness by +-`brightness`.
        contrast_p (`float`, *optional*, defaults to 0.5): contrast by +-`contrast`.
        saturation_p (`float`, *optional*, defaults to 0.4): saturation by +-`saturation`.
        hue_p (`float`, *optional*, defaults to 0.25): hue shift by up to `hue_degrees`.
        rain_p, fog_p, shadow_p, sun_flare_p (`float`, *optional*, defaults to 0.25, 0.25, 0.3, 0.2): weather.
        noise_p (`float`, *optional*, defaults to 0.2): Gaussian noise with sigma in `noise_sigma` (0..255 units).
        motion_blur_p (`float`, *optional*, defaults to 0.15): horizontal motion blur, kernel in `motion_blur_kernel`.
        gaussian_blur_p (`float`, *optional*, defaults to 0.15): Gaussian blur, kernel in `gaussian_blur_kernel`.
        border_mode (`int`, *optional*, defaults to `cv2.BORDER_REFLECT_101`): fill for rotation / zoom / warp;
            reflection avoids black corners that would be a shortcut feature.

    Ranges are lists, not tuples, so that `HfArgumentParser` can parse every field as a flag of its own name.
    """

    strength: str = field(
        default="heavy", metadata={"help": "Augmentation strength: heavy (x1 probabilities), light (x0.5) or none."}
    )
    scale: float = field(
        default=1.0, metadata={"help": "Further factor on every augmentation probability (capped at 1)."}
    )
    hflip_p: float = field(default=0.7, metadata={"help": "Probability of a horizontal flip of a view."})
    rotate_p: float = field(default=0.5, metadata={"help": "Probability of rotating a view by up to rotate_limit."})
    rotate_limit: float = field(default=15.0, metadata={"help": "Largest rotation of a view, in degrees."})
    perspective_p: float = field(default=0.25, metadata={"help": "Probability of a perspective warp of a view."})
    perspective_scale: list[float] = field(
        default_factory=lambda: [0.02, 0.08], metadata={"help": "Range (low high) of the perspective warp's scale."}
    )
    zoom_p: float = field(default=0.4, metadata={"help": "Probability of zooming a view by a factor in zoom_range."})
    zoom_range: list[float] = field(
        default_factory=lambda: [0.7, 1.3], metadata={"help": "Range (low high) of the zoom factor."}
    )
    brightness_p: float = field(default=0.5, metadata={"help": "Probability of a brightness change."})
    brightness: float = field(default=0.3, metadata={"help": "Largest brightness change, as a factor +-."})
    contrast_p: float = field(default=0.5, metadata={"help": "Probability of a contrast change."})
    contrast: float = field(default=0.3, metadata={"help": "Largest contrast change, as a factor +-."})
    saturation_p: float = field(default=0.4, metadata={"help": "Probability of a saturation change."})
    saturation: float = field(default=0.2, metadata={"help": "Largest saturation change, as a factor +-."})
    hue_p: float = field(default=0.25, metadata={"help": "Probability of a hue shift."})
    hue_degrees: float = field(default=15.0, metadata={"help": "Largest hue shift, in degrees."})
    rain_p: float = field(default=0.25, metadata={"help": "Probability of drawing rain on a view."})
    fog_p: float = field(default=0.25, metadata={"help": "Probability of a fog / haze veil on a view."})
    shadow_p: float = field(default=0.3, metadata={"help": "Probability of a shadow on a view."})
    sun_flare_p: float = field(default=0.2, metadata={"help": "Probability of a sun flare on a view."})
    noise_p: float = field(default=0.2, metadata={"help": "Probability of Gaussian noise on a view."})
    noise_sigma: list[float] = field(
        default_factory=lambda: [5.0, 10.0], metadata={"help": "Range (low high) of the noise sigma, in 0..255 units."}
    )
    motion_blur_p: float = field(default=0.15, metadata={"help": "Probability of a horizontal motion blur."})
    motion_blur_kernel: list[int] = field(
        default_factory=lambda: [3, 9], metadata={"help": "Range (low high) of the motion blur kernel, odd sizes."}
    )
    gaussian_blur_p: float = field(default=0.15, metadata={"help": "Probability of a Gaussian blur."})
    gaussian_blur_kernel: list[int] = field(
        default_factory=lambda: [3, 5], metadata={"help": "Range (low high) of the Gaussian blur kernel, odd sizes."}
    )
    border_mode: int = field(
        default=cv2.BORDER_REFLECT_101,
        metadata={"help": "OpenCV border mode filling rotated / zoomed / warped views (default: reflect 101)."},
    )

    def __post_init__(self):
        # YAML/JSON and older callers give tuples; store lists so that asdict() round-trips and flags parse.
        for name in ("perspective_scale", "zoom_range", "noise_sigma"):
            setattr(self, name, [float(v) for v in getattr(self, name)])
        for name in ("motion_blur_kernel", "gaussian_blur_kernel"):
            setattr(self, name, [int(v) for v in getattr(self, name)])
        for name in ("perspective_scale", "zoom_range", "noise_sigma", "motion_blur_kernel", "gaussian_blur_kernel"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must be a range of 2 values (low high), got {getattr(self, name)}")
        if self.strength not in AUGMENTATION_STRENGTHS:
            raise ValueError(f"strength must be one of {sorted(AUGMENTATION_STRENGTHS)}, got {self.strength!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be a finite number >= 0, got {self.scale!r}")
        for name in self.probability_names():
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.zoom_range[0] <= 0 or self.zoom_range[0] > self.zoom_range[1]:
            raise ValueError(f"zoom_range must be 0 < low <= high, got {self.zoom_range}")
        for name in ("motion_blur_kernel", "gaussian_blur_kernel"):
            low, high = getattr(self, name)
            if low < 3 or low % 2 == 0 or high % 2 == 0 or low > high:
                raise ValueError(f"{name} must be odd sizes 3 <= low <= high, got {(low, high)}")

    @staticmethod
    def probability_names() -> tuple[str, ...]:
        return tuple(name for group in AUGMENTATION_GROUPS.values() for name in group)

    @property
    def probability_scale(self) -> float:
        return AUGMENTATION_STRENGTHS[self.strength] * self.scale

    def probabilities(self) -> dict[str, float]:
        """The probabilities actually used: each configured one times the strength's factor and `scale`, at most 1."""
        scale = self.probability_scale
        return {name: min(1.0, getattr(self, name) * scale) for name in self.probability_names()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RoadworkHaze(A.ImageOnlyTransform):
    """Fog / haze: blends the image towards a light grey veil whose density varies smoothly over the image.

    Stands in for `albumentations.RandomFog`, which draws thousands of blurred circles and takes ~0.45 s per
    512x512 view on one core (about 1.3 s per 12-view image at p=0.25); this takes ~30 ms.

    Args:
        density_range (`tuple[float, float]`, *optional*, defaults to `(0.2, 0.5)`): mean veil opacity.
        color (`int`, *optional*, defaults to 215): veil grey level.
        p (`float`, *optional*, defaults to 0.5): probability.
    """

    def __init__(self, density_range: tuple[float, float] = (0.2, 0.5), color: int = 215, p: float = 0.5):
        super().__init__(p=p)
        self.density_range = tuple(density_range)
        self.color = color

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        density = self.py_random.uniform(*self.density_range)
        # Low-frequency noise (4x4 upsampled) modulates the veil; denser towards the top (the distance).
        noise = self.random_generator.random((4, 4)).astype(np.float32)
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        ramp = np.linspace(1.2, 0.8, height, dtype=np.float32)[:, None]
        alpha = np.clip(density * ramp * (0.7 + 0.6 * noise), 0.0, 0.9)
        return {"alpha": alpha[..., None]}

    def apply(self, img: np.ndarray, alpha: np.ndarray, **params: Any) -> np.ndarray:
        out = img.astype(np.float32)
        out += alpha * (float(self.color) - out)
        return out.astype(np.uint8)  # a convex blend of values in [0, 255] stays in range

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("density_range", "color")


def view_seeds(seed: int | None, num_views: int) -> list[int | None]:
    """Independent per-view seeds spawned from one seed (all `None` when `seed` is `None`)."""
    if seed is None:
        return [None] * num_views
    return [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(num_views, dtype=np.uint32)]


class RoadworkViewAugmenter:
    """Augments view images (uint8 HWC RGB arrays) independently, with the probabilities of its config.

    Order: geometric (flip, rotate, perspective, zoom), weather (rain, fog, shadow, sun flare), colour
    (brightness, contrast, saturation, hue), noise / blur. Weather comes before colour so that a darker or
    washed-out draw also affects the rain and glare, as a camera would.

    Args:
        config (`RoadworkAugmentationConfig` or `str`, *optional*, defaults to `"heavy"`): settings, or just a
            strength name.

    Example:

    ```python
    >>> augmenter = RoadworkViewAugmenter("light")
    >>> views = [np.zeros((64, 64, 3), dtype=np.uint8) for _ in range(12)]
    >>> out = augmenter.augment_views(views, seed=0)
    >>> len(out), out[0].shape
    (12, (64, 64, 3))
    ```
    """

    def __init__(self, config: RoadworkAugmentationConfig | str | None = None):
        if config is None:
            config = RoadworkAugmentationConfig()
        elif isinstance(config, str):
            config = RoadworkAugmentationConfig(strength=config)
        self.config = config
        self._composes: dict[tuple[int, int], A.Compose] = {}

    @property
    def enabled(self) -> bool:
        return self.config.probability_scale > 0

    def build_transforms(self, height: int, width: int) -> list[A.BasicTransform]:
        """The albumentations transforms for an image of this size (sizes set the flare radius)."""
        c = self.config
        p = c.probabilities()
        side = min(height, width)
        no_change = (1.0, 1.0)
        return [
            # geometric
            A.HorizontalFlip(p=p["hflip_p"]),
            A.Rotate(limit=(-c.rotate_limit, c.rotate_limit), border_mode=c.border_mode, p=p["rotate_p"]),
            A.Perspective(scale=tuple(c.perspective_scale), border_mode=c.border_mode, p=p["perspective_p"]),
            A.Affine(scale=tuple(c.zoom_range), keep_ratio=True, border_mode=c.border_mode, p=p["zoom_p"]),
            # weather
            A.RandomRain(blur_value=3, brightness_coefficient=0.85, rain_type="drizzle", p=p["rain_p"]),
            RoadworkHaze(density_range=(0.2, 0.5), p=p["fog_p"]),
            A.RandomShadow(shadow_roi=(0.0, 0.4, 1.0, 1.0), num_shadows_limit=(1, 2), p=p["shadow_p"]),
            A.RandomSunFlare(
                flare_roi=(0.0, 0.0, 1.0, 0.5),
                src_radius=max(4, int(0.3 * side)),
                num_flare_circles_range=(3, 6),
                p=p["sun_flare_p"],
            ),
            # colour: one factor per transform so that each has its own probability
            A.ColorJitter(
                brightness=c.brightness, contrast=no_change, saturation=no_change, hue=0.0, p=p["brightness_p"]
            ),
            A.ColorJitter(brightness=no_change, contrast=c.contrast, saturation=no_change, hue=0.0, p=p["contrast_p"]),
            A.ColorJitter(
                brightness=no_change, contrast=no_change, saturation=c.saturation, hue=0.0, p=p["saturation_p"]
            ),
            A.ColorJitter(
                brightness=no_change, contrast=no_change, saturation=no_change, hue=c.hue_degrees / 360.0, p=p["hue_p"]
            ),
            # noise / blur; GaussNoise's std is a fraction of 255 for uint8 images
            A.GaussNoise(std_range=(c.noise_sigma[0] / 255.0, c.noise_sigma[1] / 255.0), p=p["noise_p"]),
            A.MotionBlur(
                blur_limit=tuple(c.motion_blur_kernel),
                angle_range=(0.0, 0.0),
                direction_range=(0.0, 0.0),
                p=p["motion_blur_p"],
            ),
            A.GaussianBlur(blur_limit=tuple(c.gaussian_blur_kernel), sigma_limit=(0.5, 1.5), p=p["gaussian_blur_p"]),
        ]

    def _compose(self, height: int, width: int) -> A.Compose:
        key = (height, width)
        if key not in self._composes:
            self._composes[key] = A.Compose(self.build_transforms(height, width), seed=0, strict=True)
        return self._composes[key]

    def __call__(
        self, image: np.ndarray, seed: int | None = None, masks: np.ndarray | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Augments one uint8 HWC image. Returns the image, or ``(image, masks)`` when `masks` is given.

        `masks` (``(K, H, W)`` float or uint8, same H and W as the image) receive the same geometric
        transform as the image and no photometric one.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        if not self.enabled:
            return image if masks is None else (image, masks)
        height, width = image.shape[:2]
        compose = self._compose(height, width)
        # One generator pair shared by every transform (as Compose does internally), re-created per call: an
        # int seed makes this call reproducible whatever ran before; None draws fresh OS entropy.
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        if masks is None:
            return compose(image=np.ascontiguousarray(image))["image"]
        if masks.shape[-2:] != (height, width):
            raise ValueError(f"masks {masks.shape} do not match the image {image.shape}")
        out = compose(image=np.ascontiguousarray(image), masks=[np.ascontiguousarray(m) for m in masks])
        return out["image"], np.stack(out["masks"])

    def augment_views(
        self, views: Sequence[np.ndarray], seed: int | None = None, masks: np.ndarray | None = None
    ) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
        """Augments each view with its own draw (seeds spawned from `seed`).

        `masks` ``(K, H, W)`` follow view 0 (the global view of the whole image), so pseudo masks stay aligned
        with the one view that shows the whole scene. Returns the views, or ``(views, masks)``.
        """
        seeds = view_seeds(seed, len(views))
        out: list[np.ndarray] = []
        for i, (view, view_seed) in enumerate(zip(views, seeds)):
            if i == 0 and masks is not None:
                view, masks = self(view, seed=view_seed, masks=masks)
            else:
                view = self(view, seed=view_seed)
            out.append(view)
        return out if masks is None else (out, masks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.config.strength!r})"


# --- the StreetVision validators' serving conditions ---------------------------------------------------------

# Distortion parameters by severity level 1..5 (DeeperForensics-style), as the subnet documents them.
_DISTORTION_LEVELS = {
    "saturation": (0.4, 0.3, 0.2, 0.1, 0.0),  # chroma scale, lower is worse
    "contrast": (0.85, 0.725, 0.6, 0.475, 0.35),  # intensity scale
    "downsample": (2, 3, 4, 5, 6),  # down- then up-sampling factor ("JPEG" in the subnet's naming)
    "color_noise": (0.001, 0.002, 0.005, 0.01, 0.05),  # noise variance on [0, 1] YCbCr
    "blur": (7, 9, 13, 17, 21),  # Gaussian kernel size, sigma = size / 6
}
# Which distortions each augmentation level draws, with the maximum severity (severity ~ U{0..max}).
_LEVEL_DISTORTIONS = {
    0: {},
    1: {},
    2: {"saturation": 1, "contrast": 1, "downsample": 1},
    3: {"saturation": 2, "contrast": 2, "downsample": 2, "color_noise": 2, "blur": 2},
}


@dataclass
class RoadworkValidatorTransform:
    """Reproduces what a StreetVision validator sends a miner: a 224x224 JPEG of a distorted crop.

    Acts on the whole image (before view extraction); feed its output to the image processor as a miner
    would receive it. Use it to evaluate under serving conditions, or as a training-time whole-image
    augmentation.

    Args:
        target_size (`int`, *optional*, defaults to 224): output side.
        level_probs (`tuple[float, ...]`, *optional*, defaults to `(0.25, 0.25, 0.25, 0.25)`): probabilities of
            levels 0 (centre crop only), 1 (rotation, random resized crop, flips), 2 (+ mild distortions),
            3 (+ strong distortions).
        rotation_degrees (`float`, *optional*, defaults to 20.0): rotation range +-, levels 1..3.
        crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.2, 1.0)`): area fraction of the square crop.
        flip_p (`float`, *optional*, defaults to 0.5): probability of each of the horizontal and vertical flips.
        jpeg_quality (`int | None`, *optional*, defaults to 75): quality of the final JPEG round trip (PIL's
            default, which the validator uses); `None` skips it.
        probability (`float`, *optional*, defaults to 1.0): chance that an image becomes a challenge at all; the
            others pass through unchanged (as RGB). Below 1 it is a training augmentation that mixes challenges with
            whole images (`--serving_augmentation`); at 1 no extra random draw is made, so the seeded serving
            challenges are the same as without the field. ``last_params["applied"]`` says which happened.

    Example:

    ```python
    >>> transform = RoadworkValidatorTransform()
    >>> out = transform(Image.new("RGB", (640, 480), (90, 90, 90)), seed=0)
    >>> out.size, out.mode
    ((224, 224), 'RGB')
    ```
    """

    target_size: int = 224
    level_probs: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    rotation_degrees: float = 20.0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jpeg_quality: int | None = 75
    probability: float = 1.0
    last_params: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.level_probs) != 4 or any(p < 0 for p in self.level_probs):
            raise ValueError(f"level_probs must be 4 non-negative numbers, got {self.level_probs}")
        if not math.isclose(sum(self.level_probs), 1.0, rel_tol=1e-6):
            raise ValueError(f"level_probs must sum to 1, got {self.level_probs} (sum {sum(self.level_probs)})")
        if self.target_size < 1:
            raise ValueError(f"target_size must be positive, got {self.target_size}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")

    def __call__(self, image: Image.Image, seed: int | None = None, level: int | None = None) -> Image.Image:
        """Returns a ``target_size`` x ``target_size`` RGB image; the draw is kept in ``self.last_params``.

        Args:
            image (`PIL.Image.Image`): the whole source image.
            seed (`int`, *optional*): makes the draw reproducible.
            level (`int`, *optional*): force a level 0..3 instead of drawing one.
        """
        rng = np.random.default_rng(seed)
        if level is None and not self._draw_applies(rng):
            self.last_params = {"applied": False}
            return image.convert("RGB")
        if level is None:
            level = int(rng.choice(4, p=np.asarray(self.level_probs, dtype=np.float64)))
        if level not in _LEVEL_DISTORTIONS:
            raise ValueError(f"level must be 0..3, got {level}")
        image = image.convert("RGB")
        params: dict[str, Any] = {"applied": True, "level": level, "source_size": image.size}
        size = (self.target_size, self.target_size)
        if level == 0:
            width, height = image.size
            side = min(width, height)
            left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
            image = image.resize(size, Image.BILINEAR, box=(left, top, left + side, top + side))
        else:
            angle = float(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
            image = image.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=(0, 0, 0))
            top, left, h, w = self._crop_params(image.size, rng)
            image = image.resize(size, Image.BILINEAR, box=(left, top, left + w, top + h))
            hflip, vflip = bool(rng.random() < self.flip_p), bool(rng.random() < self.flip_p)
            if hflip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            if vflip:
                image = image.transpose(Image.FLIP_TOP_BOTTOM)
            params.update(angle=angle, crop=(top, left, h, w), hflip=hflip, vflip=vflip)
            distortions = {}
            array = None
            for name, max_severity in _LEVEL_DISTORTIONS[level].items():
                severity = int(rng.integers(0, max_severity + 1))
                if severity == 0:
                    continue
                if array is None:
                    array = np.asarray(image, dtype=np.uint8).copy()
                array = _apply_distortion(array, name, _DISTORTION_LEVELS[name][severity - 1], rng)
                distortions[name] = severity
            if array is not None:
                image = Image.fromarray(array)
            params["distortions"] = distortions
        if self.jpeg_quality is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        self.last_params = params
        return image

    def warp_masks(self, masks: np.ndarray, params: dict[str, Any] | None = None, size: int | None = None,
                   source_size: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
        """
        Masks of the source image -> the same masks in the challenge's frame: the geometry of a call (`params`,
        defaults to `self.last_params`: the centre crop, or the rotation, crop and flips) applied to masks that
        cover the whole source image at any resolution. Outside the rotated image they are 0.
        Unchanged masks when the call made no challenge.

        Args:
            masks (`np.ndarray` of shape `(K, h, w)`): values in [0, 1] over the whole source image.
            params (`dict`, *optional*): a call's `last_params`.
            size (`int`, *optional*): side of the output masks; defaults to `target_size`.
            source_size (`tuple[int, int]`, *optional*): (width, height) of the image the call transformed;
                defaults to the one the call recorded (`params["source_size"]`).

        Returns:
            `np.ndarray` of shape `(K, size, size)`, float32.
        """
        params = self.last_params if params is None else params
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (K, h, w), got {masks.shape}")
        if not params.get("applied", False):
            return masks
        size = int(size or self.target_size)
        width, height = source_size or params["source_size"]
        _, mask_h, mask_w = masks.shape
        # One affine map from output pixel centres (u + 0.5, v + 0.5) to mask pixel indices, built in the
        # continuous coordinates PIL's resize(box=...) and rotate() use (pixel i spans [i, i + 1)).
        if params["level"] == 0:
            side = min(width, height)
            left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
            to_source = np.array([[side / size, 0.0, left], [0.0, side / size, top], [0.0, 0.0, 1.0]])
        else:
            top, left, crop_h, crop_w = params["crop"]
            flip = np.eye(3)
            if params["hflip"]:
                flip = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ flip
            if params["vflip"]:
                flip = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, size], [0.0, 0.0, 1.0]]) @ flip
            crop = np.array([[crop_w / size, 0.0, left], [0.0, crop_h / size, top], [0.0, 0.0, 1.0]])
            # PIL's rotate(angle) samples the source at R(-angle) about the centre (counter-clockwise on screen).
            theta = -math.radians(params["angle"])
            cos, sin = math.cos(theta), math.sin(theta)
            cx, cy = width / 2.0, height / 2.0
            rotate = np.array([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy],
                               [0.0, 0.0, 1.0]])  # fmt: skip
            to_source = rotate @ crop @ flip
        to_mask = np.array([[mask_w / width, 0.0, -0.5], [0.0, mask_h / height, -0.5], [0.0, 0.0, 1.0]])
        centres = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
        matrix = (to_mask @ to_source @ centres)[:2].astype(np.float64)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return np.stack([
            cv2.warpAffine(m, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            for m in masks
        ]).astype(np.float32)  # fmt: skip

    def applies(self, seed: int | None) -> bool:
        """Whether the call with this `seed` makes a challenge (always at `probability` 1), without an image."""
        return self._draw_applies(np.random.default_rng(seed))

    def _draw_applies(self, rng: np.random.Generator) -> bool:
        """The first draw of a call: below `probability` 1 it decides whether the image becomes a challenge."""
        return self.probability >= 1.0 or rng.random() < self.probability

    def _crop_params(self, image_size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Square RandomResizedCrop parameters ``(top, left, h, w)``, torchvision's sampling rule."""
        width, height = image_size
        area = width * height
        for _ in range(10):
            side = int(round(math.sqrt(area * rng.uniform(*self.crop_scale))))
            if 0 < side <= width and 0 < side <= height:
                top = int(rng.integers(0, height - side + 1))
                left = int(rng.integers(0, width - side + 1))
                return top, left, side, side
        side = min(width, height)  # fallback: the centred square, as torchvision does for ratio 1
        return (height - side) // 2, (width - side) // 2, side, side


def _apply_distortion(image: np.ndarray, name: str, param: float, rng: np.random.Generator) -> np.ndarray:
    """One validator distortion on a uint8 RGB array."""
    if name == "saturation":
        ycbcr = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        ycbcr[..., 1:] = 128.0 + (ycbcr[..., 1:] - 128.0) * param
        return cv2.cvtColor(np.clip(ycbcr, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
    if name == "contrast":
        return (image.astype(np.float32) * param).astype(np.uint8)
    if name == "downsample":
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, width // int(param)), max(1, height // int(param))))
        return cv2.resize(small, (width, height))
    if name == "color_noise":
        ycbcr = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
        ycbcr += rng.standard_normal(ycbcr.shape).astype(np.float32) * (math.sqrt(param) * 255.0)
        return cv2.cvtColor(np.clip(ycbcr, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)
    if name == "blur":
        kernel = int(param)
        return cv2.GaussianBlur(image, (kernel, kernel), kernel / 6.0)
    raise ValueError(f"unknown distortion {name!r}")


AUGMENTATION_PRESETS = ("heavy", "light", "none", "validator")


def build_augmentation(preset: str) -> RoadworkViewAugmenter | RoadworkValidatorTransform | None:
    """``"heavy"`` / ``"light"`` -> a [`RoadworkViewAugmenter`]; ``"validator"`` -> a
    [`RoadworkValidatorTransform`] (whole image); ``"none"`` -> `None`."""
    if preset not in AUGMENTATION_PRESETS:
        raise ValueError(f"augmentation preset must be one of {AUGMENTATION_PRESETS}, got {preset!r}")
    if preset == "none":
        return None
    if preset == "validator":
        return RoadworkValidatorTransform()
    return RoadworkViewAugmenter(preset)


__all__ = [
    "AUGMENTATION_GROUPS",
    "AUGMENTATION_PRESETS",
    "AUGMENTATION_STRENGTHS",
    "RoadworkAugmentationConfig",
    "RoadworkHaze",
    "RoadworkValidatorTransform",
    "RoadworkViewAugmenter",
    "build_augmentation",
    "view_seeds",
]
