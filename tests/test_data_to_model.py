"""The data side feeds the model: collator keys are forward arguments, and real-schema rows train the model."""

from __future__ import annotations

import inspect

import torch
from roadwork_testing import VIEW_SIZE, tiny_config

from data_collator import (
    RoadworkDataCollator,
    RoadworkDataset,
    SyntheticDatasetConfig,
    build_vocabularies,
    generate_synthetic_dataset,
    load_roadwork_splits,
)
from data_collator.collator import FORWARD_KEYS
from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor


def test_forward_keys_are_the_model_forward_arguments():
    parameters = set(inspect.signature(RoadworkForImageClassification.forward).parameters) - {"self"}
    assert set(FORWARD_KEYS) <= parameters, set(FORWARD_KEYS) - parameters


def test_synthetic_rows_through_dataset_collator_and_model(tmp_path):
    generate_synthetic_dataset(tmp_path, SyntheticDatasetConfig(num_train=8, num_test=2, seed=3))
    train = load_roadwork_splits(str(tmp_path))["train"]
    config = tiny_config(**build_vocabularies(train))
    model = RoadworkForImageClassification(config)
    dataset = RoadworkDataset(train, RoadworkImageProcessor(view_size=VIEW_SIZE), vocabularies=config,
                              augmentation="heavy", seed=0)  # fmt: skip
    collator = RoadworkDataCollator(seg_mask_size=config.seg_resolution)
    batch = collator([dataset[i] for i in range(len(dataset))])
    assert batch["pixel_values"].shape == (8, 12, 3, VIEW_SIZE, VIEW_SIZE)
    assert set(batch) <= set(inspect.signature(model.forward).parameters)
    # The seeded synthetic rows carry masks on most rows (mask_rate 0.8), so the Dice loss must run on this batch.
    assert batch["seg_masks"].shape == (8, len(config.seg_class_names), config.seg_resolution, config.seg_resolution)
    assert batch["seg_mask_valid"].any() and not batch["seg_mask_valid"].all()
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.focal_loss is not None
    assert out.seg_loss is not None and torch.isfinite(out.seg_loss)
    out.loss.backward()
    assert model.classifier.fc1.weight.grad is not None
