#!/usr/bin/env python
"""
Distil a roadwork checkpoint (or an ensemble) into a stock transformers image classifier that the unmodified
StreetVision miner serves: transformers 4.45, no remote code, `pipeline("image-classification")`.

    python distill.py --config configs/distill_quickstart.yaml --teacher outputs/quickstart --output_dir OUT
    python distill.py --teacher owner/roadwork-model --output_dir outputs/student            # default student
    python distill.py --ensemble ensemble.json --student convnextv2 --student_config '{...}' --output_dir OUT
    python distill.py --teacher DIR --output_dir OUT --streetvision_hotkey 5Grw... --model_version 1.0.0 \\
        --push_to_hub --hub_model_id owner/roadwork-student

The student trains on the validators' challenge transform of the training images, on the teacher's probabilities
for the same images plus the labels. OUT gets model.safetensors, config.json, preprocessor_config.json,
README.md, distill_report.json (teacher vs student under serving conditions, parameters, CPU latency) and, with
--streetvision_hotkey, the subnet's model_card.json. `python distill.py --help` lists every flag.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import set_seed

from data_collator.synthetic import SyntheticDatasetConfig
from roadwork_training.arguments import RoadworkArgumentParser, json_arg, prefixed_arguments, to_config
from roadwork_training.build import DataArguments, load_data
from roadwork_training.distill import (
    DEFAULT_STUDENT,
    STUDENT_IMAGE_SIZE,
    DistillSettings,
    RoadworkTeacher,
    build_student,
    challenge_set,
    check_student,
    check_teacher,
    compare,
    export_student,
    format_summary,
    latency_ms,
    miner_classifier,
    roadwork_scores,
    teacher_members,
    teacher_scores,
    train_student,
)
from roadwork_training.distill_card import distill_model_card
from roadwork_training.ensemble import RoadworkEnsembleMember
from roadwork_training.flag_groups import SyntheticArguments
from roadwork_training.streetvision import (
    streetvision_model_card,
    validate_hotkey,
    validate_version,
    write_streetvision_model_card,
)


logger = logging.getLogger("roadwork.distill")

# The data flags that mean something here: the student never sees metadata or view augmentation.
DistillDataArguments = prefixed_arguments(
    DataArguments, "",
    include=("dataset", "synthetic_dir", "train_split", "test_split", "validation_fraction", "consistency_filter",
             "extra_eval_splits", "max_train_samples", "max_eval_samples"),
    name="DistillDataArguments",
)  # fmt: skip


@dataclass
class TeacherStudentArguments:
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "The roadwork checkpoint to distil: a train.py output_dir or a Hub id (model_type roadwork)."
        },
    )
    ensemble: str | None = field(
        default=None,
        metadata={
            "help": 'Instead of --teacher: an ensemble file {"members": [{"model": DIR_OR_HUB_ID, "weight": 1.0, '
            '"adapter": null}, ...]} (or the bare list; finetune_dora.py\'s ensemble.json; format in '
            "roadwork_training/ensemble.py); the teacher is the weighted mean of the members' probabilities with "
            "the file's weights, normalised (its combine rule is not used); adapter = a PEFT adapter on that member."
        },
    )
    student: str = field(
        default=DEFAULT_STUDENT,
        metadata={
            "help": "The student: a model type that transformers 4.45 serves (vit, dinov2, convnextv2, ...; built "
            "with random weights from --student_config) or a folder / Hub id of a pretrained checkpoint of one "
            f"(its head is replaced by a 2-label head). Default {DEFAULT_STUDENT} (ViT-S/14, 22M parameters)."
        },
    )
    student_config: str | None = field(
        default=None,
        metadata={
            "help": 'JSON (or a YAML mapping) of config fields for a random student given by model type, e.g. '
            '{"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 384}.'
        },
    )
    image_size: int = field(
        default=STUDENT_IMAGE_SIZE, metadata={"help": "Student input side; the validators send 224x224 images."}
    )
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T of the soft targets."})
    label_loss_weight: float = field(
        default=0.2,
        metadata={"help": "Weight w of the label cross-entropy; (1 - w) weighs the teacher term T^2 * KL."},
    )


@dataclass
class OptimisationArguments:
    output_dir: str = field(default="outputs/student", metadata={"help": "Where the exported student is written."})
    seed: int = field(default=42, metadata={"help": "Seed of the student init, the shuffling and the challenges."})
    num_train_epochs: int = field(default=10, metadata={"help": "Passes over the train split (new challenges each)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Teacher batch size in the evaluation."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate (cosine schedule)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of the steps spent warming up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Processes that decode and transform training images."}
    )
    latency_images: int = field(
        default=16, metadata={"help": "Images timed, one at a time, for each model's CPU latency in the report."}
    )


@dataclass
class PublishArguments:
    streetvision_hotkey: str | None = field(
        default=None,
        metadata={"help": "Your miner's hotkey (SS58 address): writes the subnet's model_card.json with it."},
    )
    model_version: str = field(default="1.0.0", metadata={"help": "model_card.json version, X.Y.Z."})
    model_name: str | None = field(
        default=None, metadata={"help": "model_card.json model_name (default: the repo or folder name)."}
    )
    model_description: str = field(
        default="Roadwork classifier distilled from a multi-view roadwork model; stock transformers architecture.",
        metadata={"help": "model_card.json description."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the output folder to --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "owner/name of the Hub repo to push to."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


@dataclass
class DistillRun:
    models: TeacherStudentArguments
    data: DataArguments
    synthetic: SyntheticDatasetConfig
    optimisation: OptimisationArguments
    publish: PublishArguments


def parse_args(argv: list[str] | None = None) -> DistillRun:
    parser = RoadworkArgumentParser(
        (TeacherStudentArguments, DistillDataArguments, SyntheticArguments, OptimisationArguments, PublishArguments),
        description=__doc__,
    )
    models, data, synthetic, optimisation, publish = parser.parse(argv)
    try:
        return DistillRun(models, to_config(data), to_config(synthetic), optimisation, publish)
    except ValueError as error:
        raise SystemExit(f"invalid flag value: {error}") from error


def check_inputs(args: DistillRun) -> list[RoadworkEnsembleMember]:
    """Every check that can fail on bad input, before any data or model is loaded: -> the teacher's members."""
    models, publish = args.models, args.publish
    if bool(models.teacher) == bool(models.ensemble):
        raise SystemExit("give the teacher as --teacher DIR_OR_HUB_ID or --ensemble FILE.json (exactly one of them)")
    members = teacher_members(models.teacher, models.ensemble)
    for member in members:
        check_teacher(member.model, "--ensemble member" if models.ensemble else "--teacher")
    check_student(models.student, json_arg(models.student_config, "student_config"))
    if models.temperature <= 0:
        raise SystemExit(f"--temperature must be positive, got {models.temperature}")
    if not 0 <= models.label_loss_weight <= 1:
        raise SystemExit(f"--label_loss_weight must be in [0, 1], got {models.label_loss_weight}")
    if models.image_size < 32:
        raise SystemExit(f"--image_size {models.image_size} is too small; the validators send 224")
    if args.optimisation.num_train_epochs < 1:
        raise SystemExit(f"--num_train_epochs must be at least 1, got {args.optimisation.num_train_epochs}")
    if publish.streetvision_hotkey is not None:
        validate_hotkey(publish.streetvision_hotkey)
        validate_version(publish.model_version)
    if publish.push_to_hub and not publish.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id owner/name")
    return members


def evaluate(args: DistillRun, splits: dict, teacher: RoadworkTeacher, output_dir: str) -> tuple[dict, dict]:
    """Teacher vs exported student on every evaluated split under the serving condition, and CPU latency."""
    classifier = miner_classifier(output_dir)  # the student as the miner loads it
    evaluation, test_images = {}, None
    for name, split in splits.items():
        if name == "train":
            continue
        images, labels = challenge_set(split, seed=args.optimisation.seed)
        teacher_probs = teacher_scores(teacher, images, args.optimisation.per_device_eval_batch_size)
        student_probs = roadwork_scores(classifier, images)
        evaluation[name] = compare(teacher_probs, student_probs, labels)
        if name == "test":
            test_images = images
    timed = (test_images or images)[: args.optimisation.latency_images]
    latency = {
        "threads": torch.get_num_threads(),
        "teacher": latency_ms(lambda image: teacher.probabilities([image]), timed),
        "student": latency_ms(lambda image: classifier(image), timed),
    }
    return evaluation, latency


def publish(args: DistillRun, report: dict) -> None:
    out, options = args.optimisation.output_dir, args.publish
    repo_id = options.hub_model_id or os.path.basename(os.path.abspath(out))
    distill_model_card(repo_id=repo_id, report=report, dataset=args.data.dataset).save(os.path.join(out, "README.md"))
    if options.streetvision_hotkey:
        card = streetvision_model_card(
            model_name=options.model_name or repo_id.split("/")[-1], description=options.model_description,
            version=options.model_version, hotkey=options.streetvision_hotkey,
        )  # fmt: skip
        write_streetvision_model_card(out, card)
    if options.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(options.hub_model_id, private=options.hub_private_repo, exist_ok=True)
        commit = api.upload_folder(
            repo_id=options.hub_model_id, folder_path=out, commit_message="roadwork: distilled student"
        )
        logger.info("pushed %s to %s", out, commit.commit_url)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    started = time.time()

    # Stage 1: bad input stops here, before anything is loaded.
    members = check_inputs(args)
    set_seed(args.optimisation.seed)

    # Stage 2: data (no metadata is used; the vocabularies are not needed).
    splits, _ = load_data(args.data, args.optimisation.seed, args.synthetic)
    logger.info("rows: %s", ", ".join(f"{name} {len(split)}" for name, split in splits.items()))

    # Stage 3: teacher and student.
    teacher = RoadworkTeacher(members)
    student, processor = build_student(
        args.models.student, json_arg(args.models.student_config, "student_config"), args.models.image_size
    )
    parameters = {"teacher": teacher.num_parameters(), "student": sum(p.numel() for p in student.parameters())}
    logger.info("parameters: teacher %d, student %d", parameters["teacher"], parameters["student"])

    # Stage 4: distil on challenge images.
    opt = args.optimisation
    settings = DistillSettings(
        num_train_epochs=opt.num_train_epochs, batch_size=opt.per_device_train_batch_size,
        learning_rate=opt.learning_rate, weight_decay=opt.weight_decay, warmup_ratio=opt.warmup_ratio,
        temperature=args.models.temperature, label_loss_weight=args.models.label_loss_weight, seed=opt.seed,
        dataloader_num_workers=opt.dataloader_num_workers, max_grad_norm=opt.max_grad_norm,
    )  # fmt: skip
    history = train_student(student, processor, teacher, splits["train"], settings)

    # Stage 5: export, then evaluate the exported folder as the miner loads it.
    export_student(student, processor, opt.output_dir)
    evaluation, latency = evaluate(args, splits, teacher, opt.output_dir)
    training = {k: v for k, v in asdict(settings).items() if k != "history"}
    report = {
        "condition": "serving: each row through the validators' challenge transform (seeded per row, epoch 0, "
        f"seed {opt.seed}), no metadata, round(p) thresholding; student scores from the exported folder through "
        "the stock miner's pipeline call",
        "evaluation": evaluation,
        "parameters": parameters,
        "latency_ms_per_image": latency,
        "teacher": {"members": [asdict(m) for m in members]},
        "student": {"source": args.models.student, "model_type": student.config.model_type,
                    "architecture": type(student).__name__, "image_size": args.models.image_size},
        "training": {**training, "history": history, "train_rows": len(splits["train"]),
                     "dataset": args.data.dataset, "wall_time_s": round(time.time() - started, 1)},
        "output_dir": os.path.abspath(opt.output_dir),
    }  # fmt: skip
    with open(os.path.join(opt.output_dir, "distill_report.json"), "w") as f:
        json.dump(report, f, indent=2)

    # Stage 6: cards and push.
    publish(args, report)
    report["line"] = format_summary(report, "test" if "test" in evaluation else next(iter(evaluation)))
    print(report["line"], flush=True)
    return report


if __name__ == "__main__":
    main()
