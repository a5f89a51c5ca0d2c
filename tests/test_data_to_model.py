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
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.focal_loss is not None
    if bool(batch.get("seg_mask_valid", torch.zeros(1)).any()):
        assert out.seg_loss is not None
    out.loss.backward()
    assert model.classifier.fc1.weight.grad is not None
