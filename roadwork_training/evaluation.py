"""Evaluation outside the Trainer: a checkpoint under every condition, and the linear probe it must beat.

The probe is the simplest peer of the multi-view model: logistic regression on the frozen backbone's pooled
feature of ONE view, the whole image resized to 224x224 (what a plain single-view classifier sees). It is scored on
the same rows and under the same conditions as the model (the `serving` challenge of a row is the same image for
both: both draw it from `RoadworkDataset` with the same seed), so every quality claim can be a comparison with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from data_collator import RoadworkDataCollator, RoadworkDataset, labels_array
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor, RoadworkTextEmbedder

from .build import condition_datasets
from .metrics import CONDITIONS, classification_metrics, roadwork_probabilities


logger = logging.getLogger(__name__)

PROBE_VIEW_SIZE = 224


def _loader(dataset, collator, batch_size: int, num_workers: int = 0):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers
    )


@torch.no_grad()
def predict_probabilities(
    model: RoadworkForImageClassification,
    dataset: RoadworkDataset,
    collator: RoadworkDataCollator,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    description: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """P(Roadwork) and the labels of every decodable row of `dataset` (corrupt rows are dropped by the collator)."""
    model.eval()
    device = next(model.parameters()).device
    probabilities, labels = [], []
    for batch in tqdm(_loader(dataset, collator, batch_size, num_workers), desc=description, leave=False):
        labels.append(batch.pop("labels").numpy())
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logits = model(**batch).logits
        probabilities.append(roadwork_probabilities(logits.float().cpu().numpy()))
    return np.concatenate(probabilities), np.concatenate(labels)


def evaluate_split_conditions(
    model: RoadworkForImageClassification,
    split,
    *,
    seed: int,
    image_processor: RoadworkImageProcessor | None = None,
    collator: RoadworkDataCollator | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, float]:
    """
    `{condition}_{metric}` for every condition of `roadwork_training.metrics.CONDITIONS`, built here from the raw
    `split` (the same datasets and seed as `train.py`'s evaluations, so the numbers match its `test_*` metrics).
    Not `roadwork_training.head_training.evaluate_conditions`, which scores ready-made condition datasets (e.g. from
    the feature cache) and returns `{condition: metrics}`.
    """
    processor = image_processor or RoadworkImageProcessor.from_model_config(model.config)
    collator = collator or metadata_collator(model.config)
    metrics = {}
    for condition, dataset in condition_datasets(split, processor, model.config, seed).items():
        probabilities, labels = predict_probabilities(
            model, dataset, collator, batch_size=batch_size, num_workers=num_workers, description=condition
        )
        metrics.update({f"{condition}_{k}": v for k, v in classification_metrics(probabilities, labels).items()})
    return metrics


def pipeline_serving_probabilities(model_name_or_path: str, split, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The serving condition as a StreetVision miner runs it: the checkpoint loaded with `AutoModelForImageClassification`
    and `AutoImageProcessor` (`trust_remote_code=True`) into `pipeline("image-classification")`, given each row's
    validator challenge (the same seeded challenge as the `serving` condition's) as a PIL image, no metadata.
    -> (N,) P(Roadwork) and (N,) labels; rows whose image does not decode are skipped.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    from data_collator import RoadworkValidatorTransform
    from data_collator.collator import SEED_STREAM_TRANSFORM, example_seed

    model = AutoModelForImageClassification.from_pretrained(model_name_or_path, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=True)
    classifier = pipeline("image-classification", model=model, image_processor=processor)
    challenge = RoadworkValidatorTransform()
    probabilities, labels = [], []
    for index in tqdm(range(len(split)), desc="pipeline (serving)", leave=False):
        row = split[index]
        try:
            image = processor.load_image(dict(row["image"]) if isinstance(row["image"], dict) else row["image"])
        except Exception as error:  # noqa: BLE001 - an undecodable image is skipped, as in every evaluation
            logger.warning("pipeline check: skipping row %d, its image does not decode (%s)", index, error)
            continue
        image = challenge(image, seed=example_seed(seed, 0, index, SEED_STREAM_TRANSFORM, 0))
        scores = {entry["label"]: entry["score"] for entry in classifier(image, top_k=None)}
        probabilities.append(scores["Roadwork"])
        labels.append(int(row["label"]))
    return np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=int)


def metadata_collator(config) -> RoadworkDataCollator:
    """The collator train.py uses: descriptions embedded with the config's text encoder when the model reads text."""
    embedder = RoadworkTextEmbedder.get(config.text_encoder_name) if config.use_metadata and config.use_text else None
    return RoadworkDataCollator(text_embedder=embedder, text_embed_dim=config.text_embed_dim)


@torch.no_grad()
def single_view_features(
    model: RoadworkForImageClassification,
    split,
    *,
    seed: int,
    serving: bool,
    batch_size: int = 16,
    num_workers: int = 0,
    cache_pass=None,
    pooling: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    The backbone's pooled feature of view 0 (the whole image, squashed to 224x224 with the backbone's own
    normalisation) of every row -> (N, D) features and (N,) labels. `serving=True` first applies the validators'
    challenge transform, seeded exactly as the model's `serving` condition is. A `cache_pass`
    ([`~roadwork_training.feature_cache.CachePass`]) instead draws that pass's pixels (its augmentation, challenge
    share, seed and epoch), so a probe can train on the images a model trained on. `pooling` overrides
    `config.backbone_pooling` (`"native"`: the backbone's own pooled output, whatever the model pools).
    """
    processor = RoadworkImageProcessor.from_model_config(model.config, view_size=PROBE_VIEW_SIZE)
    if cache_pass is not None:
        dataset = cache_pass.dataset(split, processor)
    else:
        dataset = RoadworkDataset(
            split, processor, vocabularies=model.config, seed=seed, use_metadata=False, scan_metadata_on_init=False,
            image_transform="validator" if serving else None, with_seg_masks=False,
        )  # fmt: skip
    collator = RoadworkDataCollator(include_text_embeds=False)
    device = next(model.parameters()).device
    features, labels = [], []
    description = "probe features (serving)" if serving else "probe features"
    if cache_pass is not None:
        description = f"probe features ({cache_pass.name})"
    for batch in tqdm(_loader(dataset, collator, batch_size, num_workers), desc=description, leave=False):
        global_view = batch["pixel_values"][:, 0].to(device)  # (B, V, 3, S, S) -> view 0: (B, 3, S, S)
        features.append(model.roadwork.embed_images(global_view, pooling=pooling).cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(features), np.concatenate(labels)


@dataclass
class LinearProbe:
    """Standardised features -> L2-regularised logistic regression (scikit-learn), fitted on one view per row."""

    mean: np.ndarray
    scale: np.ndarray
    classifier: object

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0) -> LinearProbe:
        from sklearn.linear_model import LogisticRegression

        if len(set(labels.tolist())) < 2:
            raise ValueError("the probe needs both classes among its training rows")
        mean, scale = features.mean(0), features.std(0) + 1e-6
        classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        classifier.fit((features - mean) / scale, labels)
        return cls(mean=mean, scale=scale, classifier=classifier)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) P(Roadwork)"""
        return self.classifier.predict_proba((features - self.mean) / self.scale)[:, 1]


def linear_probe_baseline(
    model: RoadworkForImageClassification, train_split, eval_split, *, seed: int, c: float = 1.0, batch_size: int = 16,
    serving_augmentation: float = 0.0, num_passes: int = 1,
) -> dict[str, float]:  # fmt: skip
    """
    Fits the probe on `train_split` (full images; with `serving_augmentation` > 0 also on `num_passes` training
    passes that turn that share of the rows into validator challenges, the model's `--serving_augmentation`) and
    scores `eval_split` -> `{condition}_{metric}` for `serving` and `no_metadata` (the probe reads no metadata, so
    `metadata` equals `no_metadata` and is reported as such).
    """
    from .feature_cache import CachePass

    features, labels = single_view_features(model, train_split, seed=seed, serving=False, batch_size=batch_size)
    if serving_augmentation:
        passes = [CachePass.training(k, None, seed, serving_augmentation) for k in range(num_passes)]
        drawn = [single_view_features(model, train_split, seed=seed, serving=False, batch_size=batch_size,
                                      cache_pass=p) for p in passes]  # fmt: skip
        features = np.concatenate([features, *(f for f, _ in drawn)])
        labels = np.concatenate([labels, *(y for _, y in drawn)])
    probe = LinearProbe.fit(features, labels, c=c, seed=seed)
    metrics = {}
    for condition, serving in (("serving", True), ("no_metadata", False)):
        eval_features, eval_labels = single_view_features(
            model, eval_split, seed=seed, serving=serving, batch_size=batch_size
        )
        scores = classification_metrics(probe.predict_proba(eval_features), eval_labels)
        metrics.update({f"{condition}_{k}": v for k, v in scores.items()})
    metrics.update({f"metadata_{k.removeprefix('no_metadata_')}": v for k, v in list(metrics.items())
                    if k.startswith("no_metadata_")})  # fmt: skip
    return {k: metrics[k] for c in CONDITIONS for k in metrics if k.startswith(f"{c}_")}


def label_balance(split) -> str:
    labels = labels_array(split)
    return f"{int(labels.sum())} roadwork / {int(len(labels) - labels.sum())} none"


__all__ = [
    "PROBE_VIEW_SIZE",
    "LinearProbe",
    "evaluate_split_conditions",
    "label_balance",
    "linear_probe_baseline",
    "metadata_collator",
    "pipeline_serving_probabilities",
    "predict_probabilities",
    "single_view_features",
]
