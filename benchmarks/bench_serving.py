"""Serving-condition quality of a roadwork checkpoint, against a linear probe on the same frozen backbone.

    python benchmarks/bench_serving.py                          # trains the quickstart (configs/quickstart.yaml)
    python benchmarks/bench_serving.py --checkpoint outputs/quickstart
    python benchmarks/bench_serving.py --checkpoint outputs/quickstart --pipeline_check   # + pipeline(), as a miner
    python benchmarks/bench_serving.py --checkpoint DIR --dataset DATA_DIR --split test

Prints MCC of the model under the three conditions (serving: no metadata + the validators' challenge transform;
no_metadata: the full image; metadata: as stored) on the test split, the same for a logistic-regression probe on the
backbone's pooled feature of one 224x224 view (the whole image; trained on the clean images plus, with the config's
--serving_augmentation, the same share of challenge passes as the model), and a last JSON line
`{"name": "serving_mcc", "value": <model serving MCC>, "target": 0.6, "probe_serving_mcc": ..., ...}`.
The synthetic test split is balanced 50/50, as the validators' challenges are; half of their challenges are SDXL
images, which no split here contains.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import HfArgumentParser, set_seed  # noqa: E402

from data_collator import ensure_synthetic_dataset, load_roadwork_splits  # noqa: E402
from data_collator.synthetic import SyntheticDatasetConfig  # noqa: E402
from modeling_roadwork import RoadworkForImageClassification  # noqa: E402
from roadwork_training.build import stratified_subset  # noqa: E402
from roadwork_training.evaluation import (  # noqa: E402
    evaluate_split_conditions,
    label_balance,
    linear_probe_baseline,
    pipeline_serving_probabilities,
)
from roadwork_training.metrics import CONDITIONS, classification_metrics, format_metric  # noqa: E402


TARGET_SERVING_MCC = 0.6


@dataclass
class BenchArguments:
    checkpoint: str | None = field(
        default=None, metadata={"help": "A trained roadwork checkpoint; without one the quickstart is trained first."}
    )
    config: str = field(
        default=str(REPO / "configs" / "quickstart.yaml"),
        metadata={"help": "train.py config to train when no --checkpoint is given."},
    )
    train_args: str = field(
        default="",
        metadata={"help": "Extra train.py flags, one quoted string, e.g. --train_args '--num_train_epochs 2'."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Parquet folder to evaluate on (default: the bundled synthetic dataset of the config)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split the probe is fitted on."})
    split: str = field(default="test", metadata={"help": "Split evaluated."})
    max_samples: int | None = field(default=None, metadata={"help": "Seeded stratified subset of each split."})
    probe_serving_augmentation: float | None = field(
        default=None,
        metadata={"help": "Share of validator challenges in the probe's training passes, as the model's "
                  "--serving_augmentation (default: the --config's value, so both train on the same images)."},
    )  # fmt: skip
    pipeline_check: bool = field(
        default=False,
        metadata={"help": "Also score the serving challenges as a miner serves the checkpoint: AutoModel + "
                  "AutoImageProcessor (trust_remote_code) in pipeline('image-classification'), one PIL challenge at a "
                  "time; prints its serving MCC, which must equal the model's."},
    )  # fmt: skip
    probe_passes: int | None = field(
        default=None, metadata={"help": "Training passes of the probe with challenges (default: the --config's "
                                "--feature_cache_passes)."},
    )  # fmt: skip
    seed: int = field(default=42, metadata={"help": "Seed of the serving challenges and of the probe."})
    probe_c: float = field(default=1.0, metadata={"help": "Inverse L2 strength of the probe's logistic regression."})
    batch_size: int = field(default=16, metadata={"help": "Evaluation batch size."})


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(args=argv)
    train_args = shlex.split(args.train_args)
    set_seed(args.seed)
    started = time.time()
    checkpoint = args.checkpoint
    if checkpoint is None:
        import train

        summary = train.main(["--config", args.config, *train_args])
        checkpoint = summary["output_dir"]
    model = RoadworkForImageClassification.from_pretrained(checkpoint).eval()
    source = args.dataset or str(ensure_synthetic_dataset(None, _synthetic_config(args.config, train_args)))
    splits = load_roadwork_splits(source, splits=[args.train_split, args.split])
    train_split = stratified_subset(splits[args.train_split], args.max_samples, args.seed)
    eval_split = stratified_subset(splits[args.split], args.max_samples, args.seed)

    model_metrics = evaluate_split_conditions(model, eval_split, seed=args.seed, batch_size=args.batch_size)
    trained = _train_config(args.config, train_args)
    share = args.probe_serving_augmentation
    share = trained.data.serving_augmentation if share is None else share
    passes = args.probe_passes or trained.cache.feature_cache_passes
    probe_metrics = linear_probe_baseline(model, train_split, eval_split, seed=args.seed, c=args.probe_c,
                                          batch_size=args.batch_size, serving_augmentation=share,
                                          num_passes=passes)  # fmt: skip
    pipeline_metrics = {}
    if args.pipeline_check:
        probabilities, labels = pipeline_serving_probabilities(str(checkpoint), eval_split, seed=args.seed)
        pipeline_metrics = classification_metrics(probabilities, labels)
    print(f"{checkpoint} on {source} [{args.split}: {len(eval_split)} rows, {label_balance(eval_split)}]")
    print(f"{'':>24} " + " ".join(f"{c:>12}" for c in CONDITIONS))
    for name, metrics in (("multi-view model MCC", model_metrics), ("single-view probe MCC", probe_metrics)):
        print(f"{name:>24} " + " ".join(f"{format_metric(metrics.get(f'{c}_mcc'), 'mcc'):>12}" for c in CONDITIONS))
    if pipeline_metrics:
        mcc = format_metric(pipeline_metrics.get("mcc"), "mcc")
        print(f"{'pipeline() MCC':>24} {mcc:>12}   (serving, as a miner)")
    result = {
        "name": "serving_mcc",
        "value": model_metrics.get("serving_mcc"),
        "target": TARGET_SERVING_MCC,
        **{f"model_{c}_mcc": model_metrics.get(f"{c}_mcc") for c in CONDITIONS},
        **{f"probe_{c}_mcc": probe_metrics.get(f"{c}_mcc") for c in CONDITIONS},
        "model_serving_reward": model_metrics.get("serving_streetvision_reward"),
        "probe_serving_reward": probe_metrics.get("serving_streetvision_reward"),
        "rows": len(eval_split),
        "probe_serving_augmentation": share,
        "pipeline_serving_mcc": pipeline_metrics.get("mcc"),
        "checkpoint": str(checkpoint),
        "dataset": source,
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(result))
    return result


def _train_config(config: str, train_args: list[str]):
    """train.py's parsed arguments for the config (and extra flags)."""
    import train

    return train.parse_args(["--config", config, *train_args])


def _synthetic_config(config: str, train_args: list[str]) -> SyntheticDatasetConfig:
    """The synthetic dataset the train.py config (and extra flags) describes."""
    return _train_config(config, train_args).synthetic


if __name__ == "__main__":
    main()
