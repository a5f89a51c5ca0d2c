# Copyright 2025 The roadwork authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image processor for roadwork: cuts every photo into 12 views (global, 3x3 tiles, centre, right).

This file ships with every checkpoint (``trust_remote_code``), so it imports nothing from the rest of the
package: only numpy, PIL, torch and transformers.
"""

import contextlib
import io
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers import BaseImageProcessor, BatchFeature


IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# JPEG DCT scaling factors libjpeg can decode at (1/8, 1/4, 1/2, 1/1), largest first.
_JPEG_DRAFT_SCALES = (8, 4, 2, 1)

# Pillow's convolution filters widen their support when downscaling, i.e. they antialias. NEAREST does not.
_ANTIALIASED_FILTERS = {
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}

# Filters with an antialiased uint8 kernel in torch (same kernels as Pillow); the others go through Pillow.
_TORCH_MODES = {int(PIL.Image.Resampling.BILINEAR): "bilinear", int(PIL.Image.Resampling.BICUBIC): "bicubic"}

# Keys that transformers writes into preprocessor_config.json beside ours; accepted and dropped on load
# (`image_processor_type` is rewritten by `to_dict`).
_SERVICE_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type")

Box = tuple[int, int, int, int]


class RoadworkImageProcessorKwargs(TypedDict, total=False):
    """Constructor arguments of [`RoadworkImageProcessor`]; `from_pretrained(..., **kwargs)` may override them."""

    view_size: int
    tile_grid: int
    tile_overlap: float
    image_mean: Sequence[float]
    image_std: Sequence[float]
    resample: int
    do_normalize: bool
    fast_decode: bool


def _tile_starts(length: int, tile: int, grid: int) -> list[int]:
    """Left (or top) edges of `grid` tiles of extent `tile` spread evenly over `length`, the last one flush."""
    if grid == 1:
        return [(length - tile) // 2]
    return [(i * (length - tile)) // (grid - 1) for i in range(grid)]


def _min_overlap_fraction(length: int, tile: int, grid: int) -> float:
    """Smallest overlap between neighbouring tiles along one axis, as a fraction of the tile extent."""
    if grid == 1:
        return 1.0
    starts = _tile_starts(length, tile, grid)
    return min(tile - (b - a) for a, b in zip(starts, starts[1:])) / tile


def _resolve_resample(resample: Any) -> int:
    if isinstance(resample, str):
        if resample.lower() not in _ANTIALIASED_FILTERS:
            raise ValueError(
                f"resample={resample!r} is not supported; use one of {sorted(_ANTIALIASED_FILTERS)} "
                "(NEAREST is refused because it does not antialias)."
            )
        return int(_ANTIALIASED_FILTERS[resample.lower()])
    if isinstance(resample, bool) or not isinstance(resample, int):
        raise ValueError(f"resample must be a PIL.Image.Resampling value or its name, got {resample!r}.")
    if resample not in {int(f) for f in _ANTIALIASED_FILTERS.values()}:
        raise ValueError(
            f"resample={resample!r} is not supported; use PIL.Image.Resampling.BICUBIC, LANCZOS, BILINEAR, BOX "
            "or HAMMING (NEAREST is refused because it does not antialias)."
        )
    return int(resample)


def _resolve_triplet(value: Any, name: str, positive: bool) -> list[float]:
    try:
        triplet = [float(v) for v in value]
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 floats, got {value!r}.") from None
    if len(triplet) != 3 or not all(math.isfinite(v) for v in triplet):
        raise ValueError(f"{name} must be 3 finite floats (one per RGB channel), got {value!r}.")
    if positive and min(triplet) <= 0:
        raise ValueError(f"{name} must be > 0 for every channel, got {value!r}.")
    return triplet


def _describe(image: Any) -> str:
    """A short name of an input for error messages: its path where there is one."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, dict):
        if image.get("path"):
            return repr(image["path"])
        data = image.get("bytes")
        return f"<dict image with {len(data) if data is not None else 'no'} bytes>"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, PIL.Image.Image):
        path = getattr(image, "filename", "")
        return repr(path) if path else f"<PIL.Image mode={image.mode} size={image.size}>"
    return f"<{type(image).__name__}>"


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 as is; uint16 scaled by 255/65535; floats read as [0, 1]; bool as {0, 255}."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Image {name} has dtype {array.dtype} with values outside 0..255; "
                "pass uint8, uint16 or floats in [0, 1]."
            )
        return array.astype(np.uint8)
    raise ValueError(f"Image {name} has unsupported dtype {array.dtype}.")


def _array_to_pil(array: np.ndarray, channels_first: bool, name: str) -> PIL.Image.Image:
    """HWC (numpy convention) or CHW (torch convention) array, or a 2-D grey one, to a PIL image."""
    if array.ndim == 3:
        if channels_first and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)
        elif not channels_first and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # a CHW numpy array
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"Image {name} has shape {array.shape}; expected 1, 3 or 4 channels.")
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(f"Image {name} has shape {array.shape}; expected (H, W), (H, W, C) or (C, H, W).")
    if min(array.shape[:2]) == 0:
        raise ValueError(f"Image {name} is empty (shape {array.shape}).")
    return PIL.Image.fromarray(np.ascontiguousarray(_array_to_uint8(array, name)))


def _composite_on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    rgba = image.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit samples scaled, not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I;16/I -> L conversion clips at 255; scale 0..65535 to 0..255 instead.
        # Mode "I" (32-bit) holds 16-bit samples in practice (PNG/TIFF greyscale); outliers are clipped.
        samples = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return PIL.Image.fromarray(((samples + 128) // 257).astype(np.uint8)).convert("RGB")
    if mode == "F":
        return PIL.Image.fromarray(_array_to_uint8(np.asarray(image), "F")).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    return image.convert("RGB")


class RoadworkImageProcessor(BaseImageProcessor):
    r"""
    Cuts an image into the 12 views the roadwork model looks at, resizes each to `view_size` x `view_size`
    with an antialiasing filter, scales it to [0, 1] and normalises it.

    The views, in order (boxes are computed relative to the upright image, so every size and aspect works):

    - 0: the whole image, resized (squashed) to a square.
    - 1..9: a `tile_grid` x `tile_grid` grid of tiles, row-major, that together cover every pixel. Tiles are
      square with side `ceil(max(W, H) / (1 + (tile_grid - 1) * (1 - tile_overlap)))` (grown by a pixel or two
      until integer edges keep the overlap), spread evenly with the first flush with the top/left edge and
      the last with the bottom/right edge. Neighbours therefore share at least `tile_overlap` of the tile side
      along the long axis and more along the short one (a 4032x3024 photo gets 1614 px tiles, strides 1209
      across and 705 down; 1344 px tiles at stride 1008 would leave the right 672 px uncovered). Only when
      the aspect ratio exceeds `1 + (tile_grid - 1) * (1 - tile_overlap)` (2.5 with the defaults) can no
      square tile cover the image with that overlap; tiles then span the whole short side and are longer
      along the long side (a 100x37 image gets 40x37 tiles), so a tile is stretched by aspect / 2.5 when
      resized -- 2.5 times less than the global view is squashed.
    - 10: the centre square, side `min(W, H)`.
    - 11: the right-hand square, side `min(W, H)`, flush with the right edge and vertically centred (on a
      portrait or square image it is the same as the centre square).

    With `tile_grid != 3` there are `tile_grid**2 + 3` views; the model's default expects 12.

    The steps are public for training-time augmentation: [`~RoadworkImageProcessor.load_image`] (the decoder),
    [`~RoadworkImageProcessor.extract_views`] (uint8 views) and [`~RoadworkImageProcessor.normalize`]; `preprocess`
    is `normalize(extract_views(image))` for each image.

    Decoding: a file, bytes or `datasets` dict is decoded once and all views are cut from that one image. For
    JPEGs (with `fast_decode=True`) libjpeg decodes at 1/2, 1/4 or 1/8 scale whenever the smallest view box
    still has at least `view_size` source pixels per side at that scale; view boxes are computed in the
    original image's coordinates and scaled to the decoded one. PIL images, arrays and tensors are already
    decoded and are used as given, so pass `datasets` Image columns undecoded
    (`dataset.cast_column("image", datasets.Image(decode=False))`) to get the fast path.

    Resizing: BICUBIC and BILINEAR run through torch's antialiased uint8 resize (the same kernels as Pillow,
    vectorised; about 4x faster than `Image.resize` for the 12 views), with box edges snapped to whole decoded
    pixels and equal-sized crops (the tiles; the two squares) resized in one batched call. LANCZOS, BOX and
    HAMMING use Pillow's `Image.resize(box=...)` with fractional boxes (slower).

    Colour: EXIF orientation is applied. Every Pillow mode becomes 8-bit RGB: alpha (RGBA, LA, PA, P with
    transparency) is composited on white, since the colour under a transparent pixel is arbitrary; 16-bit
    greyscale (I;16*, and I, read as 16-bit samples) is scaled by 255/65535 rather than clipped; F is read as
    [0, 1]; CMYK, L, 1, P, YCbCr go through Pillow's conversion. Arrays and tensors: uint8, uint16 (scaled)
    or floats in [0, 1].

    Args:
        view_size (`int`, *optional*, defaults to 512):
            Side of every output view in pixels. DINOv3 backbones want a multiple of their patch size 16 (512 =
            32 patches); other positive sizes are accepted for other backbones and fast tests.
        tile_grid (`int`, *optional*, defaults to 3):
            Tiles per side of the tile grid.
        tile_overlap (`float`, *optional*, defaults to 0.25):
            Least fraction of the tile side that neighbouring tiles share, in [0, 1).
        image_mean (`Sequence[float]`, *optional*, defaults to the ImageNet mean `(0.485, 0.456, 0.406)`):
            Per-channel mean subtracted after scaling to [0, 1].
        image_std (`Sequence[float]`, *optional*, defaults to the ImageNet std `(0.229, 0.224, 0.225)`):
            Per-channel standard deviation divided by after subtracting the mean.
        resample (`PIL.Image.Resampling` or `str`, *optional*, defaults to `PIL.Image.Resampling.BICUBIC`):
            Resampling filter; BICUBIC, LANCZOS, BILINEAR, BOX or HAMMING (all antialias when downscaling).
            NEAREST is refused.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` / `image_std`; otherwise views are in [0, 1].
        fast_decode (`bool`, *optional*, defaults to `True`):
            Whether to let libjpeg decode large JPEGs at a reduced scale (see above).

    Example:

    ```python
    >>> from PIL import Image
    >>> processor = RoadworkImageProcessor(view_size=64)
    >>> inputs = processor(Image.new("RGB", (4032, 3024)), return_tensors="pt", return_view_boxes=True)
    >>> tuple(inputs["pixel_values"].shape)
    (1, 12, 3, 64, 64)
    >>> processor.view_boxes(4032, 3024)[1]
    (0, 0, 1614, 1614)
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = RoadworkImageProcessorKwargs

    def __init__(
        self,
        *,
        view_size: int = 512,
        tile_grid: int = 3,
        tile_overlap: float = 0.25,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        resample: "PIL.Image.Resampling | int | str" = PIL.Image.Resampling.BICUBIC,
        do_normalize: bool = True,
        fast_decode: bool = True,
        **kwargs,
    ):
        auto_map = kwargs.pop("auto_map", None)
        for key in _SERVICE_KEYS:
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"RoadworkImageProcessor got unexpected keyword arguments {sorted(kwargs)}.")
        super().__init__()
        if auto_map is not None:
            self.auto_map = auto_map  # kept so that a save -> load -> save round trip writes the same json

        if isinstance(view_size, bool) or not isinstance(view_size, int) or view_size < 1:
            raise ValueError(f"view_size must be a positive int (a multiple of 16 for DINOv3), got {view_size!r}.")
        if isinstance(tile_grid, bool) or not isinstance(tile_grid, int) or tile_grid < 1:
            raise ValueError(f"tile_grid must be a positive int, got {tile_grid!r}.")
        if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, float)) or not 0 <= tile_overlap < 1:
            raise ValueError(f"tile_overlap must be a float in [0, 1), got {tile_overlap!r}.")
        for name, flag in (("do_normalize", do_normalize), ("fast_decode", fast_decode)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}.")

        self.view_size = view_size
        self.tile_grid = tile_grid
        self.tile_overlap = float(tile_overlap)
        self.image_mean = _resolve_triplet(image_mean, "image_mean", positive=False)
        self.image_std = _resolve_triplet(image_std, "image_std", positive=True)
        self.resample = _resolve_resample(resample)
        self.do_normalize = do_normalize
        self.fast_decode = fast_decode

    @classmethod
    def from_model_config(cls, config: Any, **kwargs) -> "RoadworkImageProcessor":
        """
        The processor that matches a roadwork model: `view_size`, `image_mean`, `image_std` and `resample` from its
        config (which `from_backbone` fills from the backbone's own preprocessing), so that training and serving
        normalise alike and `save_pretrained` writes them to `preprocessor_config.json`. A config without these
        fields (older checkpoints) gets the ImageNet mean/std and bicubic resampling. `kwargs` override any
        constructor argument.

        Example:

        ```python
        >>> processor = RoadworkImageProcessor.from_model_config(model.config)
        ```
        """
        values = {
            "view_size": config.view_size,
            "image_mean": getattr(config, "image_mean", None) or IMAGENET_DEFAULT_MEAN,
            "image_std": getattr(config, "image_std", None) or IMAGENET_DEFAULT_STD,
            "resample": getattr(config, "resample", None) or PIL.Image.Resampling.BICUBIC,
        }
        values.update(kwargs)
        return cls(**values)

    @property
    def num_views(self) -> int:
        """Views per image: global + tiles + centre + right (12 with the default 3x3 grid)."""
        return self.tile_grid**2 + 3

    # ------------------------------------------------------------------ geometry

    def tile_size(self, width: int, height: int) -> tuple[int, int]:
        """(tile width, tile height) for an upright `width` x `height` image; equal unless the aspect is extreme."""
        grid, overlap = self.tile_grid, self.tile_overlap
        long_side = max(width, height)
        # n tiles of side t with stride <= (1 - overlap) * t reach t + (n - 1)(1 - overlap) t >= long side.
        side = math.ceil(long_side / (1 + (grid - 1) * (1 - overlap)) - 1e-9)
        while side < long_side:
            tile_w, tile_h = min(side, width), min(side, height)
            if (
                _min_overlap_fraction(width, tile_w, grid) >= overlap
                and _min_overlap_fraction(height, tile_h, grid) >= overlap
            ):
                break
            side += 1  # integer tile edges can shave a pixel off the overlap
        return min(side, width), min(side, height)

    def view_boxes(self, width: int, height: int) -> list[Box]:
        """
        The view boxes of an upright `width` x `height` image, in its pixel coordinates.

        Returns:
            `list[tuple[int, int, int, int]]`: `num_views` boxes `(left, top, right, bottom)` (right/bottom
            exclusive) in view order: global, tiles row-major, centre square, right-hand square.
        """
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        width, height = int(width), int(height)
        tile_w, tile_h = self.tile_size(width, height)
        lefts = _tile_starts(width, tile_w, self.tile_grid)
        tops = _tile_starts(height, tile_h, self.tile_grid)
        side = min(width, height)
        square_top = (height - side) // 2

        boxes = [(0, 0, width, height)]
        boxes += [(left, top, left + tile_w, top + tile_h) for top in tops for left in lefts]
        boxes.append(((width - side) // 2, square_top, (width - side) // 2 + side, square_top + side))
        boxes.append((width - side, square_top, width, square_top + side))
        return boxes

    def draft_scale(self, width: int, height: int) -> int:
        """The JPEG reduction (1, 2, 4 or 8) that keeps at least `view_size` source pixels per side in every view."""
        smallest = min(min(right - left, bottom - top) for left, top, right, bottom in self.view_boxes(width, height))
        return next(s for s in _JPEG_DRAFT_SCALES if smallest // s >= self.view_size or s == 1)

    # ------------------------------------------------------------------ decoding

    def _decode(self, image: Any, fast_decode: bool) -> tuple[PIL.Image.Image, int, int, float]:
        """
        Decode one input to an upright RGB image.

        Returns:
            `(rgb, width, height, scale)`: the decoded RGB image, the upright size of the full-resolution image
            (which view boxes refer to) and the factor from those coordinates to the decoded image's.
        """
        if isinstance(image, (np.ndarray, torch.Tensor)):
            is_tensor = isinstance(image, torch.Tensor)
            array = image.detach().cpu().numpy() if is_tensor else image
            pil = _array_to_pil(array, channels_first=is_tensor, name=_describe(image))
            return _to_rgb(pil), pil.width, pil.height, 1.0
        if not isinstance(image, (PIL.Image.Image, dict, str, os.PathLike, bytes, bytearray, memoryview)):
            raise TypeError(
                f"Unsupported image type {type(image).__name__}; pass a PIL image, a path, bytes, a `datasets` "
                "{'bytes', 'path'} dict, a numpy array (H, W, C) or a torch tensor (C, H, W)."
            )
        try:
            with contextlib.ExitStack() as stack:
                owned = not isinstance(image, PIL.Image.Image)
                if not owned:
                    pil = image
                elif isinstance(image, dict):
                    if image.get("bytes") is not None:
                        pil = PIL.Image.open(io.BytesIO(image["bytes"]))
                    elif image.get("path"):
                        pil = PIL.Image.open(stack.enter_context(open(image["path"], "rb")))
                    else:
                        raise ValueError("the dict has neither 'bytes' nor 'path'")
                elif isinstance(image, (bytes, bytearray, memoryview)):
                    pil = PIL.Image.open(io.BytesIO(bytes(image)))
                else:
                    # Our own handle, closed on leaving: Pillow keeps multi-frame files (MPO) open otherwise.
                    pil = PIL.Image.open(stack.enter_context(open(image, "rb")))

                orientation = pil.getexif().get(0x0112, 1)  # EXIF Orientation
                width, height = (pil.height, pil.width) if orientation in (5, 6, 7, 8) else pil.size
                scale = 1.0
                # draft() only on images we opened: it rewrites the decoder of a caller's lazily opened image.
                if fast_decode and owned and pil.format in ("JPEG", "MPO"):
                    reduction = self.draft_scale(width, height)
                    if reduction > 1:
                        # draft() picks the largest DCT scale whose output is >= the requested size, per axis.
                        file_width, file_height = pil.size
                        drafted = pil.draft("RGB", (max(1, file_width // reduction), max(1, file_height // reduction)))
                        if drafted is not None:
                            # The drafted box is (0, 0, file_width / s, file_height / s) for the DCT scale 1/s.
                            scale = drafted[1][2] / file_width
                pil.load()
                if orientation != 1:
                    pil = PIL.ImageOps.exif_transpose(pil, in_place=False)
                rgb = _to_rgb(pil)
        except MemoryError:
            raise
        except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, DecompressionBombError, ...
            raise ValueError(f"Could not decode image {_describe(image)}: {type(error).__name__}: {error}") from error
        return rgb, width, height, scale

    def _extract_views(self, rgb: PIL.Image.Image, boxes: list[Box], scale: float) -> torch.Tensor:
        """(V, 3, S, S) uint8 views, each cut and resized from the one decoded image."""
        size = self.view_size
        views = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
        if self.resample not in _TORCH_MODES:
            for index, (left, top, right, bottom) in enumerate(boxes):
                box = (left * scale, top * scale, min(right * scale, rgb.width), min(bottom * scale, rgb.height))
                view = np.asarray(rgb.resize((size, size), self.resample, box=box))  # (S, S, 3)
                views[index] = torch.from_numpy(view.copy()).permute(2, 0, 1)
            return views

        # torch's antialiased uint8 resize uses Pillow's separable kernels (bicubic a = -0.5) and is vectorised:
        # ~4x faster than Image.resize here. Box edges snap to whole decoded pixels (half a pixel at most).
        array = np.asarray(rgb)  # (h, w, 3), read-only
        height, width = array.shape[:2]
        crops: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # (crop w, crop h) -> [(view, x0, y0)]
        for index, (left, top, right, bottom) in enumerate(boxes):
            crop_w = min(max(1, round((right - left) * scale)), width)
            crop_h = min(max(1, round((bottom - top) * scale)), height)
            x0, y0 = min(round(left * scale), width - crop_w), min(round(top * scale), height - crop_h)
            crops.setdefault((crop_w, crop_h), []).append((index, x0, y0))
        # Views of equal crop size (the tiles; the two squares) are resized in one call: each call is a few
        # parallel regions, which is what costs on a machine whose cores are busy.
        for (crop_w, crop_h), members in crops.items():
            if len(members) == 1:
                _, x0, y0 = members[0]
                batch = array[None, y0 : y0 + crop_h, x0 : x0 + crop_w]  # a view, no copy
            else:
                batch = np.stack([array[y0 : y0 + crop_h, x0 : x0 + crop_w] for _, x0, y0 in members])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only array: torch only reads it
                batch = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (N, 3, h, w) in channels-last memory
            resized = F.interpolate(batch, size=(size, size), mode=_TORCH_MODES[self.resample], antialias=True)
            views[[index for index, _, _ in members]] = resized
        return views

    # ------------------------------------------------------------------ public API

    def load_image(self, image: Any) -> PIL.Image.Image:
        """
        Decode one input to the upright 8-bit RGB image that views are cut from, at full resolution.

        The decoder of [`~RoadworkImageProcessor.preprocess`] (EXIF orientation, alpha on white, 16-bit samples
        scaled), without the JPEG draft: for code that transforms the whole image before cutting views, such as
        a training-time augmentation, so that it sees what serving sees. Raises `ValueError` on an undecodable
        input.
        """
        rgb, _, _, _ = self._decode(image, fast_decode=False)
        return rgb

    def extract_views(self, image: Any, fast_decode: bool | None = None, return_boxes: bool = False):
        """
        Decode one image and cut its views, before normalisation (for per-view augmentation).

        Args:
            image: one image, in any form [`~RoadworkImageProcessor.preprocess`] takes.
            fast_decode (`bool`, *optional*): overrides `self.fast_decode` for this call.
            return_boxes (`bool`, *optional*, defaults to `False`): also return the view boxes.

        Returns:
            `np.ndarray`: (V, S, S, 3) uint8 views, in view order; [`~RoadworkImageProcessor.normalize`] turns
            them into what `preprocess` returns for the image. With `return_boxes`, `(views, boxes)`: the boxes
            `(left, top, right, bottom)` in the upright full-resolution image (box 0, the global view, is the
            whole image, so it gives the image's size).
        """
        views, boxes = self._views(image, self.fast_decode if fast_decode is None else fast_decode)
        views = views.permute(0, 2, 3, 1).numpy()  # (V, 3, S, S) -> (V, S, S, 3), no copy
        return (views, boxes) if return_boxes else views

    def normalize(self, views: Any, do_normalize: bool | None = None) -> torch.Tensor:
        """
        Scale uint8 views to [0, 1] and normalise them with `image_mean` / `image_std`.

        Args:
            views: (V, S, S, 3) uint8, an array, a tensor or a sequence of (S, S, 3) arrays, e.g. the output of
                [`~RoadworkImageProcessor.extract_views`] after augmentation.
            do_normalize (`bool`, *optional*): overrides `self.do_normalize` for this call; without normalisation
                the views are only scaled to [0, 1].

        Returns:
            `torch.Tensor`: (V, 3, S, S) float32, as in the `pixel_values` of
            [`~RoadworkImageProcessor.preprocess`].
        """
        if isinstance(views, (list, tuple)):
            views = np.stack([np.asarray(view) for view in views])
        views = torch.as_tensor(views)
        if views.dtype != torch.uint8 or views.dim() != 4 or views.shape[-1] != 3:
            raise ValueError(f"views must be (V, S, S, 3) uint8, got {views.dtype} {tuple(views.shape)}.")
        views = views.permute(0, 3, 1, 2)  # (V, S, S, 3) -> (V, 3, S, S)
        out = torch.empty(views.shape, dtype=torch.float32)
        return self._normalize_into(out, views, self.do_normalize if do_normalize is None else do_normalize)

    def _normalize_into(self, out: torch.Tensor, views: torch.Tensor, do_normalize: bool) -> torch.Tensor:
        """(V, 3, S, S) uint8 `views` -> `out` (V, 3, S, S) float32, normalised in place; returns `out`."""
        # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std, per channel: (3, 1, 1) broadcasts.
        std = torch.tensor(self.image_std).view(3, 1, 1) if do_normalize else torch.ones(3, 1, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1) if do_normalize else torch.zeros(3, 1, 1)
        # uint8 -> float, then normalise in place (a mixed-dtype addcmul would be one pass but ~4x slower).
        return out.copy_(views).mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def _views(self, image: Any, fast_decode: bool) -> tuple[torch.Tensor, list[Box]]:
        """(V, 3, S, S) uint8 views of one image and their boxes in the upright full-resolution image."""
        rgb, width, height, scale = self._decode(image, fast_decode)
        boxes = self.view_boxes(width, height)
        return self._extract_views(rgb, boxes, scale), boxes

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        return_view_boxes: bool = False,
        do_normalize: bool | None = None,
        fast_decode: bool | None = None,
    ) -> BatchFeature:
        r"""
        Cut, resize and normalise the views of one image or a batch.

        Args:
            images:
                One image or a list of them. Each may be a `PIL.Image.Image`, a path (`str` / `os.PathLike`),
                encoded `bytes`, a `datasets` Image dict `{"bytes": ..., "path": ...}`, a numpy array (H, W, C)
                (uint8, uint16 or floats in [0, 1]) or a torch tensor (C, H, W). A 4-D array (B, H, W, C) or
                tensor (B, C, H, W) is a batch.
            return_tensors (`str`, *optional*):
                `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.
            return_view_boxes (`bool`, *optional*, defaults to `False`):
                Also return `view_boxes` (B, V, 4) int64, in each upright full-resolution image's pixels.
            do_normalize (`bool`, *optional*):
                Overrides `self.do_normalize` for this call.
            fast_decode (`bool`, *optional*):
                Overrides `self.fast_decode` for this call.

        Returns:
            [`BatchFeature`]: `pixel_values` (B, V, 3, S, S) float32, and `view_boxes` (B, V, 4) if asked.
            A single image gives B = 1.
        """
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        fast_decode = self.fast_decode if fast_decode is None else fast_decode
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")

        batch = self._as_list(images)
        if not batch:
            raise ValueError("images is an empty list.")
        num_images, num_views, size = len(batch), self.num_views, self.view_size

        pixel_values = torch.empty((num_images, num_views, 3, size, size), dtype=torch.float32)
        view_boxes = torch.empty((num_images, num_views, 4), dtype=torch.int64)
        for index, image in enumerate(batch):
            views, boxes = self._views(image, fast_decode)
            self._normalize_into(pixel_values[index], views, do_normalize)
            view_boxes[index] = torch.tensor(boxes, dtype=torch.int64)

        data: dict[str, Any] = {"pixel_values": pixel_values}
        if return_view_boxes:
            data["view_boxes"] = view_boxes
        if return_tensors != "pt":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def __call__(self, images: Any, **kwargs) -> BatchFeature:
        """Same as [`~RoadworkImageProcessor.preprocess`]."""
        return self.preprocess(images, **kwargs)

    @staticmethod
    def _as_list(images: Any) -> list[Any]:
        if isinstance(images, (list, tuple)):
            return list(images)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return list(images.unbind(0))
        return [images]


RoadworkImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["RoadworkImageProcessor", "RoadworkImageProcessorKwargs"]
