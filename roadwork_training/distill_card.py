"""The model card (README.md) of a distilled student, through `huggingface_hub.ModelCard`."""

from __future__ import annotations

import json
import os

from huggingface_hub import ModelCard, ModelCardData

from .metrics import format_metric


_METRICS = ("mcc", "accuracy", "f1", "roc_auc", "streetvision_reward")


def _table(report: dict) -> str:
    rows = []
    for split, result in report["evaluation"].items():
        rows.append(f"### {split} ({result['num_rows']} challenge images)\n")
        rows.append("| metric | teacher | student |\n|---|---|---|")
        for name in _METRICS:
            teacher, student = result["teacher"].get(name), result["student"].get(name)
            rows.append(f"| {name} | {format_metric(teacher, name)} | {format_metric(student, name)} |")
        rows.append(f"| agreement (same answer) | | {result['agreement']:.4f} |\n")
    return "\n".join(rows)


def distill_model_card(*, repo_id: str, report: dict, dataset: str | None = None) -> ModelCard:
    """README.md of the exported student: how the miner loads it, what it was distilled from, measured numbers."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["roadwork", "streetvision", "knowledge-distillation"],
        base_model=report["student"]["source"] if "/" in report["student"]["source"] else None,
        datasets=[dataset] if dataset and "/" in dataset and not os.path.exists(dataset) else None,
    )
    teachers = "\n".join(
        f"- `{m['model']}`" + (f" + adapter `{m['adapter']}`" if m.get("adapter") else "")
        + f" (weight {m['weight']:.3f})"
        for m in report["teacher"]["members"]
    )
    latency = report["latency_ms_per_image"]
    training = json.dumps(report["training"], indent=2)
    content = f"""---
{data.to_yaml()}
---

# {repo_id.rstrip("/").split("/")[-1]}

A roadwork classifier (does a street photo show roadwork?) of a stock `transformers` architecture
(`{report["student"]["model_type"]}`, {report["parameters"]["student"]:,} parameters, 224x224 input), distilled from
a multi-view roadwork model. It needs no remote code and loads under transformers 4.45 (the StreetVision subnet's
pin) as well as 5.x, exactly as the subnet's stock miner loads it:

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
classifier = pipeline("image-classification", model=AutoModelForImageClassification.from_pretrained("{repo_id}"),
                      feature_extractor=AutoImageProcessor.from_pretrained("{repo_id}", use_fast=True))
```

`classifier("street.jpg")` returns the scores of `Roadwork` and `None`; a miner returns the `Roadwork` score
(> 0.5 means roadwork). Labels: `{{0: "None", 1: "Roadwork"}}`.

## Distillation

Teacher (probabilities averaged with these weights):
{teachers}

Every training image went through the StreetVision validators' challenge transform (one of four distortion levels:
centre crop, or rotation, random resized crop and flips, plus colour, JPEG, noise and blur; 224x224; seeded per row
and epoch); the teacher scored that same image without metadata, and the student learnt
`(1 - w) * T^2 * KL(teacher_T || student_T) + w * CE(labels)` with T = {report["training"]["temperature"]} and
w = {report["training"]["label_loss_weight"]}.

## Evaluation (serving condition)

Teacher and student on the same images: each evaluated row through the validators' challenge transform (seeded per
row), no metadata; predictions thresholded as the validators do (`round(p)`); `streetvision_reward` is their
formula `(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3` over the whole split; agreement is the share of images where
both give the same answer. The student's scores come from the exported folder through the miner's call above.
No split here contains the SDXL-generated images that make up half of the validators' challenges.

{_table(report)}

CPU latency per image (batch of one, preprocessing included, {latency["threads"]} threads, median of
{latency["student"]["num_images"]} images): teacher {latency["teacher"]["median"]:.1f} ms, student
{latency["student"]["median"]:.1f} ms.

## Training settings

```json
{training}
```

## Limits

The student learns what the teacher answers on challenge-transformed images; it is at most as good as the teacher
there and was evaluated on the splits above only. Not validated for safety-critical use.
"""
    return ModelCard(content)


__all__ = ["distill_model_card"]
