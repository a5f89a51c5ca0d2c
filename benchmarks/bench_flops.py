"""FLOPs of the roadwork model, analytic, and the images/s they allow; measured on a GPU when one is present.

    python benchmarks/bench_flops.py                      # analytic table (+ GPU measurement if CUDA is available)
    python benchmarks/bench_flops.py --gpu_layers 2       # a quick GPU check on a 2-layer ViT of the real width

Backbone: DINOv3 ViT-H+/16 (hidden 1280, 32 layers, 20 heads, SwiGLU MLP of width 5120 = 3 matmuls, patch 16,
CLS + 4 register tokens) over 12 views at 512 px: 1029 tokens per view. Matmul FLOPs (2 per multiply-add) per layer:
QKV 3*2*N*d^2, scores and weighted sum 2*2*N^2*d, output projection 2*N*d^2, MLP 3*2*N*d*I; plus the patch
embedding. LayerNorm, RoPE and activations are left out (<1%). The head (default RoadworkConfig) is counted with
torch's FlopCounterMode on a real forward from `view_features`. The images/s line assumes an H100 SXM at 50% of its
dense bf16 peak (989 TFLOP/s). The GPU measurement builds the same ViT from `DINOV3_VITH16PLUS_KWARGS` with random
weights (no Hub) and times bf16 inference over 12-view images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_roadwork import RoadworkConfig, RoadworkForImageClassification
from modeling_roadwork.configuration_roadwork import DINOV3_VITH16PLUS_KWARGS
from roadwork_training.arguments import RoadworkArgumentParser


H100_BF16_DENSE_PEAK = 989e12
UTILISATION = 0.5


@dataclass
class FlopsArguments:
    num_views: int = field(default=12, metadata={"help": "Views per image."})
    view_size: int = field(default=512, metadata={"help": "Side of each view in pixels."})
    gpu_layers: int = field(default=32, metadata={"help": "Layers of the ViT timed on the GPU (32 = the real one)."})
    gpu_images: int = field(default=4, metadata={"help": "Images (x num_views views) per timed GPU batch."})
    gpu_steps: int = field(default=10, metadata={"help": "Timed GPU batches (after 3 warm-up batches)."})
    head_batch: int = field(default=1, metadata={"help": "Batch for counting the head's FLOPs."})


def vit_flops(*, hidden: int, layers: int, intermediate: int, patch: int, image: int, extra_tokens: int,
              gated_mlp: bool = True) -> dict[str, float]:  # fmt: skip
    """Matmul FLOPs of one ViT forward on one `image` x `image` view, by part."""
    patches = (image // patch) ** 2
    n = patches + extra_tokens
    mlp_matmuls = 3 if gated_mlp else 2
    per_layer = {
        "qkv": 3 * 2 * n * hidden * hidden,
        "attention": 2 * 2 * n * n * hidden,
        "out_proj": 2 * n * hidden * hidden,
        "mlp": mlp_matmuls * 2 * n * hidden * intermediate,
    }
    parts = {name: float(value * layers) for name, value in per_layer.items()}
    parts["patch_embed"] = float(2 * patches * (3 * patch * patch) * hidden)
    parts["total"] = sum(parts.values())
    parts["tokens"] = n
    return parts


def head_flops(batch: int = 1) -> float:
    """FLOPs of the default head (everything after the backbone) on `batch` images, counted by FlopCounterMode."""
    backbone = dict(DINOV3_VITH16PLUS_KWARGS, num_hidden_layers=1)  # the head only needs the backbone's width
    model = RoadworkForImageClassification(RoadworkConfig(backbone_config=backbone)).eval()
    features = torch.randn(batch, model.config.num_views, model.config.view_feature_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(view_features=features)
    return float(counter.get_total_flops()) / batch


def measure_gpu(args: FlopsArguments) -> dict | None:
    """bf16 images/s of the ViT-H+/16 (random weights, `gpu_layers` layers) on 12-view images; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(**dict(DINOV3_VITH16PLUS_KWARGS, num_hidden_layers=args.gpu_layers))
    model = DINOv3ViTModel(config).to("cuda", torch.bfloat16).eval()
    views = torch.randn(args.gpu_images * args.num_views, 3, args.view_size, args.view_size, device="cuda",
                        dtype=torch.bfloat16)  # fmt: skip
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values=views)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.gpu_steps):
            model(pixel_values=views)
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.gpu_steps
    return {"gpu": torch.cuda.get_device_name(), "layers": args.gpu_layers, "images_per_s": args.gpu_images / seconds}


def main(argv: list[str] | None = None) -> dict:
    (args,) = RoadworkArgumentParser((FlopsArguments,), description=__doc__).parse(argv)
    kw = DINOV3_VITH16PLUS_KWARGS
    per_view = vit_flops(hidden=kw["hidden_size"], layers=kw["num_hidden_layers"],
                         intermediate=kw["intermediate_size"], patch=kw["patch_size"], image=args.view_size,
                         extra_tokens=1 + kw["num_register_tokens"])  # fmt: skip
    backbone = per_view["total"] * args.num_views
    head = head_flops(args.head_batch)
    total = backbone + head
    rate = UTILISATION * H100_BF16_DENSE_PEAK
    print(
        f"ViT-H+/16 at {args.view_size} px: {per_view['tokens']} tokens, {per_view['total'] / 1e12:.2f} TFLOP per view"
    )
    for name in ("patch_embed", "qkv", "attention", "out_proj", "mlp"):
        print(f"  {name:12s} {per_view[name] / 1e9:9.1f} GFLOP ({per_view[name] / per_view['total']:.1%})")
    print(f"backbone x {args.num_views} views: {backbone / 1e12:.2f} TFLOP per image; head: {head / 1e9:.3f} GFLOP "
          f"({head / total:.4%} of the total)")  # fmt: skip
    images_per_s = rate / total
    print(f"H100 at {UTILISATION:.0%} of {H100_BF16_DENSE_PEAK / 1e12:.0f} TFLOP/s bf16 dense: "
          f"{images_per_s:.1f} images/s (backbone-bound: {images_per_s * 3600:.0f} images per hour)")  # fmt: skip
    measured = measure_gpu(args)
    if measured is None:
        print("no CUDA device: GPU measurement skipped")
    else:
        scale = args.gpu_layers / kw["num_hidden_layers"]
        print(f"measured on {measured['gpu']} ({measured['layers']} layers, bf16): {measured['images_per_s']:.1f} "
              f"images/s; scaled to 32 layers ~{measured['images_per_s'] * scale:.1f} images/s")  # fmt: skip
    result = {"name": "flops_h100_images_per_s_at_50pct", "value": round(images_per_s, 2), "target": None,
              "backbone_tflop_per_image": round(backbone / 1e12, 3), "head_gflop_per_image": round(head / 1e9, 4),
              "gpu": measured}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
