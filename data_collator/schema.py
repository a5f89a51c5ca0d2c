"""Reading rows of the `natix-network-org/roadwork` schema.

Columns (the names contain dots): ``image`` (HF Image struct ``{bytes, path}``), ``label`` (0 None / 1
Roadwork), ``id``, ``width``, ``height``, ``license``, ``date_captured`` (int), ``gps`` (``"[lat, lon]"``
string), ``city_name``, ``scene_description``, ``scene_level_tags.daytime``,
``scene_level_tags.scene_environment``, ``scene_level_tags.weather`` and
``scene_level_tags.travel_alteration`` (list reprs), ``video_info.*``. Our synthetic data adds an optional
``seg_masks`` column (see [`decode_seg_masks`]).

Images are loaded undecoded (``Image(decode=False)``): rows carry the encoded bytes, and
[`~data_collator.collator.RoadworkDataset`] decodes them itself, so that one corrupt image is caught and
counted per row instead of raising inside `datasets` in the middle of a run.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeling_roadwork.configuration_roadwork import DEFAULT_SEG_CLASSES, RoadworkConfig

from .metadata import (
    DAYTIME_COLUMN,
    DESCRIPTION_COLUMN,
    GPS_COLUMN,
    SCENE_COLUMN,
    WEATHER_COLUMN,
    RoadworkMetadataParser,
    RoadworkParseReport,
    build_vocab,
    clean_description,
    parse_gps,
    parse_tag_list,
)


logger = logging.getLogger(__name__)

ROADWORK_HUB_ID = "natix-network-org/roadwork"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
ID_COLUMN = "id"
SEG_MASKS_COLUMN = "seg_masks"
ROADWORK_COLUMNS = (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    ID_COLUMN,
    "width",
    "height",
    "license",
    "date_captured",
    GPS_COLUMN,
    "city_name",
    DESCRIPTION_COLUMN,
    DAYTIME_COLUMN,
    SCENE_COLUMN,
    WEATHER_COLUMN,
    "scene_level_tags.travel_alteration",
)

# Sizes the data side shares with the model, read from RoadworkConfig's defaults so that each is defined once:
# the side of the pseudo masks (`seg_resolution`) and the width of the text embeddings (`text_embed_dim`).
_MODEL_DEFAULTS = inspect.signature(RoadworkConfig.__init__).parameters
SEG_MASK_SIZE: int = _MODEL_DEFAULTS["seg_resolution"].default
TEXT_EMBED_DIM: int = _MODEL_DEFAULTS["text_embed_dim"].default

_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)(?:[-_.]\d+)?(?:-of-\d+)?(?:-[0-9a-f]+)?\.parquet$")


# --- loading --------------------------------------------------------------------------------------------------


def find_parquet_splits(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parquet shards of a local dataset folder by split: ``{"train": [...data/train-00000-of-00002.parquet, ...]}``.

    Looks in ``path/data`` (the Hub layout) and then in ``path`` itself; the split is the file-name prefix
    before the shard number.
    """
    root = Path(path)
    for folder in (root / "data", root):
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        splits: dict[str, list[str]] = {}
        for file in files:
            match = _SHARD_NAME.match(file.name)
            split = match.group("split") if match else file.stem.split("-")[0]
            splits.setdefault(split, []).append(str(file))
        if splits:
            order = {"train": 0, "validation": 1, "test": 2}
            return {k: splits[k] for k in sorted(splits, key=lambda k: (order.get(k, 3), k))}
    return {}


def load_roadwork_splits(
    source: str | os.PathLike | None = None,
    *,
    splits: Sequence[str] | None = None,
    cache_dir: str | None = None,
    decode_images: bool = False,
    consistency_filter: bool = False,
    consistency_rule: str = "validator",
    revision: str | None = None,
    token: str | bool | None = None,
    streaming: bool = False,
):
    """Loads the roadwork splits as a `datasets.DatasetDict`.

    Args:
        source (`str` or `os.PathLike`, *optional*, defaults to ``"natix-network-org/roadwork"``):
            a Hub dataset id, or a local folder with ``data/{split}-*.parquet`` shards (the Hub layout), such as
            the synthetic dataset of [`~data_collator.synthetic.ensure_synthetic_dataset`].
        splits (`Sequence[str]`, *optional*): keep only these splits.
        cache_dir (`str`, *optional*): `datasets` cache folder.
        decode_images (`bool`, *optional*, defaults to `False`): keep `datasets`' own image decoding. Off by
            default so that [`~data_collator.collator.RoadworkDataset`] decodes (and survives corrupt images).
        consistency_filter (`bool`, *optional*, defaults to `False`): drop rows whose description and label
            disagree, as the validators do (see [`filter_consistent_rows`]); the counts are logged.
        consistency_rule (`str`, *optional*, defaults to ``"validator"``): see [`filter_consistent_rows`].
        revision, token: passed to `datasets.load_dataset` for Hub sources.
        streaming (`bool`, *optional*, defaults to `False`): stream instead of downloading (Hub sources).

    Returns:
        `datasets.DatasetDict` (or `IterableDatasetDict` when streaming).
    """
    import datasets

    source = ROADWORK_HUB_ID if source is None else source
    local = Path(source)
    if local.exists():
        data_files = find_parquet_splits(local)
        if not data_files:
            raise FileNotFoundError(f"No Parquet shards under {local} or {local / 'data'}")
        if splits is not None:
            missing = [s for s in splits if s not in data_files]
            if missing:
                raise ValueError(f"splits {missing} not found in {local}; found {sorted(data_files)}")
            data_files = {s: data_files[s] for s in splits}
        dataset = datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir, streaming=streaming)
    else:
        # The real path: needs network access (and `datasets` caches it under cache_dir afterwards).
        dataset = datasets.load_dataset(
            str(source), cache_dir=cache_dir, revision=revision, token=token, streaming=streaming
        )
        if splits is not None:
            dataset = type(dataset)({s: dataset[s] for s in splits})

    for name in list(dataset):
        split = dataset[name]
        features = getattr(split, "features", None) or {}
        if IMAGE_COLUMN in features:
            split = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=decode_images))
        if consistency_filter and streaming:
            # A stream has no length: filter lazily; the counts are unknown until it is read.
            split = split.filter(lambda row: is_consistent_row(row, consistency_rule))
            logger.info("%s split: consistency filter (%s rule) applied lazily to a stream", name, consistency_rule)
        elif consistency_filter:
            split, report = filter_consistent_rows(split, rule=consistency_rule)
            logger.info("%s split: %s", name, report.summary())
        dataset[name] = split
    return dataset


# --- columns --------------------------------------------------------------------------------------------------


def get_column(split: Any, name: str) -> list[Any]:
    """A column as a list, from a `datasets.Dataset`, a dict of columns, a pandas DataFrame or a list of rows.

    A missing column gives a list of `None`.
    """
    if isinstance(split, Mapping):
        values = split.get(name)
        if values is None:
            lengths = [len(v) for v in split.values()]
            return [None] * (lengths[0] if lengths else 0)
        return list(values)
    if isinstance(split, (list, tuple)):
        return [row.get(name) if isinstance(row, Mapping) else None for row in split]
    column_names = getattr(split, "column_names", None)
    if column_names is None and hasattr(split, "columns"):  # pandas
        column_names = list(split.columns)
    if column_names is not None and name not in column_names:
        return [None] * len(split)
    values = split[name]
    return values.tolist() if hasattr(values, "tolist") else list(values)


def build_vocabularies(train_split: Any, min_count: int = 1) -> dict[str, list[str]]:
    """Vocabularies for the config from the training split (never from the test split).

    Weather counts every tag of the list strings (``"['Cloudy', 'Rainy']"`` counts both); daytime and scene
    environment count single values. Each is sorted by frequency, then name (deterministic).

    Returns:
        `dict`: ``weather_vocab``, ``daytime_vocab``, ``scene_vocab``, lists of normalised strings.
    """
    report = RoadworkParseReport("roadwork vocabulary")
    weather = [parse_tag_list(v, report=report) for v in get_column(train_split, WEATHER_COLUMN)]
    vocabularies = {
        "weather_vocab": build_vocab(weather, min_count=min_count),
        "daytime_vocab": build_vocab(get_column(train_split, DAYTIME_COLUMN), min_count=min_count),
        "scene_vocab": build_vocab(get_column(train_split, SCENE_COLUMN), min_count=min_count),
    }
    if report.counts:
        report.log_summary()
    return vocabularies


def gps_array(split: Any, report: RoadworkParseReport | None = None) -> np.ndarray:
    """``(N, 2)`` float64 (lat, lon) of every row, NaN where the GPS is missing or unusable (for GPS weighting)."""
    values = get_column(split, GPS_COLUMN)
    out = np.full((len(values), 2), np.nan, dtype=np.float64)
    for i, value in enumerate(values):
        latlon = parse_gps(value, report=report)
        if latlon is not None:
            out[i] = latlon
    return out


def scan_metadata(split: Any, vocabularies: Any = None, name: str = "roadwork metadata") -> RoadworkParseReport:
    """Parses every row's metadata (no images) and returns the counts of problems, for a one-line summary.

    Reads only the metadata columns, so it is cheap even on the full dataset (~0.1 s for 8.5k rows).
    """
    report = RoadworkParseReport(name)
    if isinstance(vocabularies, RoadworkMetadataParser):  # its vocabularies, but counts of our own
        vocabularies = {
            "weather_vocab": vocabularies.weather_vocab,
            "daytime_vocab": vocabularies.daytime_vocab,
            "scene_vocab": vocabularies.scene_vocab,
        }
    parser = RoadworkMetadataParser.from_vocabularies(vocabularies or {}, report=report)
    columns = {c: get_column(split, c) for c in (GPS_COLUMN, WEATHER_COLUMN, DAYTIME_COLUMN, SCENE_COLUMN)}
    for values in zip(*columns.values()):
        parser(dict(zip(columns, values)))
    return report


def labels_array(split: Any) -> np.ndarray:
    """``(N,)`` int64 labels (-1 where absent)."""
    return np.array([-1 if v is None else int(v) for v in get_column(split, LABEL_COLUMN)], dtype=np.int64)


# --- the validators' description / label consistency rule -----------------------------------------------------

CONSISTENCY_RULES = ("validator", "clean")


def _has_description(value: Any, rule: str) -> bool:
    if rule == "clean":
        return clean_description(value) is not None
    # "validator": Python truthiness of the raw value, as the subnet's cache sampler tests it. A non-empty
    # string counts, the literal "No Description" included. NaN (a pandas artefact of a null) counts as absent.
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


@dataclass
class RoadworkConsistencyReport:
    """Counts of [`filter_consistent_rows`]."""

    total: int
    kept: int
    described_but_none: int  # description present, label 0
    undescribed_but_roadwork: int  # no description, label 1
    rule: str = "validator"

    @property
    def dropped(self) -> int:
        return self.described_but_none + self.undescribed_but_roadwork

    def summary(self) -> str:
        return (
            f"consistency filter ({self.rule} rule): kept {self.kept}/{self.total}, dropped {self.dropped} "
            f"({self.described_but_none} described but label 0, "
            f"{self.undescribed_but_roadwork} undescribed but label 1)"
        )


def is_consistent_row(row: Mapping[str, Any], rule: str = "validator") -> bool:
    """Whether the validators would use this row (see [`filter_consistent_rows`])."""
    if rule not in CONSISTENCY_RULES:
        raise ValueError(f"rule must be one of {CONSISTENCY_RULES}, got {rule!r}")
    has = _has_description(row.get(DESCRIPTION_COLUMN), rule)
    label = row.get(LABEL_COLUMN)
    return not ((has and label == 0) or (not has and label == 1))


def consistent_mask(split: Any, rule: str = "validator") -> tuple[np.ndarray, RoadworkConsistencyReport]:
    """Boolean ``(N,)`` mask of rows the validators would use, and the counts."""
    if rule not in CONSISTENCY_RULES:
        raise ValueError(f"rule must be one of {CONSISTENCY_RULES}, got {rule!r}")
    descriptions = get_column(split, DESCRIPTION_COLUMN)
    labels = get_column(split, LABEL_COLUMN)
    has = np.array([_has_description(d, rule) for d in descriptions], dtype=bool)
    label = np.array([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    described_none = has & (label == 0)
    undescribed_roadwork = ~has & (label == 1)
    keep = ~(described_none | undescribed_roadwork)
    report = RoadworkConsistencyReport(
        total=len(keep),
        kept=int(keep.sum()),
        described_but_none=int(described_none.sum()),
        undescribed_but_roadwork=int(undescribed_roadwork.sum()),
        rule=rule,
    )
    return keep, report


def filter_consistent_rows(split: Any, rule: str = "validator") -> tuple[Any, RoadworkConsistencyReport]:
    """Drops rows whose description and label disagree, as the StreetVision validators skip them.

    A row is dropped when it has a description but label 0, or no description but label 1. With
    ``rule="validator"`` "has a description" is the raw value's truthiness, exactly as the validator's cache
    sampler tests it (so the literal ``"No Description"`` counts as a description); with ``rule="clean"``
    it is [`clean_description`] not being `None`.

    Args:
        split: a `datasets.Dataset` (filtered with `select`, no rewrite), a list of rows or a dict of columns.
        rule (`str`, *optional*, defaults to ``"validator"``): ``"validator"`` or ``"clean"``.

    Returns:
        `(filtered split, RoadworkConsistencyReport)`
    """
    keep, report = consistent_mask(split, rule=rule)
    indices = np.flatnonzero(keep)
    if hasattr(split, "select"):
        filtered = split.select(indices.tolist())
    elif isinstance(split, Mapping):
        filtered = {k: [v[i] for i in indices] for k, v in split.items()}
    else:
        filtered = [split[i] for i in indices]
    return filtered, report


# --- cells ----------------------------------------------------------------------------------------------------


def encode_seg_masks(masks: np.ndarray) -> bytes:
    """``(K, S, S)`` masks in [0, 1] (float) or 0..255 (uint8) -> ``K * S * S`` bytes (uint8 coverage, row-major)."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be (K, S, S), got {masks.shape}")
    if masks.dtype != np.uint8:
        masks = np.clip(np.rint(masks.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return masks.tobytes()


def decode_seg_masks(value: Any, num_classes: int = len(DEFAULT_SEG_CLASSES)) -> np.ndarray | None:
    """A ``seg_masks`` cell -> ``(K, H, W)`` float32 in [0, 1], or `None` if the row has no mask.

    Accepts the bytes of [`encode_seg_masks`] (``K * S * S`` uint8 values, square masks), or an array-like
    ``(K, H, W)`` (uint8 read as 0..255, bool as 0/1, floats as given and clipped to [0, 1]).
    Malformed cells raise `ValueError`.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = np.frombuffer(bytes(value), dtype=np.uint8)
        if data.size == 0:
            return None
        side = math.isqrt(data.size // num_classes)
        if side * side * num_classes != data.size:
            raise ValueError(f"seg_masks bytes of length {data.size} are not {num_classes} square masks")
        return data.reshape(num_classes, side, side).astype(np.float32) / 255.0
    array = np.asarray(value)
    if array.dtype == object:  # nested lists of unequal depth, e.g. from a list column
        array = np.asarray(array.tolist())
    if array.ndim != 3 or array.shape[0] != num_classes:
        raise ValueError(f"seg_masks must be ({num_classes}, H, W), got {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


__all__ = [
    "CONSISTENCY_RULES",
    "ID_COLUMN",
    "IMAGE_COLUMN",
    "LABEL_COLUMN",
    "ROADWORK_COLUMNS",
    "ROADWORK_HUB_ID",
    "SEG_MASKS_COLUMN",
    "SEG_MASK_SIZE",
    "TEXT_EMBED_DIM",
    "RoadworkConsistencyReport",
    "build_vocabularies",
    "consistent_mask",
    "decode_seg_masks",
    "encode_seg_masks",
    "filter_consistent_rows",
    "find_parquet_splits",
    "get_column",
    "gps_array",
    "is_consistent_row",
    "labels_array",
    "load_roadwork_splits",
    "scan_metadata",
]
