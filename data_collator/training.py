"""Training glue: the Trainer subclass (GPS-weighted sampler, four-part loss logging), metrics, the model card."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import Trainer

from modeling_roadwork import LOSS_COMPONENTS, RoadworkPreTrainedModel

from .gps_weighting import make_gps_sampler
from .schema import ROADWORK_HUB_ID


logger = logging.getLogger(__name__)


def roadwork_probabilities(logits: np.ndarray) -> np.ndarray:
    """(N, 2) logits -> (N,) P(Roadwork), the score the StreetVision miner returns."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs[:, 1] / probs.sum(axis=-1)


def classification_metrics(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """
    MCC, accuracy, F1 and ROC-AUC (scikit-learn, which the `evaluate` metric scripts wrap; those scripts are fetched
    from the Hub at run time). Predictions are thresholded as the subnet's validators do: `round(p)`, so 0.5 counts as
    None. `streetvision_reward` is the validators' per-miner reward formula applied to the whole set:
    `(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3`.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    predictions = (probabilities > 0.5).astype(int)
    mcc = float(matthews_corrcoef(labels, predictions)) if len(set(labels)) > 1 or len(set(predictions)) > 1 else 0.0
    accuracy = float(accuracy_score(labels, predictions))
    metrics = {
        "mcc": mcc,
        "accuracy": accuracy,
        "f1": float(f1_score(labels, predictions, zero_division=0)),
        # ROC-AUC is undefined with one class in the labels: NaN, never a made-up number.
        "roc_auc": float(roc_auc_score(labels, probabilities)) if len(set(labels)) > 1 else float("nan"),
        "streetvision_reward": float((0.5 * max(mcc, 0.0) + 0.5 * accuracy) ** 3),
    }
    return metrics


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: EvalPrediction of logits (N, 2) and labels (N,) -> metrics."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return classification_metrics(roadwork_probabilities(logits), eval_prediction.label_ids)


class RoadworkTrainer(Trainer):
    """
    `transformers.Trainer` with
    - the GPS-weighted sampler (`sample_weights`, one weight per training row; `None` = the default random sampler),
      seeded by `sampler_seed + epoch` so that every rank draws the same sequence and a resumed run replays it;
    - the model's four-part loss, each component's mean logged next to `loss` (`focal_loss`, `consistency_loss`,
      `weather_loss`, `seg_loss`) together with the share of steps where it was skipped for lack of labels
      (`weather_loss_skipped`, ...).
    """

    def __init__(
        self,
        *args,
        sample_weights: Sequence[float] | None = None,
        sampler_seed: int = 42,
        dataset_name: str = ROADWORK_HUB_ID,
        base_model: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.dataset_name = dataset_name
        self.base_model = base_model
        self.final_metrics: dict[str, float] = {}  # set by train.py after the final evaluations, for the model card
        self.sample_weights = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
        self.sampler_seed = sampler_seed
        # Sums stay tensors on the device until a log step: a float() per step would sync the GPU every step.
        self._component_sums: dict[str, torch.Tensor | float] = dict.fromkeys(LOSS_COMPONENTS, 0.0)
        self._component_counts: dict[str, int] = dict.fromkeys(LOSS_COMPONENTS, 0)
        self._component_steps = 0

    def _load_checkpoint_weights(self, checkpoint: str, model=None) -> bool:
        """
        Loads a roadwork checkpoint into the model through `from_pretrained`. Trainer's own loader reads the
        safetensors file with `load_state_dict`, which skips transformers' key renaming: checkpoints store DINOv3
        layers as `backbone.layer.N` while the module is `backbone.model.layer.N`, so every backbone weight would be
        reported missing and not restored. Returns False (Trainer's loader is used) for models it does not cover.
        """
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(model, RoadworkPreTrainedModel) or not os.path.isfile(
            os.path.join(checkpoint, "model.safetensors")
        ):
            return False
        loaded = type(model).from_pretrained(checkpoint, config=model.config)
        model.load_state_dict(loaded.state_dict(), strict=True)
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_checkpoint_weights(resume_from_checkpoint, model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        checkpoint = self.state.best_model_checkpoint
        if checkpoint is None or not self._load_checkpoint_weights(checkpoint):
            super()._load_best_model()
        else:
            logger.info("Loaded the best model from %s (score %s)", checkpoint, self.state.best_metric)

    def _run_epoch(self, **kwargs):
        # The dataset seeds its augmentation by (seed, epoch, index), so it must learn the epoch. accelerate's
        # `DataLoaderShard.set_epoch` skips `dataset.set_epoch` whenever the batch sampler wraps another one
        # (`BatchSamplerShard` on >1 process, `SkipBatchSampler` in a resumed epoch): every epoch of a multi-process
        # run, and the resumed epoch, would repeat epoch 0's augmentation.
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(kwargs["epoch"])
        return super()._run_epoch(**kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if len(self.sample_weights) != len(dataset):
            raise ValueError(
                f"sample_weights has {len(self.sample_weights)} entries for a training set of {len(dataset)} rows"
            )
        return make_gps_sampler(self.sample_weights, num_samples=len(dataset), seed=self.sampler_seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError("The batch has no `labels`: the collator must pass them for training and evaluation")
        if model.training:
            self._component_steps += 1
            for name in LOSS_COMPONENTS:
                value = outputs[name] if name in outputs else None
                if value is not None:
                    self._component_sums[name] = self._component_sums[name] + value.detach().float()
                    self._component_counts[name] += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_steps:
            for name in LOSS_COMPONENTS:
                count = self._component_counts[name]
                if count:
                    logs[name] = round(float(self._component_sums[name]) / count, 6)
                logs[f"{name}_skipped"] = round(1.0 - count / self._component_steps, 4)
            self._component_sums = dict.fromkeys(LOSS_COMPONENTS, 0.0)
            self._component_counts = dict.fromkeys(LOSS_COMPONENTS, 0)
            self._component_steps = 0
        super().log(logs, start_time)


    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """
        Trainer pushes a checkpoint by copying a fixed list of files (config, weights) into the output dir and
        uploading that. A roadwork checkpoint also needs its model code (`trust_remote_code`) and a model card, or
        the Hub repo does not load between the first checkpoint and the end of training.
        """
        if self.is_world_process_zero() and self.args.push_to_hub:
            for name in os.listdir(checkpoint_folder):
                if name.endswith(".py"):
                    shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
            self.create_model_card()
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, **kwargs) -> None:
        """Writes the roadwork model card (README.md) to the output dir; `push_to_hub` uploads it."""
        if not self.is_world_process_zero():
            return
        metrics = dict(self.final_metrics)
        if not metrics:
            evals = [e for e in self.state.log_history if "eval_mcc" in e]
            if evals:
                best = max(evals, key=lambda e: e["eval_mcc"])
                metrics = {k: v for k, v in best.items() if k.startswith("eval_")}
        keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "warmup_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm",
                "bf16", "torch_compile", "seed")  # fmt: skip
        card = model_card(
            repo_id=self.args.hub_model_id or self.args.output_dir,
            config=self.accelerator.unwrap_model(self.model).config,
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            dataset=self.dataset_name, training_args={k: getattr(self.args, k) for k in keys},
            base_model=self.base_model,
        )  # fmt: skip
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w") as f:
            f.write(card)


def _format_metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def model_card(
    *,
    repo_id: str,
    config,
    metrics: Mapping[str, float] | None = None,
    dataset: str = ROADWORK_HUB_ID,
    training_args: Mapping | None = None,
    base_model: str | None = None,
) -> str:
    """A model card (README.md) for a roadwork checkpoint on the Hub: metrics, config, data, intended use, the
    DINOv3 licence note and a three-line load snippet."""
    metrics = dict(metrics or {})
    backbone = config.backbone_config
    backbone_name = base_model or (
        getattr(backbone, "architecture", None) if backbone.model_type == "timm_wrapper" else "DINOv3 ViT"
    )
    front = ["---", "library_name: transformers", "pipeline_tag: image-classification", "tags:", "- roadwork",
             "- streetvision", "- multi-view", "- custom_code"]  # fmt: skip
    if base_model:
        front.append(f"base_model: {base_model}")
    # Only a Hub dataset id belongs in the metadata ("synthetic" or a local folder would link nowhere).
    if dataset and "/" in dataset and not os.path.exists(dataset):
        front += ["datasets:", f"- {dataset}"]
    front.append("---")
    # Timings and epoch counters are not model quality.
    shown = {k: v for k, v in metrics.items() if not k.endswith(("runtime", "per_second", "epoch"))}
    metric_rows = "\n".join(f"| {k} | {_format_metric(v)} |" for k, v in sorted(shown.items())) or "| (none) | |"
    architecture = {
        "backbone": backbone_name, "views": config.num_views, "view_size": config.view_size,
        "kept_views": config.num_kept if config.use_view_pruning else None, "hidden_size": config.hidden_size,
        "attention_layers": config.num_attention_layers, "attention_heads": config.num_attention_heads,
        "view_fusion": config.use_view_fusion, "metadata": config.use_metadata,
        "loss_weights": [config.focal_loss_weight, config.consistency_loss_weight, config.weather_loss_weight,
                         config.seg_loss_weight],
    }  # fmt: skip
    training = json.dumps(dict(training_args), indent=2, default=str) if training_args else "(not recorded)"
    body = f"""
# {repo_id.rstrip("/").split("/")[-1]}

A multi-view roadwork classifier: does a street photo show roadwork (cones, barriers, road-work signs, workers,
construction vehicles)? Labels: `{config.id2label}`. Built with the roadwork project on `transformers`; the
model code ships with the checkpoint (`trust_remote_code=True`).

## Load

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained("{repo_id}", trust_remote_code=True)
classifier = pipeline("image-classification", model=model, image_processor=AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True))
```

`classifier("street.jpg")` returns the scores of `Roadwork` and `None`; the StreetVision miner reads the score of
`Roadwork` (> 0.5 means roadwork).

## Evaluation

| metric | value |
|---|---|
{metric_rows}

Predictions are thresholded as the StreetVision validators do (`round(p)`).

## Architecture

```json
{json.dumps(architecture, indent=2)}
```

## Training data

`{dataset}` (Parquet; label 0 = None, 1 = Roadwork), with metadata (GPS, weather, daytime, scene, description)
where present; all metadata may be absent at prediction time.

## Training arguments

```json
{training}
```

## Intended use and limits

Binary roadwork detection on street-level photos, e.g. for NATIX StreetVision miners. Not validated for safety-
critical use. Performance on SDXL-generated images and on images far from the training cities is lower than on
the evaluation split above. Serving sends no metadata: the model then uses its learned NULL embeddings.

## Licence note

The default backbone, DINOv3 (`facebook/dinov3-vith16plus-pretrain-lvd1689m`), is released under the DINOv3
License; its weights are part of this checkpoint, so use of this model is subject to that licence as well. Check
the licence of the timm backbone for ConvNeXt V2 variants.
"""
    return "\n".join(front) + "\n" + body.lstrip("\n")


__all__ = ["RoadworkTrainer", "compute_metrics", "classification_metrics", "roadwork_probabilities", "model_card"]
