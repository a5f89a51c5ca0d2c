"""The model card (README.md) of a roadwork checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from data_collator.schema import ROADWORK_HUB_ID

from .metrics import CONDITIONS, condition_table, format_metric


def _splits_with_conditions(metrics: Mapping[str, float]) -> list[str]:
    """Split names of keys `{split}_{condition}_{metric}`, validation and test first, in order of appearance."""
    splits: list[str] = []
    for key in metrics:
        for condition in CONDITIONS:
            marker = f"_{condition}_"
            if marker in key:
                split = key.split(marker)[0]
                if split not in splits and not any(split.endswith(f"_{c}") for c in CONDITIONS):
                    splits.append(split)
    order = {"validation": 0, "test": 1}
    return sorted(splits, key=lambda name: (order.get(name, 2), splits.index(name)))


def _probe_floor_section(floor: Mapping[str, object]) -> str:
    """What the probe floor fitted and chose (`probe_floor_*` metrics of train.py), as a paragraph and a table."""
    from .probe_floor import FLOOR_CHOICES  # here: probe_floor imports the model side, the card needs it only here

    fitted = ""
    if "probe_rows" in floor:
        fitted = (f" on {floor['probe_rows']} training rows ({floor.get('probe_passes', '?')} cached or drawn "
                  f"passes; its MCC on those rows {format_metric(floor.get('probe_train_mcc'), 'mcc')})")  # fmt: skip
    lines = [
        f"After training, the global linear path was fitted as a logistic-regression probe on the global view's "
        f"pooled backbone feature{fitted}. The head alone, the head plus the probe and the probe alone were then "
        f"scored on validation (serving MCC), and the best was kept: **{floor.get('choice', '?')}**. The numbers "
        f"above are those of the kept model.",
        "",
        "| model | validation serving MCC |",
        "|---|---|",
    ]
    for choice in FLOOR_CHOICES:
        if f"{choice}_score" in floor:
            lines.append(f"| {choice} | {format_metric(floor[f'{choice}_score'], 'mcc')} |")
    return "### probe floor\n\n" + "\n".join(lines)


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
    # Only a Hub model id belongs in the metadata (a local folder, `timm:` or `roadwork:` name would link nowhere).
    is_hub_id = base_model and "/" in base_model and ":" not in base_model
    if is_hub_id and not os.path.exists(os.path.expanduser(base_model)):
        front.append(f"base_model: {base_model}")
    # Only a Hub dataset id belongs in the metadata ("synthetic" or a local folder would link nowhere).
    if dataset and "/" in dataset and not os.path.exists(dataset):
        front += ["datasets:", f"- {dataset}"]
    front.append("---")
    # Timings and epoch counters are not model quality.
    shown = {k: v for k, v in metrics.items() if not k.endswith(("runtime", "per_second", "epoch"))}
    tables = []
    for split in _splits_with_conditions(shown):
        tables.append(f"### {split}\n\n{condition_table(shown, split)}")
    floor = {k.removeprefix("probe_floor_"): v for k, v in shown.items() if k.startswith("probe_floor_")}
    if floor:
        tables.append(_probe_floor_section(floor))
    rest = {k: v for k, v in shown.items()
            if not any(f"_{c}_" in k for c in CONDITIONS) and not k.startswith("probe_floor_")}  # fmt: skip
    if rest:
        tables.append("### other\n\n| metric | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {format_metric(v, k.rsplit('_', 1)[-1])} |" for k, v in sorted(rest.items())))  # fmt: skip
    evaluation = "\n\n".join(tables) or "No evaluation was recorded."
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
classifier = pipeline("image-classification", model=model, \
image_processor=AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True))
```

`classifier("street.jpg")` returns the scores of `Roadwork` and `None`; the StreetVision miner reads the score of
`Roadwork` (> 0.5 means roadwork).

## Evaluation

Each number is measured under a named condition, the one a StreetVision miner is scored on first:
- `serving`: no metadata, and every image goes through the validators' challenge transform (one of four
  distortion levels with equal probability: centre crop or random resized crop, rotation, flips, colour, JPEG,
  noise and blur, at 224x224; seeded per row, so a rerun gives the same numbers);
- `no_metadata`: no metadata, the full image;
- `metadata`: the row's metadata (GPS, weather, daytime, scene, description) as stored.

Predictions are thresholded as the validators do (`round(p)`); `streetvision_reward` is their formula
`(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3` over the whole split. Half of the validators' challenges are
SDXL-generated images, which no split here contains: nothing in this card measures them.

{evaluation}

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
critical use. Serving sends no metadata: the model then uses its learned NULL embeddings, which is what the
`serving` and `no_metadata` columns above measure.

## Licence note

The default backbone, DINOv3 (`facebook/dinov3-vith16plus-pretrain-lvd1689m`), is released under the DINOv3
License; its weights are part of this checkpoint, so use of this model is subject to that licence as well. Check
the licence of the timm backbone for ConvNeXt V2 variants.
"""
    return "\n".join(front) + "\n" + body.lstrip("\n")


__all__ = ["model_card"]
