"""`RoadworkTrainer`: the HF Trainer with the GPS-weighted sampler, loss-component logging and roadwork checkpoints."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

import numpy as np
import torch
from transformers import Trainer

from data_collator.gps_weighting import make_gps_sampler
from data_collator.schema import ROADWORK_HUB_ID
from modeling_roadwork import LOSS_COMPONENTS, RoadworkPreTrainedModel

from .model_card import model_card


logger = logging.getLogger(__name__)


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
            # During training (a checkpoint push): the best evaluation so far, named as the final ones are.
            best = best_evaluation(self.state.log_history, self.args.metric_for_best_model)
            metrics = {f"validation_{k.removeprefix('eval_')}": v for k, v in best.items() if k.startswith("eval_")}
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


def best_evaluation(log_history: Sequence[dict], metric: str | None) -> dict:
    """The evaluation log entry with the best `metric` (`eval_` prefix optional; higher is better), or {}."""
    key = metric if (metric or "").startswith("eval_") else f"eval_{metric}"
    evals = [entry for entry in log_history if key in entry]
    return max(evals, key=lambda entry: entry[key]) if evals else {}


__all__ = ["RoadworkTrainer", "best_evaluation"]
