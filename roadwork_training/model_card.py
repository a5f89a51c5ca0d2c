"""The model card (README.md) of a roadwork checkpoint."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping


def _format_metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def model_card(
    *,
    repo_id: str,
    config,
    metrics: Mapping[str, float] | None = None,
    dataset: str = "natix-network-org/roadwork",
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


__all__ = ["model_card"]
