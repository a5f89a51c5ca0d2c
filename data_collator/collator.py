"""From raw roadwork rows to model batches.

[`RoadworkDataset`] turns one row of the schema into an example: decode the image once, optionally apply a
whole-image transform (the validators' serving conditions), cut the 12 views, augment each view independently,
normalise, and parse the metadata. Decoding, view cutting and normalisation are the [`RoadworkImageProcessor`]'s
own (`load_image`, `extract_views`, `normalize`), so training sees pixels exactly as serving does.
[`RoadworkDataCollator`] stacks examples into exactly the arguments of `RoadworkForImageClassification.forward`:
``pixel_values`` or ``view_features``, ``gps``, ``weather_ids``, ``daytime_ids``, ``scene_ids``,
``text_embeds``, ``labels``, ``weather_labels``, and ``seg_masks`` + ``seg_mask_valid`` when the data has masks.

Corrupt images. A map-style dataset cannot skip an index, so a row whose image does not decode becomes a
flagged example (``"corrupt": True``, label and id kept, no pixels). The dataset logs a warning once per
row id and counts it (``dataset.num_corrupt``, ``dataset.corrupt_ids``); the collator drops flagged
examples and counts them (``collator.num_dropped``). A batch that loses every example (batch size 1, or a
very unlucky batch) is refilled with the last good example this collator saw, so a long run never gets an
empty batch; only a first batch with nothing decodable raises. Substituting a grey image with the label
kept was rejected: it would teach the model that a blank image can be roadwork.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_roadwork.configuration_roadwork import DEFAULT_SEG_CLASSES

from .augmentation import RoadworkValidatorTransform, RoadworkViewAugmenter, build_augmentation
from .metadata import (
    DESCRIPTION_COLUMN,
    METADATA_FIELDS,
    RoadworkMetadataParser,
    RoadworkParseReport,
    clean_description,
    collate_metadata,
    drop_metadata_fields,
)
from .schema import (
    ID_COLUMN,
    IMAGE_COLUMN,
    LABEL_COLUMN,
    SEG_MASK_SIZE,
    SEG_MASKS_COLUMN,
    TEXT_EMBED_DIM,
    decode_seg_masks,
    scan_metadata,
)
from .view_coverage import VIEW_COVERAGE_COLUMN, view_coverage


logger = logging.getLogger(__name__)

# Keys the collator may emit: arguments of RoadworkForImageClassification.forward (tests/test_data_to_model.py).
FORWARD_KEYS = (
    "pixel_values",
    "view_features",
    "gps",
    "weather_ids",
    "daytime_ids",
    "scene_ids",
    "text_embeds",
    "labels",
    "weather_labels",
    "seg_masks",
    "seg_mask_valid",
    "view_coverage",
)
VIEW_FEATURES_COLUMN = "view_features"
TEXT_EMBEDS_COLUMN = "text_embeds"


# The seed streams of `example_seed`: each random part of an example draws from its own stream.
SEED_STREAM_VIEWS = 0  # per-view augmentation (RoadworkViewAugmenter)
SEED_STREAM_TRANSFORM = 1  # the whole-image transform (e.g. the validators' challenge transform)
SEED_STREAM_METADATA = 2  # metadata dropout


def example_seed(seed: int | None, epoch: int, index: int, stream: int, draw: int = 0) -> int | None:
    """
    The seed `RoadworkDataset` gives one random part of one example: independent per (seed, epoch, row, stream,
    draw); None when `seed` is None (unseeded). Streams: `SEED_STREAM_VIEWS` (0) = per-view augmentation,
    `SEED_STREAM_TRANSFORM` (1) = the whole-image transform, `SEED_STREAM_METADATA` (2) = metadata dropout. Code
    outside the dataset that must reproduce its draws (predict.py's serving images, distill.py's challenge images,
    the feature cache's passes) calls this with the same arguments. `draw` counts earlier draws of the same row in
    the epoch (a sampler with replacement repeats rows), so every draw gets its own augmentation; the first draw
    keeps the seed it had before draws were counted.
    """
    if seed is None:
        return None
    entropy = [int(seed), int(epoch), int(index), stream] + ([int(draw)] if draw else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def encode_draw(row: int, draw: int, num_rows: int) -> int:
    """The dataset index of the `draw`-th draw (0-based) of `row` in an epoch: `row + draw * num_rows`."""
    return int(row) + int(draw) * int(num_rows)


def decode_draw(index: int, num_rows: int) -> tuple[int, int]:
    """A dataset index -> (row, draw); the inverse of [`encode_draw`]. Plain row indices are draw 0."""
    draw, row = divmod(int(index), int(num_rows))
    return row, draw


# --- dataset --------------------------------------------------------------------------------------------------


class RoadworkDataset(torch.utils.data.Dataset):
    """Map-style dataset of roadwork examples over rows of the schema.

    Args:
        split: a `datasets.Dataset` (best with ``image`` cast to ``Image(decode=False)``, as
            [`~data_collator.schema.load_roadwork_splits`] does), or any indexable sequence of row dicts.
        image_processor ([`RoadworkImageProcessor`]): decodes the image, cuts the views and normalises them (with
            its ``image_mean`` / ``image_std``), the same code that serves the model.
        vocabularies: the model config, a dict with ``weather_vocab`` / ``daytime_vocab`` / ``scene_vocab``, or a
            [`RoadworkMetadataParser`].
        augmentation (`str` or [`RoadworkViewAugmenter`], *optional*, defaults to ``"none"``): per-view
            augmentation: ``"heavy"``, ``"light"``, ``"none"``, or an augmenter.
        image_transform (`Callable`, *optional*): a whole-image transform applied before view extraction,
            called as ``image_transform(pil_image, seed=...)`` on the image as the processor's ``load_image``
            decodes it, e.g. [`RoadworkValidatorTransform`]; or the string ``"validator"``.
        seed (`int`, *optional*): makes every example a function of ``(seed, epoch, index)``. `None` draws
            fresh randomness each time (different in every epoch and worker).
        with_seg_masks (`bool`, *optional*): emit ``seg_masks`` (`None` where a row has none). Defaults to whether
            the split has a ``seg_masks`` column.
        num_seg_classes (`int`, *optional*, defaults to 6, the length of `RoadworkConfig.seg_class_names`):
            channels of the masks.
        scan_metadata_on_init (`bool`, *optional*, defaults to `True`): parse every row's metadata once at
            construction (no images; fast) and log a one-line summary of malformed GPS strings, unknown
            categories etc.
        use_metadata (`bool`, *optional*, defaults to `True`): `False` gives every row missing metadata, as serving
            sends none (the `no_metadata` and `serving` evaluation conditions).
        metadata_dropout (`float`, *optional*, defaults to 0.0): probability that a row loses all of its metadata
            (seeded per row, epoch and draw), so the model learns from real rows what to do when serving sends none.
        metadata_field_dropout (`float`, *optional*, defaults to 0.0): probability that each remaining field
            (GPS, weather, daytime, scene, description) is dropped on its own.

    Indices beyond ``len(dataset)`` are repeated draws of a row: index ``row + k * len`` is the ``k``-th repeat
    (see [`encode_draw`]; the GPS sampler, which draws with replacement, yields them), and gets its own
    augmentation and metadata dropout.

    Each example is a dict: ``pixel_values`` (V, 3, S, S) float32 (or ``view_features`` (V, D) when the row
    carries cached features), ``gps`` (2,) float32, ``weather_ids`` / ``daytime_ids`` / ``scene_ids`` /
    ``weather_labels`` ints, ``description`` (str or None), ``labels`` (int, when the row has a label),
    ``text_embeds`` (when cached in the row), ``seg_masks`` ((K, h, w) float32 or None), ``view_coverage``
    ((V,) float32 or None: the share of each view's area the masks cover, see `data_collator.view_coverage`; also
    read from a cached row's column), ``id``; or, for an undecodable image, ``{"corrupt": True, "id": ..., "labels":
    ...}``.

    Masks follow the validators' challenge transform (`RoadworkValidatorTransform.warp_masks`) and then view 0 (the
    whole image) through its augmentation; `view_coverage` is measured after the whole-image transform, before the
    per-view augmentation (a flip or a small rotation of a tile keeps what it shows). Any other whole-image
    transform drops the masks (``seg_masks`` and ``view_coverage`` None).
    """

    def __init__(
        self,
        split: Any,
        image_processor: Any,
        vocabularies: Any = None,
        augmentation: str | RoadworkViewAugmenter | None = "none",
        image_transform: Callable[..., Image.Image] | str | None = None,
        seed: int | None = None,
        with_seg_masks: bool | None = None,
        num_seg_classes: int = len(DEFAULT_SEG_CLASSES),
        scan_metadata_on_init: bool = True,
        use_metadata: bool = True,
        metadata_dropout: float = 0.0,
        metadata_field_dropout: float = 0.0,
    ):
        for name, value in (
            ("metadata_dropout", metadata_dropout),
            ("metadata_field_dropout", metadata_field_dropout),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {value!r}")
        self.use_metadata = use_metadata
        self.metadata_dropout = float(metadata_dropout)
        self.metadata_field_dropout = float(metadata_field_dropout)
        self.split = split
        self.image_processor = image_processor
        self.metadata_parser = RoadworkMetadataParser.from_vocabularies(vocabularies or {})
        if augmentation is None or isinstance(augmentation, str):
            built = build_augmentation(augmentation or "none")
            if isinstance(built, RoadworkValidatorTransform):
                raise ValueError("augmentation='validator' acts on the whole image: pass it as image_transform")
            augmentation = built
        self.augmenter: RoadworkViewAugmenter | None = augmentation
        if isinstance(image_transform, str):
            if image_transform != "validator":
                raise ValueError(f"image_transform must be a callable or 'validator', got {image_transform!r}")
            image_transform = RoadworkValidatorTransform()
        self.image_transform = image_transform
        self.seed = seed
        self.epoch = 0
        column_names = getattr(split, "column_names", None)
        if with_seg_masks is None:
            if column_names is not None:
                with_seg_masks = SEG_MASKS_COLUMN in column_names
            else:
                with_seg_masks = len(split) > 0 and SEG_MASKS_COLUMN in split[0]
        self.with_seg_masks = with_seg_masks
        self.num_seg_classes = num_seg_classes
        self.corrupt_ids: set[str] = set()
        self.num_corrupt = 0
        if scan_metadata_on_init:
            # One line for the whole split now, instead of a line per bad row later (and per worker).
            scan_metadata(split, self.metadata_parser).log_summary()

    @property
    def report(self) -> RoadworkParseReport:
        """Counts of metadata problems seen so far (in this process)."""
        return self.metadata_parser.report

    def set_epoch(self, epoch: int) -> None:
        """Changes the augmentation draws of a seeded dataset.

        accelerate's data loaders call it at each epoch. DataLoader workers hold copies of the dataset, so with
        ``persistent_workers=True`` the new epoch does not reach them: leave persistent workers off.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, draw = decode_draw(index, len(self.split))
        try:
            row = self.split[index]
        except Exception as error:  # noqa: BLE001 - `datasets` decoding an image itself (decode=True)
            return self._corrupt({"id": f"index-{index}"}, index, error)
        return self.build_example(row, index, draw)

    def build_example(self, row: Mapping[str, Any], index: int = 0, draw: int = 0) -> dict[str, Any]:
        """One example from one raw row, its `draw`-th draw in the epoch (see the class docstring for its keys)."""
        row_id = row.get(ID_COLUMN)
        row_id = str(row_id) if row_id is not None else f"index-{index}"
        example: dict[str, Any] = {"id": row_id}
        label = row.get(LABEL_COLUMN)
        if label is not None:
            example["labels"] = int(label)

        masks, coverage = None, None
        if row.get(VIEW_FEATURES_COLUMN) is not None:
            example["view_features"] = torch.as_tensor(np.asarray(row[VIEW_FEATURES_COLUMN]), dtype=torch.float32)
            if row.get(VIEW_COVERAGE_COLUMN) is not None:  # cached beside the features
                coverage = np.asarray(row[VIEW_COVERAGE_COLUMN], dtype=np.float32)
        else:
            try:
                image, transformed = self._prepare_image(row.get(IMAGE_COLUMN), index, draw)
                views, boxes = self.image_processor.extract_views(image, return_boxes=True)  # (V, S, S, 3) uint8
            except Exception as error:  # noqa: BLE001 - any undecodable image must not end a long run
                return self._corrupt(example, index, error)
            masks, coverage = self._frame_masks(row, transformed, boxes)
            if self.augmenter is not None and self.augmenter.enabled:
                seed = example_seed(self.seed, self.epoch, index, SEED_STREAM_VIEWS, draw)
                if masks is not None:
                    views, masks = self._augment_with_masks(views, masks, seed)
                else:
                    views = self.augmenter.augment_views(list(views), seed=seed)
            # Without augmentation this is exactly the serving path: processor(image)["pixel_values"][0].
            example["pixel_values"] = self.image_processor.normalize(views)  # (V, 3, S, S) float32
        if self.with_seg_masks:
            example["seg_masks"] = masks
        if self.with_seg_masks or VIEW_COVERAGE_COLUMN in row:  # None: this row has no masks
            example[VIEW_COVERAGE_COLUMN] = coverage

        example.update(self._metadata(row, index, draw))
        if row.get(TEXT_EMBEDS_COLUMN) is not None:
            text_embeds = torch.as_tensor(np.asarray(row[TEXT_EMBEDS_COLUMN]), dtype=torch.float32)
            # A description dropped here (metadata dropout, no_metadata) takes its cached embedding with it: a zero
            # row, as the collator gives a missing description.
            dropped = example["description"] is None and clean_description(row.get(DESCRIPTION_COLUMN)) is not None
            example["text_embeds"] = torch.zeros_like(text_embeds) if dropped else text_embeds
        return example

    def _metadata(self, row: Mapping[str, Any], index: int, draw: int) -> dict[str, Any]:
        """The row's encoded metadata, all missing without `use_metadata`, else after the seeded dropout."""
        encoded = self.metadata_parser(row)
        if not self.use_metadata:
            return drop_metadata_fields(encoded)
        if self.metadata_dropout == 0.0 and self.metadata_field_dropout == 0.0:
            return encoded
        rng = np.random.default_rng(example_seed(self.seed, self.epoch, index, SEED_STREAM_METADATA, draw))
        if rng.random() < self.metadata_dropout:
            return drop_metadata_fields(encoded)
        dropped = [name for name in METADATA_FIELDS if rng.random() < self.metadata_field_dropout]
        return drop_metadata_fields(encoded, dropped)

    def _prepare_image(self, cell: Any, index: int, draw: int = 0) -> tuple[Any, bool]:
        """
        -> (what the processor cuts views from, whether the whole-image transform changed its geometry): the raw
        cell, or the decoded image after the transform. A transform that draws whether to act (the validator
        transform with `probability` < 1) answers `applies(seed)` first: a row it leaves whole is not decoded here.
        """
        if cell is None:
            raise ValueError("the row has no image")
        raw = dict(cell) if isinstance(cell, Mapping) else cell
        if self.image_transform is None:
            return raw, False
        seed = example_seed(self.seed, self.epoch, index, SEED_STREAM_TRANSFORM, draw)
        applies = getattr(self.image_transform, "applies", None)
        if applies is not None and not applies(seed):
            return raw, False  # left whole, not even decoded here: exactly the untransformed example
        return self.image_transform(self.image_processor.load_image(raw), seed=seed), True

    def _frame_masks(self, row: Mapping[str, Any], transformed: bool, boxes) -> tuple[Any, Any]:
        """
        The row's masks in the frame the views were cut from, and each view's roadwork coverage (`view_coverage`);
        (None, None) without masks. A whole-image transform that can move masks (`warp_masks`, the validators'
        challenge) takes them along; any other transform drops them.
        """
        masks = self._masks(row)
        if masks is None:
            return None, None
        image_size = (boxes[0][2], boxes[0][3])  # view 0 is the whole image the views were cut from
        union = masks.max(axis=0)  # (h, w): any roadwork class
        if transformed:
            warp = getattr(self.image_transform, "warp_masks", None)
            if warp is None:
                return None, None
            union = warp(union[None], size=image_size[0])[0]
            masks = warp(masks, size=masks.shape[-1])
        return masks, view_coverage(union, image_size, boxes)

    def _masks(self, row: Mapping[str, Any]) -> np.ndarray | None:
        if not self.with_seg_masks:
            return None
        try:
            return decode_seg_masks(row.get(SEG_MASKS_COLUMN), self.num_seg_classes)
        except ValueError as error:
            self.report.add("seg_masks_malformed", str(error))
            return None

    def _augment_with_masks(self, views: np.ndarray, masks: np.ndarray, seed: int | None):
        """Augments the views; the masks take view 0's geometric transform at view resolution."""
        k, h, w = masks.shape
        size = views.shape[1]
        upsampled = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in masks])
        views, upsampled = self.augmenter.augment_views(list(views), seed=seed, masks=upsampled)
        masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) for m in upsampled]).astype(np.float32)
        return views, np.clip(masks, 0.0, 1.0)

    def _corrupt(self, example: dict[str, Any], index: int, error: Exception) -> dict[str, Any]:
        self.num_corrupt += 1
        row_id = example["id"]
        if row_id not in self.corrupt_ids:
            self.corrupt_ids.add(row_id)
            logger.warning(
                "Skipping row %s (index %d): its image does not decode (%s). The collator drops it; "
                "%d corrupt row(s) so far in this process.",
                row_id,
                index,
                error,
                len(self.corrupt_ids),
            )
        example["corrupt"] = True
        return example


# --- collator -------------------------------------------------------------------------------------------------


@dataclass
class RoadworkDataCollator:
    """Stacks [`RoadworkDataset`] examples into the model's forward arguments.

    Args:
        text_embedder (`Callable[[list[str | None]], torch.Tensor]`, *optional*): maps B descriptions to
            (B, text_embed_dim) float, zero rows for `None` (e.g. `RoadworkTextEmbedder`). Without one, and
            without ``text_embeds`` cached in the examples, ``text_embeds`` is all zeros ("no description").
        text_embed_dim (`int`, *optional*, defaults to `RoadworkConfig`'s ``text_embed_dim``, 384): width of the
            zero ``text_embeds``.
        seg_mask_size (`int`, *optional*): side the masks are resized to; defaults to the first mask's size
            in the batch (`RoadworkConfig`'s default ``seg_resolution``, 32, when no row of the batch has one).
        include_text_embeds (`bool`, *optional*, defaults to `True`): emit ``text_embeds``.

    Returns (from ``__call__``): a dict with a subset of [`FORWARD_KEYS`]: ``pixel_values`` (B, V, 3, S, S)
    float32 or ``view_features`` (B, V, D) float32; ``gps`` (B, 2) float32; ``weather_ids``, ``daytime_ids``,
    ``scene_ids``, ``weather_labels`` (B,) int64; ``text_embeds`` (B, 384) float32; ``labels`` (B,) int64 when
    every example has one; ``seg_masks`` (B, 6, H, W) float32 and ``seg_mask_valid`` (B,) bool when the
    examples carry the key; ``view_coverage`` (B, V) float32 (NaN rows where an example has no masks) when any
    example has it.
    """

    text_embedder: Callable[[list[str | None]], torch.Tensor] | None = None
    text_embed_dim: int = TEXT_EMBED_DIM
    seg_mask_size: int | None = None
    include_text_embeds: bool = True
    num_dropped: int = field(default=0, init=False)
    _last_good: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        good = [e for e in examples if not e.get("corrupt", False)]
        dropped = len(examples) - len(good)
        if dropped:
            self.num_dropped += dropped
            ids = [e.get("id") for e in examples if e.get("corrupt", False)]
            logger.warning(
                "Dropped %d example(s) with corrupt images from a batch: %s (%d so far)",
                dropped,
                ids,
                self.num_dropped,
            )
        if not good:
            if self._last_good is None:
                raise RuntimeError(
                    f"Every example of the batch has a corrupt image ({[e.get('id') for e in examples]}) "
                    "and no earlier good example can stand in"
                )
            logger.warning("Refilling an emptied batch with the last good example (%s)", self._last_good.get("id"))
            good = [self._last_good]
        else:
            self._last_good = copy.copy(good[-1])
        batch_size = len(good)

        batch: dict[str, torch.Tensor] = {}
        if all(e.get("view_features") is not None for e in good):
            batch["view_features"] = torch.stack(
                [torch.as_tensor(e["view_features"], dtype=torch.float32) for e in good]
            )
        else:
            missing = [e.get("id") for e in good if e.get("pixel_values") is None]
            if missing:
                raise ValueError(
                    f"examples {missing} have neither pixel_values nor view_features "
                    "(mixing cached and live examples?)"
                )
            batch["pixel_values"] = torch.stack(
                [torch.as_tensor(e["pixel_values"], dtype=torch.float32) for e in good]
            )

        batch.update(collate_metadata(good))

        if self.include_text_embeds:
            batch["text_embeds"] = self._text_embeds(good, batch_size)

        if all("labels" in e for e in good):
            batch["labels"] = torch.tensor([int(e["labels"]) for e in good], dtype=torch.long)

        if any("seg_masks" in e for e in good):
            batch["seg_masks"], batch["seg_mask_valid"] = self._seg_masks(good)
        coverage = self._view_coverage(good)
        if coverage is not None:
            batch[VIEW_COVERAGE_COLUMN] = coverage
        return batch

    @staticmethod
    def _view_coverage(examples: Sequence[Mapping[str, Any]]) -> torch.Tensor | None:
        """(B, V) float32 roadwork coverage of every view, NaN rows for examples without masks; None if none has."""
        present = [e.get(VIEW_COVERAGE_COLUMN) for e in examples]
        known = [np.asarray(c, dtype=np.float32) for c in present if c is not None]
        if not known:
            return None
        out = torch.full((len(examples), known[0].shape[-1]), float("nan"), dtype=torch.float32)
        for i, value in enumerate(present):
            if value is not None:
                out[i] = torch.as_tensor(np.asarray(value, dtype=np.float32))
        return out

    def _text_embeds(self, examples: Sequence[Mapping[str, Any]], batch_size: int) -> torch.Tensor:
        if all(e.get("text_embeds") is not None for e in examples):
            return torch.stack([torch.as_tensor(e["text_embeds"], dtype=torch.float32) for e in examples])
        if self.text_embedder is None:
            return torch.zeros(batch_size, self.text_embed_dim, dtype=torch.float32)
        embeds = torch.as_tensor(self.text_embedder([e.get("description") for e in examples])).float()
        if embeds.shape != (batch_size, self.text_embed_dim):
            raise ValueError(
                f"text_embedder returned {tuple(embeds.shape)}, expected ({batch_size}, {self.text_embed_dim})"
            )
        return embeds

    def _seg_masks(self, examples: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        masks = [e.get("seg_masks") for e in examples]
        present = [m for m in masks if m is not None]
        num_classes = int(np.asarray(present[0]).shape[0]) if present else len(DEFAULT_SEG_CLASSES)
        if self.seg_mask_size is not None:
            size = (self.seg_mask_size, self.seg_mask_size)
        elif present:
            size = tuple(np.asarray(present[0]).shape[-2:])
        else:
            size = (SEG_MASK_SIZE, SEG_MASK_SIZE)
        out = torch.zeros(len(masks), num_classes, *size, dtype=torch.float32)
        valid = torch.zeros(len(masks), dtype=torch.bool)
        for i, mask in enumerate(masks):
            if mask is None:
                continue
            tensor = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
            if tuple(tensor.shape[-2:]) != size:
                # (K, h, w) -> (1, K, h, w) for interpolate -> (K, H, W)
                tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
            out[i] = tensor.clamp_(0.0, 1.0)
            valid[i] = True
        return out, valid


__all__ = [
    "FORWARD_KEYS",
    "RoadworkDataCollator",
    "RoadworkDataset",
    "SEED_STREAM_METADATA",
    "SEED_STREAM_TRANSFORM",
    "SEED_STREAM_VIEWS",
    "decode_draw",
    "encode_draw",
    "example_seed",
]
