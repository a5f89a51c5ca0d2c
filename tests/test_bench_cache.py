"""The feature-cache benchmarks and the ablation command run on tiny settings and end in a parseable JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roadwork_training.ablate import ABLATIONS, markdown_table, summarise


ROOT = Path(__file__).resolve().parents[1]


def _last_json(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,flags,name",
    [
        ("bench_cache.py", ["--num_train", "8", "--view_size", "32", "--batch_size", "4"], "cache"),
        ("bench_ensemble.py", ["--images", "2", "--view_size", "32", "--repeats", "1"], "ensemble"),
        ("bench_flops.py", ["--view_size", "64", "--gpu_layers", "1", "--gpu_steps", "1"], "flops"),
    ],
)
def test_benchmark_prints_a_json_line(script, flags, name):
    result = _last_json([f"benchmarks/{script}", *flags])
    assert name in result["name"] and result["value"] > 0 and "target" in result


def test_flop_formula_matches_torch_flop_counter():
    """The analytic ViT FLOPs equal FlopCounterMode's count on a tiny DINOv3 of the same shape rules."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_flops import vit_flops

    config = DINOv3ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             patch_size=16, image_size=64, num_register_tokens=4, use_gated_mlp=True)  # fmt: skip
    config._attn_implementation = "eager"  # FlopCounterMode does not see inside CPU SDPA; eager attention is matmuls
    model = DINOv3ViTModel(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.randn(1, 3, 64, 64))
    analytic = vit_flops(hidden=64, layers=2, intermediate=96, patch=16, image=64, extra_tokens=5)["total"]
    assert counter.get_total_flops() == pytest.approx(analytic, rel=0.01)


def test_ablation_summary_and_table():
    runs = [
        {"ablation": "full", "description": "d", "serving_mcc": 0.2, "metadata_mcc": 0.5},
        {"ablation": "full", "description": "d", "serving_mcc": 0.4, "metadata_mcc": 0.7},
        {"ablation": "no_pyramid", "description": "p", "serving_mcc": 0.1, "metadata_mcc": 0.3},
    ]
    rows = summarise(runs)
    assert [r["ablation"] for r in rows] == ["full", "no_pyramid"]
    assert rows[0]["serving_mcc_mean"] == pytest.approx(0.3)
    assert rows[0]["serving_mcc_std"] == pytest.approx(0.1414, abs=1e-3)
    assert rows[0]["seeds"] == 2 and rows[1]["serving_mcc_std"] == 0.0
    table = markdown_table(rows, "Data: x.")
    assert "| full | 0.300 +- 0.141 | 0.600 +- 0.141 | 2 |" in table
    assert len({a.name for a in ABLATIONS}) == len(ABLATIONS)


@pytest.mark.slow
def test_ablation_command_writes_table_json_and_png(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "dataset: synthetic\nsynthetic_num_train: 24\nsynthetic_num_test: 8\nvalidation_fraction: 0.2\n"
        "use_text_embeddings: false\ngps_weighting: false\nbackbone_config:\n  model_type: dinov3_vit\n"
        "  hidden_size: 32\n  intermediate_size: 64\n  num_hidden_layers: 1\n  num_attention_heads: 2\n"
        "  patch_size: 16\n  image_size: 32\n"
        "  num_register_tokens: 4\nmodel_overrides:\n  view_size: 32\n  hidden_size: 32\n  num_attention_heads: 4\n"
        "  num_attention_layers: 1\n  fusion_hidden_size: 32\n  classifier_hidden_size: 16\n"
        "num_train_epochs: 1\nper_device_train_batch_size: 8\n"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "roadwork_training.ablate", "--config", str(config), "--seeds", "2", "--output_dir",
         str(out), "--synthetic_dir", str(tmp_path / "syn"), "--ablations", "full", "no_pyramid", "global_view_only"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "ablations.json").read_text())
    assert [r["ablation"] for r in result["rows"]] == ["full", "no_pyramid", "global_view_only"]
    assert all(r["seeds"] == 2 for r in result["rows"]) and len(result["runs"]) == 6
    assert (out / "ablations.png").stat().st_size > 1000 and "| full |" in (out / "ablations.md").read_text()
