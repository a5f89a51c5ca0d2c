"""Rows, Parquet shards and the command line of the synthetic dataset (the embedded default dataset).

The rows follow the schema of `natix-network-org/roadwork` exactly (dots in column names included), with images
from [`~data_collator.synthetic.scene.render_scene`]: the metadata is ~60 % NULL, a few % of GPS strings are
malformed, descriptions are sometimes empty or ``"No Description"`` and a few rows disagree with their label (to
exercise the validators' consistency filter). The ``video_info.*`` columns are placeholders with plausible names;
the real dataset's ``video_info`` fields are not reproduced. Rows can carry the scene's soft masks in a
``seg_masks`` column.

Everything is deterministic in the seed: row ``i`` of a split depends only on ``(seed, split, i)``.

Command line::

    python -m data_collator.synthetic --output_dir DIR --num_train 240 --num_test 60 --seed 0
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..schema import SEG_MASKS_COLUMN, encode_seg_masks
from .scene import SCENE_VARIANTS, describe_scene, render_scene


logger = logging.getLogger(__name__)

SYNTHETIC_VERSION = 2  # 2: scene variants and their hard test splits; balanced test split
MANIFEST_NAME = "roadwork_synthetic.json"

# Six of the US cities of the real data, with their centres; rows scatter within ~10 km.
CITIES = (
    ("Indianapolis", 39.7684, -86.1581),
    ("Chicago", 41.8781, -87.6298),
    ("Austin", 30.2672, -97.7431),
    ("Denver", 39.7392, -104.9903),
    ("Atlanta", 33.7490, -84.3880),
    ("Phoenix", 33.4484, -112.0740),
)
IMAGE_SIZES = ((640, 480), (960, 540), (480, 640), (800, 600))
WEATHERS = ("Sunny", "Cloudy", "Overcast", "Rainy", "Foggy")
DAYTIMES = ("Light", "Dark", "Twilight")
SCENES = ("Urban", "Highway", "Residential", "Rural")
TRAVEL_ALTERATIONS = ("Lane Closure", "Road Narrowing", "Detour", "Lane Shift")
# The hard test splits, one per non-standard scene variant (see data_collator.synthetic.scene.SCENE_VARIANTS).
HARD_TEST_SPLITS = {f"test_{variant}": variant for variant in SCENE_VARIANTS if variant != "standard"}


@dataclass
class SyntheticDatasetConfig:
    """What [`generate_synthetic_dataset`] writes. Every field is a command-line flag of its own name when the
    dataclass is parsed with `HfArgumentParser` (``python -m data_collator.synthetic --help``).

    Args:
        num_train, num_test (`int`, *optional*, default to 240 and 200): rows per split.
        num_hard_test (`int`, *optional*, defaults to 0): rows of each hard test split (`test_small`,
            `test_occluded`, `test_distractor`: `HARD_TEST_SPLITS`), balanced 50/50; 0 writes none.
        train_hard_fraction (`float`, *optional*, defaults to 0.0): share of train rows drawn as a hard scene
            variant (small, occluded or distractor, one in three each) instead of a standard scene, so that the
            train split (and the validation share taken from it) holds distant, hidden and orange-but-not-roadwork
            scenes as real dashcam data does. 0 keeps every train row a standard scene, and rows that stay
            standard are the same bytes whatever the fraction.
        seed (`int`, *optional*, defaults to 0): everything follows from it.
        train_positive_rate, test_positive_rate (`float`, *optional*, default to 0.8 and 0.5): share of label 1.
            Train follows the real data (80 %); test is balanced like the validators' challenges, which draw
            labels 50/50, and has 200 rows so that MCC moves in steps of about 0.01.
        metadata_null_rate (`float`, *optional*, defaults to 0.6): share of rows whose scene tags are all NULL.
        malformed_gps_rate (`float`, *optional*, defaults to 0.04): share of GPS strings that are malformed, zero
            or out of range.
        mask_rate (`float`, *optional*, defaults to 0.8): share of rows with a ``seg_masks`` cell (the others are
            NULL); 0 drops the column.
        rows_per_shard (`int`, *optional*, defaults to 200): Parquet rows per shard.
        jpeg_quality (`int`, *optional*, defaults to 88): quality of the stored JPEGs.

    ``version`` is not an argument: it is the generator's version, recorded in the manifest so that a dataset
    written by an older generator is regenerated.
    """

    num_train: int = field(default=240, metadata={"help": "Rows in the synthetic train split."})
    num_test: int = field(
        default=200, metadata={"help": "Rows in the synthetic test split (balanced by --test_positive_rate)."}
    )
    num_hard_test: int = field(
        default=0,
        metadata={
            "help": "Rows of each hard synthetic test split, balanced 50/50: test_small (distant objects under 1%% "
            "of the image), test_occluded (objects behind cars), test_distractor (orange but no roadwork). 0: none."
        },
    )
    train_hard_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of synthetic train rows drawn as a hard scene variant (small, occluded or distractor, "
            "a third each) instead of a standard scene; the validation share is drawn from these rows too. 0: none."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed; the synthetic dataset is a function of it."})
    train_positive_rate: float = field(default=0.8, metadata={"help": "Share of roadwork rows in the train split."})
    test_positive_rate: float = field(
        default=0.5, metadata={"help": "Share of roadwork rows in the test split (0.5: as the validators draw)."}
    )
    metadata_null_rate: float = field(
        default=0.6, metadata={"help": "Share of synthetic rows whose scene tags are all NULL."}
    )
    malformed_gps_rate: float = field(
        default=0.04, metadata={"help": "Share of synthetic GPS strings that are malformed, zero or out of range."}
    )
    mask_rate: float = field(
        default=0.8, metadata={"help": "Share of synthetic rows with seg_masks (0 drops the column)."}
    )
    rows_per_shard: int = field(default=200, metadata={"help": "Rows per Parquet shard of the synthetic dataset."})
    jpeg_quality: int = field(default=88, metadata={"help": "JPEG quality of the synthetic images."})
    version: int = field(default=SYNTHETIC_VERSION, init=False)

    def __post_init__(self):
        for name in ("num_train", "num_test", "num_hard_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "train_positive_rate",
            "test_positive_rate",
            "metadata_null_rate",
            "malformed_gps_rate",
            "mask_rate",
            "train_hard_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")


_MALFORMED_GPS = ("", "nan", "None", "[39.7, ]", "[0.0, 0.0]", "[139.77, -86.18]", "lat=39.77 lon=-86.18", "[unknown]")


def _gps_string(rng: np.random.Generator, lat: float, lon: float, malformed_rate: float) -> str:
    if rng.random() < malformed_rate:
        return _MALFORMED_GPS[int(rng.integers(len(_MALFORMED_GPS)))]
    lat += rng.normal(0, 0.05)
    lon += rng.normal(0, 0.06)
    return f"[{lat:.8f}, {lon:.8f}]"


def _null_tag(rng: np.random.Generator) -> str | None:
    return (None, None, None, "", "null")[int(rng.integers(5))]


HARD_VARIANTS = tuple(HARD_TEST_SPLITS.values())


def _train_variant(config: SyntheticDatasetConfig, index: int) -> str:
    """The scene variant of train row `index`: a hard one with probability `config.train_hard_fraction`.

    Drawn from a generator of its own, so the row's main draws (label, size, city, the scene) stay where they were:
    a row that stays standard is identical at any fraction.
    """
    if config.train_hard_fraction <= 0.0:
        return "standard"
    rng = np.random.default_rng([config.seed, 0, index, SYNTHETIC_VERSION, 1])
    if rng.random() >= config.train_hard_fraction:
        return "standard"
    return HARD_VARIANTS[int(rng.integers(len(HARD_VARIANTS)))]


def generate_row(config: SyntheticDatasetConfig, split: str, index: int) -> dict[str, Any]:
    """Row `index` of `split`; depends only on ``(config.seed, split, index)`` and the rates."""
    split_code = {"train": 0, "test": 1}.get(split, sum(map(ord, split)))
    rng = np.random.default_rng([config.seed, split_code, index, SYNTHETIC_VERSION])
    variant = HARD_TEST_SPLITS.get(split, "standard")
    if split == "train":
        positive_rate = config.train_positive_rate
        variant = _train_variant(config, index)
    else:
        positive_rate = config.test_positive_rate if variant == "standard" else 0.5
    label = int(rng.random() < positive_rate)
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    city, lat, lon = CITIES[int(rng.integers(len(CITIES)))]
    weather = WEATHERS[int(rng.choice(len(WEATHERS), p=(0.4, 0.2, 0.15, 0.15, 0.1)))]
    daytime = DAYTIMES[int(rng.choice(len(DAYTIMES), p=(0.7, 0.2, 0.1)))]
    scene = SCENES[int(rng.integers(len(SCENES)))]

    image, masks, objects = render_scene(rng, width, height, bool(label), weather, daytime, scene, variant)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    row_id = f"synthetic-{split}-{index:06d}"

    # Description: mostly present for roadwork, mostly absent otherwise; a few rows disagree with the label.
    draw = rng.random()
    if label == 1:
        description = (
            describe_scene(objects, scene, weather, daytime, rng)
            if draw < 0.86
            else ("No Description" if draw < 0.93 else "")
        )
    else:
        description = (
            ""
            if draw < 0.88
            else ("No Description" if draw < 0.94 else describe_scene([], scene, weather, daytime, rng))
        )

    if rng.random() < config.metadata_null_rate:
        tags = {k: _null_tag(rng) for k in ("daytime", "scene_environment", "weather", "travel_alteration")}
        if tags["weather"] == "":
            tags["weather"] = "[]"
    else:
        weather_tags = [weather] + (["Windy"] if rng.random() < 0.08 else [])
        alteration = [TRAVEL_ALTERATIONS[int(rng.integers(len(TRAVEL_ALTERATIONS)))]] if label else ["None"]
        tags = {
            "daytime": daytime,
            "scene_environment": scene,
            "weather": repr(weather_tags),
            "travel_alteration": repr(alteration),
        }

    with_mask = config.mask_rate > 0 and rng.random() < config.mask_rate
    row = {
        "image": {"bytes": buffer.getvalue(), "path": f"{row_id}.jpg"},
        "label": label,
        "id": row_id,
        "width": width,
        "height": height,
        "license": "CC0-1.0 (synthetic)",
        "date_captured": int(1_704_067_200 + rng.integers(0, 540 * 86_400)),  # 2024-01-01 + up to 540 days
        "gps": _gps_string(rng, lat, lon, config.malformed_gps_rate),
        "city_name": city,
        "scene_description": description,
        "scene_level_tags.daytime": tags["daytime"],
        "scene_level_tags.scene_environment": tags["scene_environment"],
        "scene_level_tags.weather": tags["weather"],
        "scene_level_tags.travel_alteration": tags["travel_alteration"],
        "video_info.video_id": f"synthetic-video-{int(rng.integers(0, 50)):03d}",
        "video_info.frame_index": int(rng.integers(0, 3000)),
    }
    if config.mask_rate > 0:
        row[SEG_MASKS_COLUMN] = encode_seg_masks(masks) if with_mask else None
    return row


def synthetic_features(with_masks: bool = True):
    """The `datasets.Features` of the synthetic splits (the real schema plus ``seg_masks``)."""
    import datasets

    features = {
        "image": datasets.Image(),
        "label": datasets.Value("int64"),
        "id": datasets.Value("string"),
        "width": datasets.Value("int64"),
        "height": datasets.Value("int64"),
        "license": datasets.Value("string"),
        "date_captured": datasets.Value("int64"),
        "gps": datasets.Value("string"),
        "city_name": datasets.Value("string"),
        "scene_description": datasets.Value("string"),
        "scene_level_tags.daytime": datasets.Value("string"),
        "scene_level_tags.scene_environment": datasets.Value("string"),
        "scene_level_tags.weather": datasets.Value("string"),
        "scene_level_tags.travel_alteration": datasets.Value("string"),
        "video_info.video_id": datasets.Value("string"),
        "video_info.frame_index": datasets.Value("int64"),
    }
    if with_masks:
        features[SEG_MASKS_COLUMN] = datasets.Value("binary")
    return datasets.Features(features)


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    config: SyntheticDatasetConfig | None = None,
) -> Path:
    """Writes ``output_dir/data/{train,test}-<shard>-of-<shards>.parquet`` and a manifest. Returns `output_dir`.

    The shards carry `datasets` feature metadata, so both ``datasets.load_dataset("parquet", data_dir=...)``
    and ``datasets.load_dataset(output_dir)`` read ``image`` back as an `Image` feature.
    """
    import datasets

    config = config or SyntheticDatasetConfig()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    features = synthetic_features(with_masks=config.mask_rate > 0)
    counts = {}
    sizes = [("train", config.num_train), ("test", config.num_test)]
    sizes += [(name, config.num_hard_test) for name in HARD_TEST_SPLITS]
    bar = tqdm(total=sum(n for _, n in sizes), desc="synthetic roadwork scenes", unit="row")
    for split, num_rows in sizes:
        if num_rows == 0:
            continue
        num_shards = max(1, math.ceil(num_rows / config.rows_per_shard))
        bounds = np.linspace(0, num_rows, num_shards + 1).astype(int)
        labels = []
        for shard in range(num_shards):
            rows = []
            for i in range(bounds[shard], bounds[shard + 1]):
                rows.append(generate_row(config, split, i))
                bar.update(1)
            labels += [r["label"] for r in rows]
            columns = {name: [r[name] for r in rows] for name in features}
            table = datasets.Dataset.from_dict(columns, features=features)
            table.to_parquet(str(data_dir / f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"))
        counts[split] = {"rows": num_rows, "roadwork": int(sum(labels)), "none": int(num_rows - sum(labels))}
    bar.close()
    manifest = {"generator": "data_collator.synthetic", "config": asdict(config), "splits": counts}
    (output_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return output_dir


def default_synthetic_dir() -> Path:
    """``$ROADWORK_CACHE/synthetic`` (``~/.cache/roadwork/synthetic`` by default)."""
    root = os.environ.get("ROADWORK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "roadwork")
    return Path(root) / "synthetic"


def ensure_synthetic_dataset(
    path: str | os.PathLike | None = None, config: SyntheticDatasetConfig | None = None
) -> Path:
    """The synthetic dataset at `path`, generated there on first use (or when its settings changed).

    Generation goes to a temporary sibling folder that is renamed into place, so concurrent processes (two
    ranks of a launch) never read a half-written dataset; the loser of the race discards its copy.

    Returns:
        `Path`: the dataset folder (Hub layout: ``data/train-*.parquet``, ``data/test-*.parquet``).
    """
    config = config or SyntheticDatasetConfig()
    path = Path(path) if path is not None else default_synthetic_dir()
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("config") == asdict(config):
                return path
        except (OSError, ValueError):
            pass
        logger.info("Synthetic dataset at %s has other settings; regenerating it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        logger.info(
            "Generating the synthetic roadwork dataset (%d train, %d test rows) in %s",
            config.num_train,
            config.num_test,
            path,
        )
        generate_synthetic_dataset(tmp, config)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / MANIFEST_NAME).is_file():  # not another process's finished copy: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --- command line ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticDatasetArguments:
    """Where ``python -m data_collator.synthetic`` writes; what it writes is a [`SyntheticDatasetConfig`]."""

    output_dir: str = field(
        metadata={"help": "Folder to write (Hub layout: data/train-*.parquet, data/test-*.parquet)."}
    )


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m data_collator.synthetic --output_dir DIR [--num_train N ...]``; returns the folder written."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((SyntheticDatasetArguments, SyntheticDatasetConfig))
    args, config = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = generate_synthetic_dataset(args.output_dir, config)
    logger.info("Wrote %s", out)
    return out


__all__ = [
    "CITIES",
    "HARD_TEST_SPLITS",
    "MANIFEST_NAME",
    "SYNTHETIC_VERSION",
    "SyntheticDatasetArguments",
    "SyntheticDatasetConfig",
    "default_synthetic_dir",
    "ensure_synthetic_dataset",
    "generate_row",
    "generate_synthetic_dataset",
    "main",
    "synthetic_features",
]
