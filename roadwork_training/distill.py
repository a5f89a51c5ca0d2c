"""Distil a roadwork checkpoint (or an ensemble of them) into a stock transformers image classifier.

The StreetVision subnet's stock miner loads its model with
`pipeline("image-classification", model=AutoModelForImageClassification.from_pretrained(repo),
feature_extractor=AutoImageProcessor.from_pretrained(repo, use_fast=True))` under transformers ~4.45, without
remote code. A roadwork checkpoint needs remote code and transformers 5, so it is distilled into an architecture
that 4.45 ships (`STUDENT_MODEL_TYPES`), served by a stock `ViTImageProcessor` at 224x224.

The student learns from what the miner is scored on: every training row goes through the validators' challenge
transform (`RoadworkValidatorTransform`, seeded per row and epoch), the teacher scores that very 224x224 image
through its own serving path (its processor, no metadata), and the student is trained on the teacher's tempered
probabilities plus the labels. Each (row, epoch) challenge image is used once, so the teacher runs inline on it;
nothing is worth caching.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from data_collator import RoadworkValidatorTransform
from data_collator.collator import SEED_STREAM_TRANSFORM, example_seed
from data_collator.schema import IMAGE_COLUMN, LABEL_COLUMN, labels_array

from .ensemble import RoadworkEnsembleMember, load_ensemble
from .metrics import classification_metrics, format_metric


logger = logging.getLogger(__name__)

STUDENT_ID2LABEL = {0: "None", 1: "Roadwork"}
STUDENT_IMAGE_SIZE = 224
# Model types with an `AutoModelForImageClassification` head in both transformers 4.45 (the subnet's pin) and 5
# (where the student trains) that take a plain (B, 3, H, W) `pixel_values`: not clip/siglip/perceiver/imagegpt
# (other inputs), not van/vit_hybrid/nat/dinat (gone from 5), not the types added after 4.45.
STUDENT_MODEL_TYPES = (
    "beit", "bit", "convnext", "convnextv2", "cvt", "data2vec-vision", "deit", "dinov2", "efficientnet", "focalnet",
    "hiera", "levit", "mobilenet_v1", "mobilenet_v2", "mobilevit", "mobilevitv2", "poolformer", "pvt", "pvt_v2",
    "regnet", "resnet", "segformer", "swiftformer", "swin", "swinv2", "vit", "vit_msn",
)  # fmt: skip
DEFAULT_STUDENT = "facebook/dinov2-small"


# --- teacher --------------------------------------------------------------------------------------------------


def _config_dict(name_or_path: str, flag: str) -> dict:
    """config.json of a folder or Hub repo, without building a model; SystemExit if there is none."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{flag} {name_or_path!r}: no readable config.json there ({error})") from error
    return config


def check_teacher(name_or_path: str, flag: str = "--teacher") -> None:
    """SystemExit unless `name_or_path` is a roadwork checkpoint (config `model_type` "roadwork")."""
    model_type = _config_dict(name_or_path, flag).get("model_type")
    if model_type != "roadwork":
        raise SystemExit(
            f"{flag} {name_or_path!r} is not a roadwork checkpoint: its config.json has model_type {model_type!r}, "
            "expected 'roadwork'. Give the output_dir of train.py (or finetune_dora.py's base) or its Hub repo."
        )


def teacher_members(teacher: str | None, ensemble: str | None) -> list[RoadworkEnsembleMember]:
    """
    The teacher's members: `--teacher` alone, or the members of the `--ensemble` file (the one format of
    `roadwork_training.ensemble`: an object or the bare list; paths resolved against the file; weights normalised).
    SystemExit naming the file and the bad field when the file is wrong.
    """
    if ensemble is None:
        return [RoadworkEnsembleMember(model=teacher)]
    try:
        return load_ensemble(ensemble).resolved_members()
    except ValueError as error:
        raise SystemExit(f"--ensemble {error}") from error


class RoadworkTeacher:
    """
    A weighted average of roadwork checkpoints, each through its own serving path: its `RoadworkImageProcessor`
    on the challenge image, no metadata. `probabilities(images, temperature)` -> (B, 2).
    """

    def __init__(self, members: Sequence[RoadworkEnsembleMember]):
        from transformers import AutoModelForImageClassification

        from modeling_roadwork import RoadworkImageProcessor

        self.members = list(members)
        self.models, self.processors = [], []
        for member in self.members:
            kwargs = {"revision": member.model_revision} if member.model_revision else {}
            model = AutoModelForImageClassification.from_pretrained(member.model, trust_remote_code=True, **kwargs)
            if member.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, member.adapter)
            self.models.append(model.eval())
            self.processors.append(RoadworkImageProcessor.from_pretrained(member.model, **kwargs))

    def num_parameters(self) -> int:
        return sum(p.numel() for model in self.models for p in model.parameters())

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image], temperature: float = 1.0) -> torch.Tensor:
        """(B,) PIL images -> (B, 2) weighted mean over members of softmax(logits / temperature)."""
        total = None
        for model, processor, member in zip(self.models, self.processors, self.members):
            pixel_values = processor(list(images), return_tensors="pt")["pixel_values"]  # (B, V, 3, S, S)
            probs = (model(pixel_values=pixel_values).logits.float() / temperature).softmax(-1) * member.weight
            total = probs if total is None else total + probs
        return total


# --- student --------------------------------------------------------------------------------------------------


def _student_model_type(student: str) -> tuple[str, bool]:
    """(model type, pretrained?) of --student: a model type builds a random student, anything else is loaded."""
    if student in STUDENT_MODEL_TYPES:
        return student, False
    if "/" not in student and not os.path.isdir(student):
        raise SystemExit(
            f"--student {student!r} is neither an architecture transformers 4.45 serves for image classification "
            f"({', '.join(STUDENT_MODEL_TYPES)}) nor a folder or Hub id of such a checkpoint"
        )
    model_type = _config_dict(student, "--student").get("model_type")
    if model_type not in STUDENT_MODEL_TYPES:
        raise SystemExit(
            f"--student {student!r} has model_type {model_type!r}, which the StreetVision miner's transformers 4.45 "
            f"cannot load as a stock image classifier; use one of {', '.join(STUDENT_MODEL_TYPES)}"
        )
    return model_type, True


def check_student(student: str, student_config: dict) -> str:
    """The student's model type, after checking it (and any `--student_config` keys) before training."""
    from transformers import AutoConfig

    model_type, pretrained = _student_model_type(student)
    if student_config:
        if pretrained:
            raise SystemExit("--student_config builds a random student: give --student a model type such as vit")
        config_class = type(AutoConfig.for_model(model_type))
        from .arguments import check_config_fields

        check_config_fields(student_config, config_class, flag="student_config")
    return model_type


def _labelled(config) -> None:
    config.num_labels = len(STUDENT_ID2LABEL)
    config.id2label = dict(STUDENT_ID2LABEL)
    config.label2id = {v: k for k, v in STUDENT_ID2LABEL.items()}


def build_student(student: str, student_config: dict | None = None, image_size: int = STUDENT_IMAGE_SIZE):
    """
    -> (model, image processor): a random `student` model type built from `student_config` at `image_size`, or a
    pretrained folder / Hub id with a fresh 2-label head. The processor is a stock `ViTImageProcessor` (plain
    resize to image_size x image_size, the checkpoint's mean and std), whatever the architecture; in transformers 5
    it is the torchvision implementation, the one the miner's `AutoImageProcessor.from_pretrained(repo,
    use_fast=True)` gives in 4.45 (`ViTImageProcessorFast`) and in 5.
    """
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    student_config = dict(student_config or {})
    model_type = check_student(student, student_config)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet, as the stock checkpoints use
    if student in STUDENT_MODEL_TYPES:
        config = AutoConfig.for_model(model_type, **student_config)
        if hasattr(config, "image_size"):
            config.image_size = image_size
        _labelled(config)
        model = AutoModelForImageClassification.from_config(config)
    else:
        config = AutoConfig.from_pretrained(student)
        _labelled(config)
        model = AutoModelForImageClassification.from_pretrained(student, config=config, ignore_mismatched_sizes=True)
        try:
            from transformers import AutoImageProcessor

            source = AutoImageProcessor.from_pretrained(student)
            mean, std = list(source.image_mean), list(source.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            logger.info("%s has no image processor with a mean and std: ImageNet's are used", student)
    processor = ViTImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=Image.BILINEAR, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=mean, image_std=std,
    )  # fmt: skip
    return model, processor


def legacy_config_dict(config) -> dict:
    """
    The student's config.json as transformers 4.45 reads it: transformers 5 writes the weights' type as `dtype`,
    4.45 reads `torch_dtype` (and keeps an unknown `dtype` as a string attribute); labels are written out even
    where 5 would omit them as defaults.
    """
    values = config.to_dict()
    dtype = values.pop("dtype", None)
    if dtype is not None:
        values["torch_dtype"] = str(dtype).removeprefix("torch.")
    values["id2label"] = {str(k): v for k, v in STUDENT_ID2LABEL.items()}
    values["label2id"] = {v: k for k, v in STUDENT_ID2LABEL.items()}
    return values


def export_student(model, processor, output_dir: str) -> None:
    """model.safetensors, a 4.45-readable config.json and a stock ViTImageProcessor preprocessor_config.json."""
    os.makedirs(output_dir, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(output_dir, safe_serialization=True)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(legacy_config_dict(model.config), f, indent=2, sort_keys=True)
        f.write("\n")
    # Written by hand: the keys every transformers release since 4.2x reads, naming the slow class, which 4.45
    # and 5 both map to ViTImageProcessor with use_fast=True.
    preprocessor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": dict(processor.size),
        "resample": int(Image.BILINEAR),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(processor.image_mean),
        "image_std": list(processor.image_std),
    }
    with open(os.path.join(output_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor, f, indent=2)
        f.write("\n")


def miner_classifier(folder: str):
    """The StreetVision stock miner's exact call on an exported folder."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    return pipeline(
        "image-classification",
        model=AutoModelForImageClassification.from_pretrained(folder),
        feature_extractor=AutoImageProcessor.from_pretrained(folder, use_fast=True),
    )


def roadwork_scores(classifier, images: Sequence[Image.Image]) -> np.ndarray:
    """(N,) the score of "Roadwork" that the miner returns, from an image-classification pipeline."""
    outputs = classifier(list(images), top_k=None)
    return np.asarray([next(o["score"] for o in out if o["label"] == "Roadwork") for out in outputs])


# --- data -----------------------------------------------------------------------------------------------------


class ChallengeImages(torch.utils.data.Dataset):
    """
    Rows of a split as the validators would send them: `{"image": 224x224 challenge PIL image, "label", "index"}`,
    drawn by `RoadworkValidatorTransform` with the seed RoadworkDataset gives row `index` in `epoch` (so epoch 0 is
    exactly train.py's `serving` evaluation condition with the same seed). No metadata.
    """

    def __init__(self, split, seed: int, transform: RoadworkValidatorTransform | None = None):
        from modeling_roadwork import RoadworkImageProcessor

        self.split = split
        self.seed = seed
        self.transform = transform or RoadworkValidatorTransform()
        self.loader = RoadworkImageProcessor()  # only its decoder (EXIF, modes, corrupt files) is used
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.split[index]
        cell = row[IMAGE_COLUMN]
        image = self.loader.load_image(dict(cell) if isinstance(cell, dict) else cell)
        # RoadworkDataset's seed for the whole-image transform: epoch 0 is the `serving` condition of train.py.
        challenge = self.transform(image, seed=example_seed(self.seed, self.epoch, index, SEED_STREAM_TRANSFORM))
        return {"image": challenge, "label": int(row[LABEL_COLUMN]), "index": index}


def collate_challenges(examples: list[dict]) -> dict[str, Any]:
    return {
        "images": [e["image"] for e in examples],
        "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
        "indices": [e["index"] for e in examples],
    }


# --- training -------------------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    label_loss_weight: float,
) -> dict[str, torch.Tensor]:
    """
    (B, 2) student logits, (B, 2) teacher probabilities at `temperature`, (B,) labels -> {"loss", "kd", "ce"}:
    loss = (1 - w) * T^2 * KL(teacher_T || student_T) + w * CE(student, labels). The T^2 keeps the soft term's
    gradient scale independent of T (Hinton et al., 2015).
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = F.kl_div(log_student, teacher_probs.float(), reduction="batchmean") * temperature**2
    ce = F.cross_entropy(student_logits.float(), labels)
    return {"loss": (1 - label_loss_weight) * kd + label_loss_weight * ce, "kd": kd, "ce": ce}


@dataclass
class DistillSettings:
    """The optimisation settings of `train_student` (the script's flags)."""

    num_train_epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    temperature: float = 2.0
    label_loss_weight: float = 0.2
    seed: int = 42
    dataloader_num_workers: int = 0
    max_grad_norm: float = 1.0
    history: list[dict] = field(default_factory=list)


def train_student(student, processor, teacher: RoadworkTeacher, train_split, settings: DistillSettings) -> list[dict]:
    """Trains `student` in place on challenge images of `train_split`; -> one log entry per epoch."""
    from transformers import get_cosine_schedule_with_warmup

    dataset = ChallengeImages(train_split, seed=settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, generator=generator, collate_fn=collate_challenges,
        num_workers=settings.dataloader_num_workers, drop_last=len(dataset) > settings.batch_size,
    )  # fmt: skip
    steps = len(loader) * settings.num_train_epochs
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)
    history = []
    progress = tqdm(total=steps, desc="distil", unit="step")
    for epoch in range(settings.num_train_epochs):
        dataset.set_epoch(epoch)  # workers copy the dataset when the iterator starts, so they see the new epoch
        student.train()
        sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
        agree = seen = 0
        for batch in loader:
            teacher_probs = teacher.probabilities(batch["images"], settings.temperature)  # the same challenge images
            pixel_values = processor(batch["images"], return_tensors="pt")["pixel_values"]  # (B, 3, 224, 224)
            logits = student(pixel_values=pixel_values).logits
            losses = distillation_loss(
                logits, teacher_probs, batch["labels"], temperature=settings.temperature,
                label_loss_weight=settings.label_loss_weight,
            )  # fmt: skip
            if not torch.isfinite(losses["loss"]):
                raise RuntimeError(f"non-finite distillation loss at epoch {epoch}: {losses}; lower --learning_rate")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            size = len(batch["images"])
            for name in sums:
                sums[name] += losses[name].item() * size
            agree += int((logits.argmax(-1) == teacher_probs.argmax(-1)).sum())
            seen += size
            progress.update(1)
            progress.set_postfix(loss=f"{losses['loss'].item():.4f}", epoch=epoch)
        entry = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()}, "train_agreement": agree / seen}
        history.append(entry)
        logger.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 4) for k, v in entry.items()}))
    progress.close()
    student.eval()
    return history


# --- evaluation -----------------------------------------------------------------------------------------------


def challenge_set(split, seed: int, limit: int | None = None) -> tuple[list[Image.Image], np.ndarray]:
    """Every row of `split` (or the first `limit`) as its epoch-0 challenge image, and the labels."""
    dataset = ChallengeImages(split, seed=seed)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images = [dataset[i]["image"] for i in tqdm(range(count), desc="challenge images", unit="img", leave=False)]
    return images, labels_array(split)[:count]


def teacher_scores(teacher: RoadworkTeacher, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
    chunks = [
        teacher.probabilities(images[i : i + batch_size])[:, 1].numpy()
        for i in tqdm(range(0, len(images), batch_size), desc="teacher", unit="batch", leave=False)
    ]
    return np.concatenate(chunks).astype(np.float64)


def compare(teacher_probs: np.ndarray, student_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Teacher and student metrics on the same images, and how often their thresholded answers agree."""
    return {
        "num_rows": int(len(labels)),
        "teacher": classification_metrics(teacher_probs, labels),
        "student": classification_metrics(student_probs, labels),
        "agreement": float(np.mean((teacher_probs > 0.5) == (student_probs > 0.5))),
        "mean_abs_probability_difference": float(np.mean(np.abs(teacher_probs - student_probs))),
    }


def latency_ms(predict: Callable[[Image.Image], Any], images: Sequence[Image.Image], warmup: int = 2) -> dict:
    """Per-image wall time of `predict(image)` (batch of one, preprocessing included) in milliseconds."""
    for image in images[:warmup]:
        predict(image)
    times = []
    for image in images:
        started = time.perf_counter()
        predict(image)
        times.append((time.perf_counter() - started) * 1000)
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "num_images": len(times)}


def format_summary(report: dict, split: str = "test") -> str:
    result = report["evaluation"][split]
    teacher, student = result["teacher"], result["student"]
    latency = report["latency_ms_per_image"]
    return (
        f"distill: {split} split, serving condition ({result['num_rows']} challenge images): MCC teacher "
        f"{format_metric(teacher.get('mcc'), 'mcc')} -> student {format_metric(student.get('mcc'), 'mcc')}, "
        f"accuracy {teacher['accuracy']:.4f} -> {student['accuracy']:.4f}, reward "
        f"{format_metric(teacher.get('streetvision_reward'), 'streetvision_reward')} -> "
        f"{format_metric(student.get('streetvision_reward'), 'streetvision_reward')}, agreement "
        f"{result['agreement']:.4f}; parameters {report['parameters']['teacher']:,} -> "
        f"{report['parameters']['student']:,}; CPU latency {latency['teacher']['median']:.1f} -> "
        f"{latency['student']['median']:.1f} ms/image; student {report['output_dir']}"
    )


__all__ = [
    "ChallengeImages",
    "DEFAULT_STUDENT",
    "DistillSettings",
    "RoadworkTeacher",
    "STUDENT_ID2LABEL",
    "STUDENT_IMAGE_SIZE",
    "STUDENT_MODEL_TYPES",
    "build_student",
    "challenge_set",
    "check_student",
    "check_teacher",
    "collate_challenges",
    "compare",
    "distillation_loss",
    "export_student",
    "format_summary",
    "latency_ms",
    "legacy_config_dict",
    "miner_classifier",
    "teacher_members",
    "roadwork_scores",
    "teacher_scores",
    "train_student",
]
