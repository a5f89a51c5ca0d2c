"""Prediction time of a 3-member ensemble / 1 member through one shared backbone pass, on the same images.

    python benchmarks/bench_ensemble.py                          # EfficientNet-Lite0 at 96 px, 16 images
    python benchmarks/bench_ensemble.py --images 2 --view_size 32 --repeats 2

Members are roadwork models on the same frozen EfficientNet-Lite0 (offline) with different heads (as the ensemble
members and DoRA folds are); `RoadworkSharedBackbone` runs the backbone once per batch and every head on its
features. The views are cut beforehand, so the times are backbone + heads. Also prints the naive ensemble (each
member's own full forward) for comparison. Median of --repeats. Target: 3 members / 1 member <= 1.2.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

import torch

from modeling_roadwork import RoadworkForImageClassification
from roadwork_backbones import ensure_efficientnet_lite0
from roadwork_training.arguments import RoadworkArgumentParser
from roadwork_training.feature_cache import RoadworkSharedBackbone


@dataclass
class BenchEnsembleArguments:
    images: int = field(default=16, metadata={"help": "Images per prediction batch."})
    view_size: int = field(default=96, metadata={"help": "Side of each view."})
    members: int = field(default=3, metadata={"help": "Ensemble members."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats (median reported), after one warm-up."})


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    (args,) = RoadworkArgumentParser((BenchEnsembleArguments,), description=__doc__).parse(argv)
    folder = str(ensure_efficientnet_lite0())
    members = []
    for seed in range(args.members):
        torch.manual_seed(seed)
        members.append(RoadworkForImageClassification.from_backbone(folder, view_size=args.view_size).eval())
    pixels = torch.randn(args.images, members[0].config.num_views, 3, args.view_size, args.view_size)
    one = RoadworkSharedBackbone(members[0], members[:1])
    many = RoadworkSharedBackbone(members[0], members)
    single = _median_seconds(lambda: one(pixels), args.repeats)
    shared = _median_seconds(lambda: many(pixels), args.repeats)
    with torch.no_grad():
        naive = _median_seconds(lambda: [m(pixel_values=pixels) for m in members], args.repeats)
    ratio = shared / single
    print(f"{args.images} images x {members[0].config.num_views} views at {args.view_size} px, EfficientNet-Lite0, "
          f"{torch.get_num_threads()} CPU threads: 1 member {single:.3f} s, {args.members} members shared backbone "
          f"{shared:.3f} s (ratio {ratio:.3f}), naive {naive:.3f} s (ratio {naive / single:.2f})")  # fmt: skip
    result = {"name": "ensemble_shared_backbone_time_ratio", "value": round(ratio, 4), "target": 1.2,
              "members": args.members, "single_s": round(single, 4), "shared_s": round(shared, 4),
              "naive_ratio": round(naive / single, 3)}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
