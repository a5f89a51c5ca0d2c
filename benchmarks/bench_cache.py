"""Per-epoch wall time of head training from the feature cache / end to end, on the same frozen backbone.

    python benchmarks/bench_cache.py                                  # quickstart-sized synthetic data, Lite0 at 96 px
    python benchmarks/bench_cache.py --num_train 8 --view_size 32     # a quick check

Backbone: the ImageNet-pretrained EfficientNet-Lite0 (`roadwork_backbones.ensure_efficientnet_lite0()`, offline) at
`--view_size`; data: the synthetic dataset (`--num_train` rows, light augmentation). The same head and settings
train one epoch end to end (decode, views, augmentation, backbone, head) and one epoch from the cache (one cached
pass, extracted first; its extraction time is reported too). No text encoder (zero text embeddings) in either.
Target: cache / end-to-end <= 0.1.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch

from data_collator import (
    RoadworkDataCollator,
    RoadworkDataset,
    RoadworkViewAugmenter,
    SyntheticDatasetConfig,
    build_vocabularies,
    ensure_synthetic_dataset,
    load_roadwork_splits,
)
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor
from roadwork_backbones import ensure_efficientnet_lite0
from roadwork_training.arguments import RoadworkArgumentParser
from roadwork_training.feature_cache import RoadworkFeatureCache, RoadworkFeatureExtractor
from roadwork_training.head_training import HeadTrainingSettings, train_head


# The quickstart head (configs/quickstart.yaml model_overrides).
HEAD = dict(hidden_size=128, num_attention_heads=4, num_attention_layers=2, fusion_hidden_size=128,
            classifier_hidden_size=64, use_segmentation=False)  # fmt: skip


@dataclass
class BenchCacheArguments:
    num_train: int = field(
        default=204, metadata={"help": "Synthetic training rows (quickstart: 204 after validation)."}
    )
    view_size: int = field(default=96, metadata={"help": "Side of each view for the backbone."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Where the synthetic data goes (default: a temp dir)."}
    )


def main(argv: list[str] | None = None) -> dict:
    (args,) = RoadworkArgumentParser((BenchCacheArguments,), description=__doc__).parse(argv)
    root = args.data_dir or tempfile.mkdtemp(prefix="bench_cache_")
    source = ensure_synthetic_dataset(os.path.join(root, f"synthetic_{args.num_train}"),
                                      SyntheticDatasetConfig(num_train=args.num_train, num_test=2))  # fmt: skip
    train = load_roadwork_splits(str(source))["train"]
    torch.manual_seed(0)
    model = RoadworkForImageClassification.from_backbone(
        str(ensure_efficientnet_lite0()), view_size=args.view_size, **build_vocabularies(train), **HEAD
    )
    processor = RoadworkImageProcessor.from_model_config(model.config)
    augmenter = RoadworkViewAugmenter("light")
    collator = RoadworkDataCollator(text_embed_dim=model.config.text_embed_dim)
    settings = HeadTrainingSettings(num_train_epochs=1, per_device_train_batch_size=args.batch_size)

    live = RoadworkDataset(train, processor, vocabularies=model.config, augmentation=augmenter, seed=42,
                           metadata_dropout=0.5, scan_metadata_on_init=False)  # fmt: skip
    (end_to_end,) = train_head(copy.deepcopy(model), live, collator, settings)

    with tempfile.TemporaryDirectory() as cache_dir:
        extractor = RoadworkFeatureExtractor(model, processor, cache_dir, batch_size=args.batch_size, progress=False)
        started = time.perf_counter()
        cached = RoadworkFeatureCache(extractor).train_dataset(
            train, processor, model.config, augmenter, 42, metadata_dropout=0.5, scan_metadata_on_init=False
        )
        extraction = time.perf_counter() - started
        (from_cache,) = train_head(copy.deepcopy(model), cached, collator, settings)
    ratio = from_cache / end_to_end
    print(f"{len(train)} images, EfficientNet-Lite0 at {args.view_size} px, {torch.get_num_threads()} CPU threads: "
          f"epoch end to end {end_to_end:.2f} s, from the cache {from_cache:.3f} s (ratio {ratio:.3f}); one "
          f"extraction pass {extraction:.2f} s")  # fmt: skip
    result = {"name": "cache_epoch_time_ratio", "value": round(ratio, 4), "target": 0.1,
              "end_to_end_epoch_s": round(end_to_end, 3), "cache_epoch_s": round(from_cache, 4),
              "extraction_pass_s": round(extraction, 3), "images": len(train),
              "view_size": args.view_size}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
