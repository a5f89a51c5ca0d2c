"""The frozen-backbone feature cache: run the backbone once per image and augmentation pass, train heads from disk.

The backbone is frozen and holds almost all of the compute, so its per-view pooled features (B, V, D) are extracted
once per *pass* and stored in fp16 in a `datasets` Arrow dataset; the head then trains from `view_features`
(the model's cached path) in seconds per epoch.

A pass is one deterministic run over a split: `train0`, `train1`, ... (the training augmentation exactly as live
training draws it in epochs 0, 1, ...), `clean` (no augmentation: the `no_metadata` and `metadata` evaluation
conditions) and `serving` (the validators' challenge transform, seeded as `condition_datasets` seeds it). Each pass
lives in its own folder named by a hash of everything its features depend on: the backbone weights, the view and
processor settings, the pass (augmentation settings, transform, seed, epoch), the rows (ids and labels), the
images' content (`images_fingerprint`: an image replaced under the same id is extracted again) and the storage dtype. A
second run with the same key reuses it; a changed key builds a new folder. Extraction writes shards of
`shard_size` images (atomically, by renaming a finished folder), so an interrupted run resumes at the first missing
shard; `info.json` marks a complete pass. Under `accelerate launch` the shards are strided across processes
(`shards_for_process`) and the main process writes `info.json` once every shard exists.

Cached rows keep every column of the split except the image (and masks), plus `row` (index in the split), `pass`,
`has_features` (False for an image that did not decode: it stays a dropped example, as in live training) and
`view_features` (V, D). [`RoadworkCachedDataset`] reads them through `RoadworkDataset`, so metadata parsing,
metadata dropout and the evaluation conditions work as in live training, and cycles the passes across epochs.
Segmentation masks are not cached: training from the cache skips the segmentation loss. A split with a `seg_masks`
column stores, instead, each view's roadwork coverage in this pass's geometry (`view_coverage` (V,), None for a row
without masks), which the per-view detector learns from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from data_collator import (
    RoadworkAugmentationConfig,
    RoadworkDataset,
    RoadworkValidatorTransform,
    RoadworkViewAugmenter,
)
from data_collator.collator import VIEW_FEATURES_COLUMN
from data_collator.schema import ID_COLUMN, IMAGE_COLUMN, LABEL_COLUMN, SEG_MASKS_COLUMN, get_column
from data_collator.view_coverage import VIEW_COVERAGE_COLUMN

from .metrics import CONDITIONS


logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
INFO_FILE = "info.json"
KEY_FILE = "key.json"
STORAGE_DTYPES = ("float16", "float32")
# Columns the cache adds to the split's own.
ROW_COLUMN, PASS_COLUMN, HAS_FEATURES_COLUMN = "row", "pass", "has_features"


@dataclass
class FeatureCacheArguments:
    feature_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the frozen-backbone feature cache. Given, the backbone runs once per image and pass "
            "(extracting what is missing) and the head trains from the stored features; a second run reuses them."
        },
    )
    feature_cache_passes: int = field(
        default=1,
        metadata={
            "help": "Augmentation passes of the train split to extract; epoch e trains on pass e %% K. Pass k holds "
            "exactly the augmentation live training draws in epoch k. Without augmentation one pass is used."
        },
    )
    feature_cache_batch_size: int = field(default=8, metadata={"help": "Images per backbone batch during extraction."})
    feature_cache_num_workers: int = field(
        default=0, metadata={"help": "DataLoader workers decoding and cutting views during extraction."}
    )
    feature_cache_shard_size: int = field(
        default=256, metadata={"help": "Images per shard; an interrupted extraction resumes at the first missing one."}
    )
    feature_cache_dtype: str = field(
        default="float16", metadata={"help": "Storage dtype of the features: float16 (half the disk) or float32."}
    )

    def __post_init__(self):
        if self.feature_cache_passes < 1:
            raise ValueError(f"feature_cache_passes must be >= 1, got {self.feature_cache_passes}")
        if self.feature_cache_shard_size < 1 or self.feature_cache_batch_size < 1:
            raise ValueError("feature_cache_shard_size and feature_cache_batch_size must be >= 1")
        if self.feature_cache_dtype not in STORAGE_DTYPES:
            raise ValueError(f"feature_cache_dtype must be one of {STORAGE_DTYPES}, got {self.feature_cache_dtype!r}")


# --- keys -----------------------------------------------------------------------------------------------------


def _roadwork_base(model):
    """The `RoadworkModel` (backbone + vision head) of a classification model, or the model itself."""
    return getattr(model, "roadwork", model)


def backbone_fingerprint(model) -> str:
    """sha256 over the backbone's state dict (names, dtypes, shapes, bytes): two models share features iff equal.
    The project's one backbone fingerprint: cache keys, `RoadworkSharedBackbone` and predict.py's backbone groups."""
    backbone = _roadwork_base(model).backbone
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BatchNorm counters) have no byte view
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def processor_settings(image_processor) -> dict:
    """Everything of the image processor that changes the pixels the backbone sees."""
    p = image_processor
    return {
        "view_size": p.view_size, "tile_grid": p.tile_grid, "tile_overlap": p.tile_overlap,
        "image_mean": [float(v) for v in p.image_mean], "image_std": [float(v) for v in p.image_std],
        "resample": int(p.resample), "do_normalize": p.do_normalize, "fast_decode": p.fast_decode,
    }  # fmt: skip


def rows_fingerprint(split) -> str:
    """Which rows a split holds: its ids and labels (the dataset fingerprint where there are no ids)."""
    ids = get_column(split, ID_COLUMN)
    if all(value is None for value in ids):
        fingerprint = getattr(split, "_fingerprint", None)
        if fingerprint is None:
            raise ValueError("the split has no `id` column and no datasets fingerprint: the cache cannot key its rows")
        return f"fingerprint:{fingerprint}"
    payload = json.dumps([ids, get_column(split, LABEL_COLUMN)], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _image_digest(value: Any) -> bytes:
    """The content of one image cell, hashed: encoded bytes, a file's bytes, or a decoded image's pixels."""
    if value is None:
        return b"none"
    if isinstance(value, Mapping):  # datasets' undecoded Image cell: {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return hashlib.sha256(value["bytes"]).digest()
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).digest()
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        return hashlib.sha256(path.read_bytes()).digest() if path.is_file() else f"path:{value}".encode()
    if hasattr(value, "tobytes") and hasattr(value, "mode"):  # a decoded PIL image
        return hashlib.sha256(f"{value.mode}{value.size}".encode() + value.tobytes()).digest()
    if isinstance(value, np.ndarray):
        return hashlib.sha256(str(value.shape).encode() + value.tobytes()).digest()
    return f"{type(value).__name__}:{value!r}".encode()


_IMAGES_FINGERPRINTS: dict[tuple[int, str], str] = {}


def images_fingerprint(split) -> str:
    """
    A hash of every image of the split, in row order (encoded bytes where the split holds them, so nothing is
    decoded): a cache keyed by ids alone would serve the old features of an image replaced under the same id.
    Memoised per `datasets.Dataset` object and fingerprint (Arrow tables do not change in place).
    """
    import datasets

    digest = hashlib.sha256()
    if isinstance(split, datasets.Dataset):
        if IMAGE_COLUMN not in split.column_names:
            return "no-images"
        memo = (id(split), str(getattr(split, "_fingerprint", None)))
        if memo in _IMAGES_FINGERPRINTS:
            return _IMAGES_FINGERPRINTS[memo]
        images = split.select_columns([IMAGE_COLUMN])
        if isinstance(images.features[IMAGE_COLUMN], datasets.Image):
            images = images.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        for batch in images.iter(batch_size=256):
            for value in batch[IMAGE_COLUMN]:
                digest.update(_image_digest(value))
        _IMAGES_FINGERPRINTS[memo] = digest.hexdigest()
        return _IMAGES_FINGERPRINTS[memo]
    for value in get_column(split, IMAGE_COLUMN):
        digest.update(_image_digest(value))
    return digest.hexdigest()


@dataclass(frozen=True)
class CachePass:
    """
    One deterministic run of the backbone over a split. `augmentation` is the augmenter's settings (None: no view
    augmentation); `image_transform` is "validator" or None, applied to a share `transform_probability` of the rows
    (1: all); `seed` and `epoch` seed the draws exactly as `RoadworkDataset(seed=seed)` after `set_epoch(epoch)` does.
    """

    name: str
    augmentation: Mapping[str, Any] | None = None
    image_transform: str | None = None
    seed: int | None = None
    epoch: int = 0
    transform_probability: float = 1.0

    @classmethod
    def training(
        cls, index: int, augmenter: RoadworkViewAugmenter | None, seed: int, serving_augmentation: float = 0.0
    ) -> CachePass:
        """
        Pass `index` of the train split: the augmentation live training draws in epoch `index` (view augmentation,
        and the validators' challenge transform on a share `serving_augmentation` of the rows).
        """
        views = augmenter is not None and augmenter.enabled
        if not views and not serving_augmentation:
            return cls.clean()
        augmentation = dataclasses.asdict(augmenter.config) if views else None
        if not serving_augmentation:
            return cls(f"train{index}", augmentation, None, int(seed), int(index))
        return cls(f"train{index}", augmentation, "validator", int(seed), int(index), float(serving_augmentation))

    @classmethod
    def clean(cls) -> CachePass:
        """No augmentation, no transform: the `no_metadata` and `metadata` conditions."""
        return cls("clean")

    @classmethod
    def serving(cls, seed: int) -> CachePass:
        """The validators' challenge transform, seeded as `condition_datasets(..., seed)` seeds its serving set."""
        return cls("serving", None, "validator", int(seed), 0)

    def dataset(self, split, image_processor) -> RoadworkDataset:
        """The live dataset whose pixels this pass stores (metadata is not read)."""
        augmenter = RoadworkViewAugmenter(self.augmentation_config()) if self.augmentation else "none"
        transform = self.image_transform
        if transform == "validator":
            transform = RoadworkValidatorTransform(probability=self.transform_probability)
        dataset = RoadworkDataset(
            split, image_processor, augmentation=augmenter, image_transform=transform, seed=self.seed,
            with_seg_masks=has_seg_masks(split), scan_metadata_on_init=False, use_metadata=False,
        )  # fmt: skip
        dataset.set_epoch(self.epoch)
        return dataset

    def augmentation_config(self) -> RoadworkAugmentationConfig:
        return RoadworkAugmentationConfig(**self.augmentation)


def cache_key(
    model, image_processor, split, cache_pass: CachePass, dtype: str = "float16", fingerprint: str | None = None,
    pooling: str | None = None,
) -> tuple[str, dict]:
    """
    -> (hex key, the mapping it hashes). `fingerprint` is `backbone_fingerprint(model)` when already known; `pooling`
    keys features pooled otherwise than `config.backbone_pooling` (a probe's).
    """
    config = _roadwork_base(model).config
    described = {
        "format": CACHE_FORMAT_VERSION,
        "backbone": fingerprint or backbone_fingerprint(model),
        "backbone_autocast_dtype": config.backbone_autocast_dtype,
        "num_views": config.num_views,
        "processor": processor_settings(image_processor),
        "pass": dataclasses.asdict(cache_pass),
        "rows": rows_fingerprint(split),
        "images": images_fingerprint(split),
        "num_rows": len(split),
        "dtype": dtype,
    }
    if has_seg_masks(split):  # such passes store view_coverage; keys of mask-free splits stay as they were
        described["view_coverage"] = True
    pooling = pooling or getattr(config, "backbone_pooling", "native")
    if pooling != "native":  # only then, so that caches extracted before the field existed keep their keys
        described["backbone_pooling"] = pooling
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), described


# --- sharding -------------------------------------------------------------------------------------------------


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of consecutive shards of at most `shard_size` rows covering `num_rows`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def shards_for_process(num_shards: int, process_index: int, num_processes: int) -> list[int]:
    """The shards process `process_index` of `num_processes` extracts: rank-strided, every shard exactly once."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
    return list(range(process_index, num_shards, num_processes))


# --- extraction -----------------------------------------------------------------------------------------------


class _IndexedDataset(torch.utils.data.Dataset):
    """(row index, example) for the rows [start, stop) of a live dataset."""

    def __init__(self, dataset: RoadworkDataset, start: int, stop: int):
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        return index, self.dataset[index]


def has_seg_masks(split) -> bool:
    """Whether a split has a `seg_masks` column: its passes then store each view's roadwork coverage."""
    return SEG_MASKS_COLUMN in (getattr(split, "column_names", None) or ())


def _collate_pixels(items):
    """
    -> (row indices, rows whose image did not decode, pixel_values (B, V, 3, S, S) or None, {row: view coverage (V,)
    for rows with masks}).
    """
    good = [(i, e["pixel_values"]) for i, e in items if not e.get("corrupt", False)]
    corrupt = [i for i, e in items if e.get("corrupt", False)]
    pixels = torch.stack([torch.as_tensor(p) for _, p in good]) if good else None
    coverage = {i: e[VIEW_COVERAGE_COLUMN] for i, e in items if e.get(VIEW_COVERAGE_COLUMN) is not None}
    return [i for i, _ in good], corrupt, pixels, coverage


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


class RoadworkFeatureExtractor:
    """
    Runs a roadwork model's frozen backbone over passes of splits and stores the features under `cache_dir`.

    Args:
        model: a `RoadworkForImageClassification` (or `RoadworkModel`); only its backbone runs, on its device, in
            `backbone_autocast_dtype` ("auto": bf16 on CUDA).
        image_processor: the model's `RoadworkImageProcessor` (`from_model_config(model.config)`).
        cache_dir: root folder; each pass of each split goes to `<pass name>-<key[:16]>/`.
        batch_size, num_workers, shard_size, dtype: see [`FeatureCacheArguments`].
        accelerator: an `accelerate.Accelerator` (or `PartialState`) to split shards across processes; None = one.
        progress: show a tqdm bar (images/s) on the main process.
    """

    def __init__(
        self, model, image_processor, cache_dir: str | os.PathLike, *, batch_size: int = 8, num_workers: int = 0,
        shard_size: int = 256, dtype: str = "float16", accelerator=None, progress: bool = True,
    ):  # fmt: skip
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
        self.model = model
        self.image_processor = image_processor
        self.cache_dir = Path(cache_dir).expanduser()
        self.batch_size, self.num_workers, self.shard_size, self.dtype = batch_size, num_workers, shard_size, dtype
        self.accelerator = accelerator
        self.progress = progress
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.model)
        return self._fingerprint

    def pass_dir(self, split, cache_pass: CachePass) -> tuple[Path, dict]:
        key, described = cache_key(self.model, self.image_processor, split, cache_pass, self.dtype, self.fingerprint)
        return self.cache_dir / f"{cache_pass.name}-{key[:16]}", described

    def extract(self, split, cache_pass: CachePass):
        """The features of `split` under `cache_pass` as a `datasets.Dataset` (extracting what is missing)."""
        import datasets

        if not isinstance(split, datasets.Dataset):
            raise TypeError(
                f"the feature cache stores rows of a datasets.Dataset, got {type(split).__name__}; load the data with "
                "data_collator.load_roadwork_splits or datasets.Dataset.from_list"
            )
        directory, described = self.pass_dir(split, cache_pass)
        if (directory / INFO_FILE).is_file():
            info = json.loads((directory / INFO_FILE).read_text())
            logger.info("feature cache: reusing %s (%d rows, %.1f KB per image)", directory, info["rows"],
                        info["bytes_per_image"] / 1024)  # fmt: skip
            return load_pass(directory)
        index, count = self._process()
        ranges = shard_ranges(len(split), self.shard_size)
        mine = [
            s for s in shards_for_process(len(ranges), index, count) if not self._shard_path(directory, s).is_dir()
        ]
        if index == 0:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / KEY_FILE).write_text(json.dumps(described, indent=2, default=str))
        if mine:
            self._extract_shards(split, cache_pass, directory, [(s, *ranges[s]) for s in mine], len(ranges))
        self._wait()
        if index == 0:
            missing = [s for s in range(len(ranges)) if not self._shard_path(directory, s).is_dir()]
            if missing:
                raise RuntimeError(
                    f"feature cache {directory}: shards {missing} were not written; run again to resume"
                )
            size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            info = {"rows": len(split), "shards": len(ranges), "bytes": size,
                    "bytes_per_image": size / max(len(split), 1), "pass": cache_pass.name, "dtype": self.dtype,
                    "created": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            (directory / INFO_FILE).write_text(json.dumps(info, indent=2))
            print(
                f"feature cache {cache_pass.name}: {len(split)} images, {size / 2**20:.1f} MiB on disk, "
                f"{info['bytes_per_image'] / 1024:.1f} KB per image ({self.dtype}) in {directory}",
                flush=True,
            )
        self._wait()
        return load_pass(directory)

    def _process(self) -> tuple[int, int]:
        if self.accelerator is None:
            return 0, 1
        return int(self.accelerator.process_index), int(self.accelerator.num_processes)

    def _wait(self) -> None:
        if self.accelerator is not None and self._process()[1] > 1:
            self.accelerator.wait_for_everyone()

    @staticmethod
    def _shard_path(directory: Path, shard: int) -> Path:
        return directory / f"shard-{shard:05d}"

    def _extract_shards(self, split, cache_pass: CachePass, directory: Path, shards, num_shards: int) -> None:
        live = cache_pass.dataset(split, self.image_processor)
        base = _roadwork_base(self.model)
        device = _model_device(base)
        total = sum(stop - start for _, start, stop in shards)
        show = self.progress and self._process()[0] == 0
        bar = tqdm(total=total, unit="img", desc=f"backbone features ({cache_pass.name})", disable=not show)
        base.eval()
        for shard, start, stop in shards:
            loader = torch.utils.data.DataLoader(
                _IndexedDataset(live, start, stop), batch_size=self.batch_size, num_workers=self.num_workers,
                collate_fn=_collate_pixels, shuffle=False,
            )  # fmt: skip
            features: dict[int, np.ndarray] = {}
            coverage: dict[int, np.ndarray] = {}
            for rows, corrupt, pixels, covered in loader:
                coverage.update(covered)
                if pixels is not None:
                    out = base.extract_view_features(pixels.to(device))  # (B, V, D) float32
                    for row, value in zip(rows, out.cpu().numpy().astype(self.dtype)):
                        features[row] = value
                if corrupt:
                    logger.warning(
                        "feature cache: rows %s have no decodable image; they stay dropped examples", corrupt
                    )
                bar.update(len(rows) + len(corrupt))
            self._write_shard(split, cache_pass, directory, shard, start, stop, features, coverage)
        bar.close()

    def _write_shard(self, split, cache_pass, directory: Path, shard: int, start: int, stop: int, features,
                     coverage: Mapping[int, np.ndarray]) -> None:  # fmt: skip
        import datasets

        config = _roadwork_base(self.model).config
        shape = (config.num_views, config.view_feature_size)
        meta = split.select(range(start, stop))
        stored_elsewhere = (IMAGE_COLUMN, SEG_MASKS_COLUMN, VIEW_FEATURES_COLUMN, VIEW_COVERAGE_COLUMN)
        meta = meta.remove_columns([c for c in stored_elsewhere if c in meta.column_names])
        rows = list(range(start, stop))
        added = datasets.Dataset.from_dict(
            {
                ROW_COLUMN: rows,
                PASS_COLUMN: [cache_pass.name] * len(rows),
                HAS_FEATURES_COLUMN: [row in features for row in rows],
                VIEW_FEATURES_COLUMN: [features.get(row) for row in rows],
            },
            features=datasets.Features({
                ROW_COLUMN: datasets.Value("int64"), PASS_COLUMN: datasets.Value("string"),
                HAS_FEATURES_COLUMN: datasets.Value("bool"),
                VIEW_FEATURES_COLUMN: datasets.Array2D(shape=shape, dtype=self.dtype),
            }),
        )  # fmt: skip
        if has_seg_masks(split):  # None for a row without masks
            added = added.add_column(
                VIEW_COVERAGE_COLUMN,
                [coverage[row].astype(np.float32).tolist() if row in coverage else None for row in rows],
                feature=datasets.Sequence(datasets.Value("float32"), length=config.num_views),
            )  # fmt: skip
        table = datasets.concatenate_datasets([meta, added], axis=1)
        final = self._shard_path(directory, shard)
        tmp = directory / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with _quiet_datasets():
            table.save_to_disk(str(tmp))
        os.replace(tmp, final)  # a shard exists only once it is complete: an interrupted run redoes just this one


class _quiet_datasets:
    """No per-shard `datasets` progress bars inside the extraction bar."""

    def __enter__(self):
        import datasets

        self.enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.enabled:
            datasets.enable_progress_bars()


def load_pass(directory: str | os.PathLike):
    """The rows of one extracted pass, shards concatenated in order."""
    import datasets

    shards = sorted(Path(directory).glob("shard-*"))
    if not shards:
        raise FileNotFoundError(f"{directory} holds no feature shards")
    return datasets.concatenate_datasets([datasets.load_from_disk(str(s)) for s in shards])


# --- datasets over the cache ----------------------------------------------------------------------------------


class CachedSplit:
    """
    The cached rows of one split as a sequence of row dicts for `RoadworkDataset`, over one or more passes with the
    same rows: `select_pass(epoch)` switches to pass `epoch % num_passes`. `keep_views` keeps only those views of
    every row's `view_features` (e.g. `(0,)`: the global view alone).
    """

    def __init__(self, passes: Sequence[Any], keep_views: Sequence[int] | None = None):
        if not passes:
            raise ValueError("CachedSplit needs at least one pass")
        lengths = {len(p) for p in passes}
        if len(lengths) != 1:
            raise ValueError(f"the passes of one split must hold the same rows, got lengths {sorted(lengths)}")
        self.passes = [p.with_format("numpy", columns=[VIEW_FEATURES_COLUMN], output_all_columns=True) for p in passes]
        self.keep_views = list(keep_views) if keep_views is not None else None
        self.pass_index = 0

    @property
    def num_passes(self) -> int:
        return len(self.passes)

    @property
    def column_names(self) -> list[str]:
        return self.passes[0].column_names

    def select_pass(self, epoch: int) -> None:
        self.pass_index = int(epoch) % self.num_passes

    def __len__(self) -> int:
        return len(self.passes[0])

    def __getitem__(self, key):
        if isinstance(key, str):  # a column (`get_column`): metadata is the same in every pass
            return self.passes[0].with_format(None)[key]
        row = dict(self.passes[self.pass_index][int(key)])
        features = row.get(VIEW_FEATURES_COLUMN)
        if not row.get(HAS_FEATURES_COLUMN, True) or features is None:
            row[VIEW_FEATURES_COLUMN] = None  # no decodable image: RoadworkDataset flags it corrupt
        elif self.keep_views is not None:
            row[VIEW_FEATURES_COLUMN] = np.asarray(features)[self.keep_views]
        if self.keep_views is not None and row.get(VIEW_COVERAGE_COLUMN) is not None:
            row[VIEW_COVERAGE_COLUMN] = np.asarray(row[VIEW_COVERAGE_COLUMN])[self.keep_views]
        return row


class RoadworkCachedDataset(RoadworkDataset):
    """`RoadworkDataset` over a [`CachedSplit`]: examples carry `view_features`; `set_epoch(e)` uses pass e % K."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.split.select_pass(epoch)


class RoadworkFeatureCache:
    """
    Datasets for training and evaluation from the cache, extracting passes on first use.

    >>> cache = RoadworkFeatureCache.from_arguments(args, model, image_processor)
    >>> train_dataset = cache.train_dataset(splits["train"], augmenter, seed, metadata_dropout=0.5)
    >>> eval_dataset = cache.condition_datasets(splits["validation"], image_processor, model.config, seed)
    """

    def __init__(
        self, extractor: RoadworkFeatureExtractor, num_passes: int = 1, keep_views: Sequence[int] | None = None
    ):
        self.extractor = extractor
        self.num_passes = int(num_passes)
        self.keep_views = keep_views

    @classmethod
    def from_arguments(cls, args: FeatureCacheArguments, model, image_processor, accelerator=None, **kwargs):
        extractor = RoadworkFeatureExtractor(
            model, image_processor, args.feature_cache, batch_size=args.feature_cache_batch_size,
            num_workers=args.feature_cache_num_workers, shard_size=args.feature_cache_shard_size,
            dtype=args.feature_cache_dtype, accelerator=accelerator,
        )  # fmt: skip
        return cls(extractor, args.feature_cache_passes, **kwargs)

    def training_passes(
        self, augmenter: RoadworkViewAugmenter | None, seed: int, serving_augmentation: float = 0.0
    ) -> list[CachePass]:
        passes = (CachePass.training(k, augmenter, seed, serving_augmentation) for k in range(self.num_passes))
        passes = list({p.name: p for p in passes}.values())
        if len(passes) < self.num_passes:
            logger.info("feature cache: no training augmentation, so one clean pass instead of %d", self.num_passes)
        return passes

    def train_dataset(
        self, split, image_processor, config, augmenter: RoadworkViewAugmenter | None, seed: int,
        serving_augmentation: float = 0.0, **dataset_kwargs,
    ) -> RoadworkCachedDataset:  # fmt: skip
        """
        The train split from its K cached passes (`serving_augmentation`: the share of rows each pass turns into
        validator challenges; metadata dropout etc. as `RoadworkDataset` kwargs).
        """
        passes = self.training_passes(augmenter, seed, serving_augmentation)
        tables = [self.extractor.extract(split, p) for p in passes]
        return RoadworkCachedDataset(
            CachedSplit(tables, self.keep_views), image_processor, vocabularies=config, seed=seed, **dataset_kwargs
        )

    def condition_datasets(
        self, split, image_processor, config, seed: int, **dataset_kwargs
    ) -> dict[str, RoadworkDataset]:
        """`roadwork_training.build.condition_datasets` from the cache: `serving` reads the cached serving pass."""
        return cached_condition_datasets(
            self.extractor.extract(split, CachePass.serving(seed)), self.extractor.extract(split, CachePass.clean()),
            image_processor, config, seed, keep_views=self.keep_views, **dataset_kwargs,
        )  # fmt: skip


def cached_condition_datasets(
    serving_table, clean_table, image_processor, config, seed: int, keep_views: Sequence[int] | None = None,
    **dataset_kwargs,
) -> dict[str, RoadworkDataset]:  # fmt: skip
    """The evaluation conditions over already extracted tables (the serving pass and the clean pass, same rows)."""
    clean = CachedSplit([clean_table], keep_views)
    common = dict(vocabularies=config, augmentation="none", seed=seed, **dataset_kwargs)
    built = {
        "serving": cached_serving_dataset(serving_table, image_processor, config, seed, keep_views, **dataset_kwargs),
        "no_metadata": RoadworkDataset(clean, image_processor, use_metadata=False, scan_metadata_on_init=False,
                                       **common),
        "metadata": RoadworkDataset(clean, image_processor, scan_metadata_on_init=False, **common),
    }  # fmt: skip
    return {name: built[name] for name in CONDITIONS}


def feature_cache_from_training(args: FeatureCacheArguments, model, image_processor, training_args):
    """
    The cache train.py uses (None without `--feature_cache`): the model moves to the training device first so that
    extraction runs there (bf16 on CUDA), and the shards are split across the `accelerate launch` processes.
    """
    if not args.feature_cache:
        return None
    model.to(training_args.device)
    if _roadwork_base(model).config.use_segmentation:
        logger.warning("feature cache: segmentation masks are not cached, so the segmentation loss is skipped")
    return RoadworkFeatureCache.from_arguments(
        args, model, image_processor, accelerator=training_args.distributed_state
    )


def cached_serving_dataset(
    serving_table, image_processor, config, seed: int, keep_views: Sequence[int] | None = None, **dataset_kwargs
) -> RoadworkDataset:
    """The serving condition (no metadata, the validators' transform, already applied) over a cached serving pass."""
    return RoadworkDataset(
        CachedSplit([serving_table], keep_views), image_processor, vocabularies=config, augmentation="none",
        seed=seed, use_metadata=False, **dataset_kwargs,
    )  # fmt: skip


# --- one backbone pass for many heads -------------------------------------------------------------------------

# Config fields that must agree for heads to read one backbone pass: the views' pixels and the feature shape.
SHARED_VIEW_FIELDS = ("num_views", "view_size", "image_mean", "image_std", "resample", "backbone_hidden_size",
                      "backbone_pooling")


class RoadworkSharedBackbone:
    """
    One backbone pass feeding several heads (ensemble members, DoRA folds): the heads' backbones must hold the same
    weights as `backbone_model`'s (checked once, here, by `backbone_fingerprint`) and the same view settings.

    >>> shared = RoadworkSharedBackbone(members[0], members)
    >>> outputs = shared(pixel_values)              # one RoadworkImageClassifierOutput per head
    """

    def __init__(self, backbone_model, heads: Sequence[Any]):
        if not heads:
            raise ValueError("RoadworkSharedBackbone needs at least one head")
        self.backbone_model = backbone_model
        self.heads = list(heads)
        reference = _roadwork_base(backbone_model).config
        expected = backbone_fingerprint(backbone_model)
        for i, head in enumerate(self.heads):
            config = _roadwork_base(head).config
            for name in SHARED_VIEW_FIELDS:
                if getattr(config, name, None) != getattr(reference, name, None):
                    raise ValueError(
                        f"head {i} has {name}={getattr(config, name, None)!r} but the shared backbone model has "
                        f"{getattr(reference, name, None)!r}: its views differ, so it cannot read this backbone pass"
                    )
            if head is not backbone_model and backbone_fingerprint(head) != expected:
                raise ValueError(
                    f"head {i} was built on a different backbone (its backbone weights hash differs from the shared "
                    "backbone model's): its features would be wrong; predict with it on its own, or build every head "
                    "from the same backbone checkpoint"
                )

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone, once: (B, V, 3, S, S) -> (B, V, D)"""
        base = _roadwork_base(self.backbone_model)
        return base.extract_view_features(pixel_values.to(_model_device(base)))

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor | None = None, *, view_features: torch.Tensor | None = None,
                 **metadata) -> list[Any]:  # fmt: skip
        """(B, V, 3, S, S) pixels (or (B, V, D) features) + metadata -> one output per head, in order."""
        if view_features is None:
            view_features = self.features(pixel_values)
        return [head(view_features=view_features.to(_model_device(head)), **metadata) for head in self.heads]


def predict_heads(backbone_model, heads: Sequence[Any], pixel_values: torch.Tensor, **metadata) -> list[Any]:
    """Runs `backbone_model`'s backbone once on `pixel_values` and every head on its features (see
    [`RoadworkSharedBackbone`], which checks the heads' backbones; build it once to predict many batches)."""
    return RoadworkSharedBackbone(backbone_model, heads)(pixel_values, **metadata)


def disk_use(cache_dir: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk per pass folder of a cache root."""
    root = Path(cache_dir)
    return {
        d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachePass",
    "CachedSplit",
    "FeatureCacheArguments",
    "RoadworkCachedDataset",
    "RoadworkFeatureCache",
    "RoadworkFeatureExtractor",
    "RoadworkSharedBackbone",
    "SHARED_VIEW_FIELDS",
    "backbone_fingerprint",
    "cache_key",
    "disk_use",
    "feature_cache_from_training",
    "load_pass",
    "predict_heads",
    "processor_settings",
    "rows_fingerprint",
    "images_fingerprint",
    "shard_ranges",
    "shards_for_process",
]
