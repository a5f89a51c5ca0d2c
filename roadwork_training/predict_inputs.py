"""What `predict.py` reads: inputs from files, folders, globs and datasets, decoded in DataLoader workers.

No input is lost: every path or row that cannot be predicted becomes a [`RoadworkInputError`] (written to
`errors.csv` with its reason) and every other input still gets its prediction. Errors are found in two places:
while collecting (a path that does not exist or cannot be listed, a folder without images, a file whose type is not
an image, a dataset that does not load) and while decoding in a worker (an empty, truncated or non-image file, an
unsupported format, an image smaller than `min_image_size` per side, one above `max_image_pixels`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch

from data_collator.augmentation import RoadworkValidatorTransform
from data_collator.collator import SEED_STREAM_TRANSFORM, example_seed
from data_collator.schema import ID_COLUMN, IMAGE_COLUMN, LABEL_COLUMN, find_parquet_splits, load_roadwork_splits

from .tta import tta_variants


logger = logging.getLogger(__name__)

# Extensions a folder walk treats as images (Pillow reads them all; HEIC needs a plugin and is refused clearly).
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
     ".pnm", ".mpo")
)  # fmt: skip
# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): 8-bit RGB of this size is ~268 MB.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
DEFAULT_MIN_IMAGE_SIZE = 8
# Grouping columns of the schema that the error analysis reads (the key is the report's name for it).
GROUP_COLUMNS = {
    "weather": "scene_level_tags.weather",
    "daytime": "scene_level_tags.daytime",
    "scene": "scene_level_tags.scene_environment",
    "city": "city_name",
}
_GLOB_CHARS = frozenset("*?[")


@dataclass
class RoadworkPredictionInput:
    """One thing to predict: a file, or a dataset row (its undecoded image cell and its other columns)."""

    name: str
    image: Any  # a path, or a `datasets` {"bytes", "path"} dict
    row: dict | None = None  # the row without its image (metadata, id, label, groups)
    label: int | None = None
    seed_index: int | None = None  # the row index within its split: seeds the challenge transform like train.py


@dataclass
class RoadworkInputError:
    input: str
    error: str


@dataclass
class RoadworkCollectedInputs:
    inputs: list[RoadworkPredictionInput] = field(default_factory=list)
    errors: list[RoadworkInputError] = field(default_factory=list)


def _is_glob(path: str) -> bool:
    return any(char in path for char in _GLOB_CHARS)


def _walk_folder(folder: str, collected: RoadworkCollectedInputs) -> None:
    """Every image file under `folder` (recursive, sorted); other files and unreadable sub-folders become errors."""
    found = 0

    def on_error(error: OSError) -> None:
        collected.errors.append(RoadworkInputError(error.filename or folder, f"cannot list folder: {error.strerror}"))

    for root, dirs, files in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            extension = os.path.splitext(name)[1].lower()
            if extension in IMAGE_EXTENSIONS:
                collected.inputs.append(RoadworkPredictionInput(name=path, image=path))
                found += 1
            else:
                collected.errors.append(RoadworkInputError(
                    path, f"unsupported file type {extension or '(no extension)'!r} in a folder walk; supported: "
                    f"{' '.join(sorted(IMAGE_EXTENSIONS))} (name the file directly to try decoding it anyway)",
                ))  # fmt: skip
    if not found:
        collected.errors.append(RoadworkInputError(folder, "folder contains no image files (searched recursively)"))


def _dataset_inputs(source: str, split: str | None, collected: RoadworkCollectedInputs) -> None:
    """Rows of one split of a Parquet folder in the dataset schema or of a `datasets` Hub id."""
    try:
        if split is None:
            local = find_parquet_splits(source) if os.path.isdir(source) else {}
            raise ValueError(f"a dataset needs --split (it has {sorted(local) or 'unknown splits'})")
        loaded = load_roadwork_splits(source, splits=[split])
        rows = loaded[split]
    except Exception as error:  # noqa: BLE001 - a dataset that does not load is one failed input, not a crash
        collected.errors.append(RoadworkInputError(source, f"cannot load dataset split {split!r}: {error}"))
        return
    columns = [c for c in rows.column_names if c != IMAGE_COLUMN]
    others = rows.select_columns(columns).to_list() if columns else [{} for _ in range(len(rows))]
    images = rows[IMAGE_COLUMN] if IMAGE_COLUMN in rows.column_names else [None] * len(rows)
    for index, (row, image) in enumerate(zip(others, images)):
        row_id = row.get(ID_COLUMN)
        name = f"{source}:{split}:{row_id if row_id is not None else index}"
        label = row.get(LABEL_COLUMN)
        if image is None:
            collected.errors.append(RoadworkInputError(name, "the row has no image"))
            continue
        collected.inputs.append(RoadworkPredictionInput(
            name=name, image=dict(image), row=row, label=int(label) if label is not None else None, seed_index=index,
        ))  # fmt: skip


def collect_inputs(paths: Sequence[str], split: str | None = None) -> RoadworkCollectedInputs:
    """
    Expands `--inputs`: image files, folders (recursive), globs (`**` recursive), Parquet folders in the dataset
    schema and `datasets` Hub ids (both with `split`). Whatever cannot be read is an error entry, never an exception.
    """
    collected = RoadworkCollectedInputs()
    for path in paths:
        path = os.path.expanduser(str(path))
        if os.path.isdir(path):
            if find_parquet_splits(path):
                _dataset_inputs(path, split, collected)
            elif not os.access(path, os.R_OK | os.X_OK):
                collected.errors.append(RoadworkInputError(path, "cannot read folder: permission denied"))
            else:
                _walk_folder(path, collected)
        elif os.path.isfile(path) or os.path.islink(path):
            collected.inputs.append(RoadworkPredictionInput(name=path, image=path))
        elif _is_glob(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                collected.errors.append(RoadworkInputError(path, "no file matches the glob"))
            for match in matches:
                if os.path.isdir(match):
                    _walk_folder(match, collected)
                else:
                    collected.inputs.append(RoadworkPredictionInput(name=match, image=match))
        elif split is not None and path.count("/") == 1 and not path.startswith((".", "/")):
            _dataset_inputs(path, split, collected)  # a `datasets` Hub id
        else:
            hint = " (a `datasets` Hub id needs --split)" if path.count("/") == 1 else ""
            collected.errors.append(RoadworkInputError(path, f"no such file or folder{hint}"))
    return collected


# --- decoding (in DataLoader workers) --------------------------------------------------------------------------


def input_seed(item: RoadworkPredictionInput, seed: int) -> int:
    """
    The challenge-transform seed of an input. Dataset rows use train.py's evaluation seed for the row (so
    `--serving` sees the very challenges of train.py's `serving` condition); files a hash of their path.
    """
    if item.seed_index is not None:
        return example_seed(seed, 0, item.seed_index, SEED_STREAM_TRANSFORM)
    digest = hashlib.sha256(f"{seed}:{item.name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def read_image_bytes(item: RoadworkPredictionInput) -> bytes:
    """The encoded bytes of an input; raises ValueError with the reason."""
    image = item.image
    if isinstance(image, Mapping):
        if image.get("bytes") is not None:
            data = bytes(image["bytes"])
        elif image.get("path"):
            image = image["path"]
        else:
            raise ValueError("the row's image has neither bytes nor a path")
    if not isinstance(image, Mapping):
        try:
            with open(image, "rb") as handle:
                data = handle.read()
        except IsADirectoryError:
            raise ValueError("is a folder, not an image file") from None
        except OSError as error:
            raise ValueError(f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise ValueError("empty file (0 bytes)")
    return data


def check_image_header(data: bytes, min_size: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Format and size from the header, without decoding; ValueError for a non-image, a tiny or a huge image."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as probe:
            fmt, size = probe.format, probe.size
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"decompression bomb refused by Pillow: {error}") from None
    except PIL.UnidentifiedImageError:
        raise ValueError("not an image, or an image format Pillow cannot read (supported: JPEG, PNG, WebP, TIFF, "
                         "BMP, GIF, PPM, ...)") from None  # fmt: skip
    except Exception as error:  # noqa: BLE001 - any header Pillow chokes on
        raise ValueError(f"unreadable image header: {type(error).__name__}: {error}") from None
    width, height = size
    if width * height > max_pixels:
        raise ValueError(f"image is {width}x{height} = {width * height} pixels, above --max_image_pixels {max_pixels} "
                         "(a decompression bomb guard; raise the flag if the image is genuine)")  # fmt: skip
    if min(width, height) < min_size:
        raise ValueError(f"image is {width}x{height}, smaller than --min_image_size {min_size} px per side")
    return fmt, size


class RoadworkPredictionDataset(torch.utils.data.Dataset):
    """
    Decodes inputs into uint8 views for every TTA variant and every distinct image processor (ensemble members may
    cut different views). Item: `{"index", "views": [(T, V, S, S, 3) uint8 per processor]}` or `{"index", "error"}`.

    Views stay uint8 until they reach the device (a 16-variant, 12-view, 512 px image is 150 MB as uint8, 600 MB
    as float32), where [`normalize_on_device`] applies each processor's mean and std.
    """

    def __init__(
        self,
        inputs: Sequence[RoadworkPredictionInput],
        processors: Sequence[Any],
        tta: str = "none",
        serving: bool = False,
        seed: int = 42,
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.inputs = list(inputs)
        self.processors = list(processors)
        self.tta = tta
        self.num_variants = len(tta_variants(tta))  # checks the mode here, in the main process
        self.serving = serving
        self.seed = seed
        self.min_image_size = min_image_size
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.inputs)

    def load_pil(self, item: RoadworkPredictionInput) -> PIL.Image.Image:
        """The whole image as the model sees it: decoded, then through the challenge transform with `--serving`."""
        data = read_image_bytes(item)
        check_image_header(data, self.min_image_size, self.max_image_pixels)
        # Pillow's own guard too, at the same limit (it raises at twice MAX_IMAGE_PIXELS, warns above it).
        PIL.Image.MAX_IMAGE_PIXELS = self.max_image_pixels
        image = self.processors[0].load_image({"bytes": data, "path": None})
        if self.serving:
            image = RoadworkValidatorTransform()(image, seed=input_seed(item, self.seed))
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.inputs[index]
        try:
            image = self.load_pil(item)
            variants = [variant(image) for variant in tta_variants(self.tta)]
            views = [np.stack([processor.extract_views(v) for v in variants]) for processor in self.processors]
        except MemoryError:
            return {"index": index, "error": "out of memory while decoding (image too large for this machine)"}
        except Exception as error:  # noqa: BLE001 - one bad input must not end the run; its reason is kept
            return {"index": index, "error": str(error)}
        return {"index": index, "views": [torch.from_numpy(v) for v in views]}


def collate_predictions(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stacks good items: `views` [(B, T, V, S, S, 3) uint8 per processor], `indices` (B,); `errors` [(index, msg)]."""
    good = [item for item in items if "views" in item]
    batch: dict[str, Any] = {
        "indices": [item["index"] for item in good],
        "errors": [(item["index"], item["error"]) for item in items if "error" in item],
    }
    if good:
        batch["views"] = [torch.stack([item["views"][k] for item in good]) for k in range(len(good[0]["views"]))]
    return batch


def normalize_on_device(views: torch.Tensor, processor: Any) -> torch.Tensor:
    """
    (..., V, S, S, 3) uint8 on any device -> (..., V, 3, S, S) float32 there: `processor.normalize` (x / 255 - mean)
    / std, the same arithmetic, on the accelerator instead of in the worker (tests compare the two).
    """
    mean = torch.tensor(processor.image_mean, device=views.device).view(3, 1, 1)
    std = torch.tensor(processor.image_std, device=views.device).view(3, 1, 1)
    if not processor.do_normalize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    views = views.movedim(-1, -3).float()  # (..., V, S, S, 3) -> (..., V, 3, S, S)
    return views.mul_(1.0 / (255.0 * std)).sub_(mean / std)


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MIN_IMAGE_SIZE",
    "GROUP_COLUMNS",
    "IMAGE_EXTENSIONS",
    "RoadworkCollectedInputs",
    "RoadworkInputError",
    "RoadworkPredictionDataset",
    "RoadworkPredictionInput",
    "check_image_header",
    "collate_predictions",
    "collect_inputs",
    "input_seed",
    "normalize_on_device",
    "read_image_bytes",
]
