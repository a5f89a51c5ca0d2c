"""Extract the frozen backbone's features into the feature cache, ahead of training.

    python -m roadwork_training.cache --config configs/quickstart.yaml --feature_cache ~/.cache/roadwork/features
    accelerate launch -m roadwork_training.cache --config configs/base.yaml --feature_cache /data/features \
        --feature_cache_passes 8

Reads the same YAML as train.py (its training-only keys are ignored here) and extracts exactly what
`train.py --feature_cache DIR` with the same flags reads: `--feature_cache_passes` augmentation passes of the train
split, and the `serving` (validator challenge transform) and `clean` passes of every evaluated split. Under
`accelerate launch` the shards are split across the processes. A second run finds everything and exits quickly.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from transformers import TrainingArguments

from data_collator import RoadworkViewAugmenter
from data_collator.gps_weighting import RoadworkGPSWeightingConfig
from modeling_roadwork import RoadworkImageProcessor

from .arguments import RoadworkArgumentParser, to_config
from .build import DataArguments, ModelArguments, build_model, load_data
from .feature_cache import CachePass, FeatureCacheArguments, RoadworkFeatureExtractor, disk_use
from .flag_groups import AugmentationArguments, SyntheticArguments


logger = logging.getLogger("roadwork.cache")


@dataclass
class CacheRunArguments:
    seed: int = field(
        default=42, metadata={"help": "train.py's --seed: it seeds the augmentation passes and the serving transform."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Extract on the CPU even when a GPU is available."})


def train_only_keys() -> set[str]:
    """Keys of a train.py YAML that mean nothing to extraction (training, GPS weighting, early stopping)."""
    keys = {f.name for f in dataclasses.fields(TrainingArguments)}
    keys |= {f"gps_{f.name}" for f in dataclasses.fields(RoadworkGPSWeightingConfig)}
    keys |= {"gps_weighting", "allow_weak_gps_weighting", "early_stopping_patience"}
    return keys


def parse_args(argv: list[str] | None = None):
    parser = RoadworkArgumentParser(
        (ModelArguments, DataArguments, SyntheticArguments, AugmentationArguments, FeatureCacheArguments,
         CacheRunArguments),
        description=__doc__, yaml_only_keys=train_only_keys() - {"seed", "use_cpu"},
    )  # fmt: skip
    model, data, synthetic, augmentation, cache, run = parser.parse(argv)
    if not cache.feature_cache:
        raise SystemExit("--feature_cache DIR is required: the folder the features are written to")
    return model, data, to_config(synthetic), to_config(augmentation), cache, run


def main(argv: list[str] | None = None) -> dict[str, int]:
    model_args, data_args, synthetic, augmentation, cache_args, run = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    state = PartialState(cpu=run.use_cpu)

    # Stage 1: the splits, exactly as train.py draws them (same seed, same validation share).
    splits, vocabularies = load_data(data_args, run.seed, synthetic)

    # Stage 2: the model (only its backbone runs) on this process's device.
    model = build_model(model_args, vocabularies, splits["train"]).to(state.device).eval()
    image_processor = RoadworkImageProcessor.from_model_config(model.config)
    extractor = RoadworkFeatureExtractor(
        model, image_processor, cache_args.feature_cache, batch_size=cache_args.feature_cache_batch_size,
        num_workers=cache_args.feature_cache_num_workers, shard_size=cache_args.feature_cache_shard_size,
        dtype=cache_args.feature_cache_dtype, accelerator=state,
    )  # fmt: skip

    # Stage 3: every pass train.py --feature_cache reads.
    augmenter = RoadworkViewAugmenter(augmentation)
    share = data_args.serving_augmentation
    train_passes = [CachePass.training(k, augmenter, run.seed, share) for k in range(cache_args.feature_cache_passes)]
    for cache_pass in {p.name: p for p in train_passes}.values():
        extractor.extract(splits["train"], cache_pass)
    for name, split in splits.items():
        if name != "train":
            extractor.extract(split, CachePass.serving(run.seed))
            extractor.extract(split, CachePass.clean())

    # Stage 4: disk use.
    used = disk_use(cache_args.feature_cache)
    if state.is_main_process:
        total = sum(used.values())
        print(f"feature cache {cache_args.feature_cache}: {len(used)} passes, {total / 2**20:.1f} MiB", flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return used


if __name__ == "__main__":
    main()


__all__ = ["CacheRunArguments", "main", "parse_args", "train_only_keys"]
