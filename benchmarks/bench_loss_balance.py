"""How much of the training signal each loss component carries: its share of the loss and of the gradient.

    python benchmarks/bench_loss_balance.py                                   # configs/quickstart.yaml
    python benchmarks/bench_loss_balance.py --config configs/quickstart.yaml --batches 8 \
        --train_args "--model_overrides '{\"consistency_target\": \"final\"}'"

For each of the first `--batches` training batches (as train.py builds them: augmentation, metadata dropout), every
weighted component `w_c * L_c` is back-propagated on its own and the L2 norm of its gradient over the trainable head
parameters is taken. Prints, per component, the mean share of the weighted loss and of the summed gradient norms, and
the cosine between each component's gradient and the classification (focal) gradient; then a JSON line
`{"name": "focal_gradient_share", "value": ..., ...}`. A component whose labels are absent from a batch is skipped in
that batch. This measures the signal at initialisation and early training; which balance serves best is measured on
serving MCC (README, Training).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser, set_seed  # noqa: E402

from data_collator import RoadworkDataCollator, RoadworkDataset, RoadworkViewAugmenter  # noqa: E402
from modeling_roadwork import LOSS_COMPONENTS, RoadworkImageProcessor, loss_weights  # noqa: E402
from roadwork_training.build import build_model, load_data  # noqa: E402


@dataclass
class BalanceArguments:
    config: str = field(default=str(REPO / "configs" / "quickstart.yaml"), metadata={"help": "train.py config."})
    train_args: str = field(default="", metadata={"help": "Extra train.py flags as one quoted string."})
    batches: int = field(default=8, metadata={"help": "Training batches to measure (the first ones of epoch 0)."})
    train_steps: int = field(
        default=0, metadata={"help": "Optimiser steps (AdamW, the config's learning rate) before measuring."}
    )


def component_gradients(model, batch) -> dict[str, dict[str, float]]:
    """For one batch: weighted loss value and gradient norm of each component present, and its cosine to focal."""
    params = [p for p in model.parameters() if p.requires_grad]
    outputs = model(**batch)
    weights = loss_weights(model.config)
    grads, values = {}, {}
    for name in LOSS_COMPONENTS:
        value = outputs[name]
        if value is None or weights[name] == 0:
            continue
        weighted = weights[name] * value
        grad = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grad, params)]
        )
        values[name] = weighted.item()
    focal = grads.get("focal_loss")
    result = {}
    for name, grad in grads.items():
        cosine = (
            float(torch.nn.functional.cosine_similarity(grad, focal, dim=0)) if focal is not None else float("nan")
        )
        result[name] = {"loss": values[name], "grad_norm": float(grad.norm()), "cosine_to_focal": cosine}
    return result


def _forever(loader):
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BalanceArguments).parse_args_into_dataclasses(args=argv)
    import train

    run = train.parse_args(["--config", args.config, "--output_dir", "/tmp/bench_loss_balance",
                            *shlex.split(args.train_args)])  # fmt: skip
    seed = run.training.seed
    set_seed(seed)
    splits, vocabularies = load_data(run.data, seed, run.synthetic)
    model = build_model(run.model, vocabularies, splits["train"]).train()
    processor = RoadworkImageProcessor.from_model_config(model.config)
    dataset = RoadworkDataset(
        splits["train"], processor, vocabularies=model.config, augmentation=RoadworkViewAugmenter(run.augmentation),
        seed=seed, metadata_dropout=run.data.metadata_dropout, metadata_field_dropout=run.data.metadata_field_dropout,
    )  # fmt: skip
    collator = RoadworkDataCollator(
        text_embed_dim=model.config.text_embed_dim, seg_mask_size=model.config.seg_resolution
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=run.training.per_device_train_batch_size, shuffle=True, collate_fn=collator,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=run.training.learning_rate)
    batches = _forever(loader)
    for _ in range(args.train_steps):
        batch = next(batches)
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    per_batch = [component_gradients(model, next(batches)) for _ in range(args.batches)]

    rows = {}
    for name in LOSS_COMPONENTS:
        present = [b for b in per_batch if name in b]
        if not present:
            continue
        loss_share = np.mean([b[name]["loss"] / sum(c["loss"] for c in b.values()) for b in present])
        grad_share = np.mean([b[name]["grad_norm"] / sum(c["grad_norm"] for c in b.values()) for b in present])
        cosine = np.mean([b[name]["cosine_to_focal"] for b in present])
        rows[name] = {"loss_share": float(loss_share), "gradient_share": float(grad_share),
                      "cosine_to_focal": float(cosine), "batches": len(present)}  # fmt: skip
    config = model.config
    print(f"{args.config} {args.train_args}: weights {loss_weights(config)}, consistency_target "
          f"{config.consistency_target}, after {args.train_steps} steps, {args.batches} batches")  # fmt: skip
    print(f"{'component':>18} {'loss share':>11} {'grad share':>11} {'cos(focal)':>11}")
    for name, row in rows.items():
        print(f"{name:>18} {row['loss_share']:>11.3f} {row['gradient_share']:>11.3f} {row['cosine_to_focal']:>11.3f}")
    result = {
        "name": "focal_gradient_share",
        "value": rows.get("focal_loss", {}).get("gradient_share"),
        "components": rows,
        "loss_weights": loss_weights(config),
        "consistency_target": config.consistency_target,
        "train_steps": args.train_steps,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
