"""The YAML configs (configs/): they parse with train.py, base.yaml has the original design's numbers, and each
ensemble member has exactly its seed / learning rate / dropout / GPS weight / architecture difference. CPU, no
downloads."""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from roadwork_testing import tiny_config, tiny_timm_config

from modeling_roadwork import CONVNEXTV2_BASE_ID, DINOV3_VITH16PLUS_ID, RoadworkConfig, RoadworkForImageClassification


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # train.py is a script at the repo root, not part of the installed packages
    sys.path.insert(0, str(REPO))
import train  # noqa: E402
from roadwork_training.arguments import load_config_file  # noqa: E402


CONFIG_DIR = REPO / "configs"
# distill_*.yaml and dora*.yaml are the flags of distill.py and finetune_dora.py (parsed below and in their own test
# files), not train.py's.
OTHER_SCRIPTS = ("distill", "dora")
ALL_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith(OTHER_SCRIPTS))
BASELINE = "model_1_baseline"

# The ensemble of the original design (README, Training: six members): seed, learning rate, dropout, < 50 km GPS
# weight, augmentation scale ("Augmentation Strength Variations": 1.5x for model 2, 0.75x for model 3), and the
# RoadworkConfig fields that make the architecture differ from the baseline.
ENSEMBLE = {
    "model_1_baseline": dict(seed=42, lr=3e-4, dropout=0.10, gps=5.0, arch={}),
    "model_2_no_pruning": dict(
        seed=123, lr=2.5e-4, dropout=0.15, gps=7.5, augmentation_scale=1.5, arch={"use_view_pruning": False}
    ),
    "model_3_deeper": dict(
        seed=456, lr=3.5e-4, dropout=0.20, gps=3.0, augmentation_scale=0.75, arch={"num_attention_layers": 6}
    ),
    "model_4_wider": dict(
        seed=789, lr=3e-4, dropout=0.10, gps=5.0,
        arch={
            "hidden_size": 768, "pyramid_sizes": [384, 192], "fusion_hidden_size": 768, "classifier_hidden_size": 384,
            "fusion_gate_hidden_size": 192,
        },
    ),  # fmt: skip
    "model_5_16_heads": dict(seed=2026, lr=3e-4, dropout=0.10, gps=5.0, arch={"num_attention_heads": 16}),
    "model_6_convnext": dict(seed=314, lr=3e-4, dropout=0.10, gps=5.0, arch={}, backbone=CONVNEXTV2_BASE_ID),
}
# Width fields of RoadworkConfig: the "wider" member scales all of them by the same factor.
WIDTH_FIELDS = ("hidden_size", "fusion_hidden_size", "classifier_hidden_size", "fusion_gate_hidden_size")
# What a member may change relative to base.yaml; everything else must be identical.
MEMBER_KEYS = {
    "seed", "learning_rate", "output_dir", "gps_bracket_weights", "model_overrides", "backbone", "augmentation_scale",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_environ():
    # TrainingArguments may export ACCELERATE_* variables while parsing (torch_compile); keep them out of other tests.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _yaml(path: Path) -> dict:
    """The flags of a config file as train.py reads them (a `base:` file merged in)."""
    return load_config_file(str(path))


def _parse(path: Path):
    """
    train.parse_args on one config -> its TrainArguments (model, data, synthetic, augmentation, gps, run, training).
    """
    argv = ["--config", str(path)]
    if _yaml(path).get("bf16") and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        # TrainingArguments refuses bf16 without a bf16 GPU unless use_cpu is set; this machine may have none.
        argv += ["--use_cpu", "true"]
    return train.parse_args(argv)


def _ensemble_path(name: str) -> Path:
    return CONFIG_DIR / "ensemble" / f"{name}.yaml"


def _overrides(model_args) -> dict:
    return json.loads(model_args.model_overrides) if model_args.model_overrides else {}


def _config_dict(config: RoadworkConfig) -> dict:
    d = config.to_dict()
    for key in ("transformers_version", "_name_or_path"):
        d.pop(key, None)
    return d


# ---------------------------------------------------------------------------------------------- every config


def test_the_expected_configs_exist():
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in ALL_CONFIGS}
    expected = {"base.yaml", "quickstart.yaml"} | {f"ensemble/{name}.yaml" for name in ENSEMBLE}
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_parses_and_its_overrides_are_config_fields(path):
    args = _parse(path)
    model_args, gps, training_args = args.model, args.gps, args.training
    raw = _yaml(path)
    assert training_args.output_dir == raw["output_dir"]
    assert len(gps.bracket_weights) == len(gps.bracket_edges_km) + 1
    assert all(isinstance(w, float) for w in gps.bracket_weights), gps.bracket_weights
    assert gps.seed == training_args.seed, "the GPS centres are fitted with the run's seed"
    assert training_args.metric_for_best_model == "serving_mcc", "select on what a miner is scored on"
    # RoadworkConfig accepts **kwargs (PretrainedConfig), so a misspelt field would be silently ignored.
    fields = set(inspect.signature(RoadworkConfig.__init__).parameters) - {"self", "kwargs"}
    overrides = _overrides(model_args)
    assert set(overrides) <= fields, f"not RoadworkConfig fields: {sorted(set(overrides) - fields)}"
    if model_args.backbone_config is None:
        assert "backbone_config" not in overrides
        RoadworkConfig(**overrides)  # validates (raises ValueError); the real backbone is not downloaded
    else:
        RoadworkConfig(backbone_config=json.loads(model_args.backbone_config), **overrides)


def test_output_dirs_are_distinct():
    dirs = [_yaml(path)["output_dir"] for path in ALL_CONFIGS]
    assert len(dirs) == len(set(dirs)), dirs


def test_yaml_lists_reach_list_flags_as_lists():
    # A YAML list must arrive as a list of floats, not as a JSON string that argparse then tries to read as a float.
    gps = _parse(_ensemble_path("model_2_no_pruning")).gps
    assert gps.bracket_weights == [7.5, 2.5, 1.0, 0.3]
    assert gps.bracket_edges_km == [50.0, 200.0, 500.0]


# ---------------------------------------------------------------------------------------------- base.yaml


def test_base_has_the_original_design_numbers():
    args = _parse(CONFIG_DIR / "base.yaml")
    model_args, data_args, gps, run_args, t = args.model, args.data, args.gps, args.run, args.training
    assert model_args.backbone == DINOV3_VITH16PLUS_ID == "facebook/dinov3-vith16plus-pretrain-lvd1689m"
    assert model_args.backbone_config is None and model_args.model_name_or_path is None
    assert _overrides(model_args) == {"hidden_dropout": 0.10, "attention_dropout": 0.10}

    assert data_args.dataset == "natix-network-org/roadwork"
    assert (data_args.train_split, data_args.test_split) == ("train", "test")
    assert args.augmentation.strength == "heavy"
    assert run_args.gps_weighting is True and run_args.allow_weak_gps_weighting is False
    assert gps.num_clusters == 5
    assert gps.bracket_edges_km == [50.0, 200.0, 500.0]
    assert gps.bracket_weights == [5.0, 2.5, 1.0, 0.3]

    assert t.learning_rate == 3e-4
    assert t.num_train_epochs == 30
    assert t.warmup_steps == 500
    assert t.lr_scheduler_type == "cosine"
    assert t.per_device_train_batch_size == 32 and t.gradient_accumulation_steps == 2  # effective 64 per device
    assert t.optim == "adamw_torch"
    assert t.weight_decay == 0.01
    assert (t.adam_beta1, t.adam_beta2, t.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert t.max_grad_norm == 1.0
    assert t.bf16 is True and t.fp16 is False
    assert t.torch_compile is True and t.torch_compile_mode == "max-autotune"
    assert t.eval_strategy == "epoch" and t.save_strategy == "epoch"
    assert t.load_best_model_at_end is True
    assert t.metric_for_best_model == "serving_mcc" and t.greater_is_better is True
    assert run_args.early_stopping_patience == 5
    assert t.dataloader_num_workers > 0
    assert t.report_to in ([], "none", ["none"])
    assert t.output_dir == "outputs/base"
    assert t.seed == 42
    assert not _yaml(CONFIG_DIR / "base.yaml").get("use_cpu"), "base.yaml is a GPU recipe"


def test_base_model_config_is_the_original_architecture():
    config = RoadworkConfig(**_overrides(_parse(CONFIG_DIR / "base.yaml").model))
    assert (config.num_views, config.view_size, config.use_view_pruning, config.num_kept_views) == (12, 512, True, 8)
    assert (config.hidden_size, config.num_attention_layers, config.num_attention_heads) == (512, 4, 8)
    assert (config.hidden_dropout, config.attention_dropout) == (0.10, 0.10)


# ---------------------------------------------------------------------------------------------- ensemble


@pytest.mark.parametrize("name", ENSEMBLE)
def test_member_has_its_numbers(name):
    spec = ENSEMBLE[name]
    args = _parse(_ensemble_path(name))
    model_args, t = args.model, args.training
    assert t.seed == spec["seed"]
    assert t.learning_rate == spec["lr"]
    assert args.gps.bracket_weights[0] == spec["gps"]
    assert args.gps.bracket_weights[1:] == [2.5, 1.0, 0.3]
    assert t.output_dir == f"outputs/ensemble/{name}"
    assert args.augmentation.strength == "heavy"
    assert args.augmentation.scale == spec.get("augmentation_scale", 1.0)
    assert model_args.backbone == spec.get("backbone", DINOV3_VITH16PLUS_ID)
    assert model_args.backbone_config is None
    overrides = _overrides(model_args)
    assert overrides.pop("hidden_dropout") == overrides.pop("attention_dropout") == spec["dropout"]
    assert overrides == spec["arch"]


@pytest.mark.parametrize("name", ENSEMBLE)
def test_member_differs_from_base_only_where_intended(name):
    base, member = _yaml(CONFIG_DIR / "base.yaml"), _yaml(_ensemble_path(name))
    assert set(member) == set(base), f"keys differ: {sorted(set(member) ^ set(base))}"
    changed = {key for key in base if base[key] != member[key]}
    assert changed <= MEMBER_KEYS, f"{name} also changes {sorted(changed - MEMBER_KEYS)}"
    # Parsed training arguments too (catches a flag that differs only after defaults are applied).
    base_t = _parse(CONFIG_DIR / "base.yaml").training.to_dict()
    member_t = _parse(_ensemble_path(name)).training.to_dict()
    differing = {k for k in base_t if base_t[k] != member_t[k]}
    assert differing <= {"seed", "learning_rate", "output_dir", "logging_dir"}, sorted(differing)


@pytest.mark.parametrize("name", [n for n in ENSEMBLE if n != BASELINE])
def test_member_model_config_differs_from_the_baseline_as_intended(name):
    spec = ENSEMBLE[name]
    baseline = RoadworkConfig(**_overrides(_parse(_ensemble_path(BASELINE)).model))
    member = RoadworkConfig(**_overrides(_parse(_ensemble_path(name)).model))  # validates
    if "backbone" in spec:
        # The ConvNeXt member's backbone comes from the Hub id (not downloaded here); its head is the baseline's.
        assert spec["backbone"] == "timm/convnextv2_base.fcmae_ft_in22k_in1k"
        assert _config_dict(member) == _config_dict(baseline)
        return
    base_d, member_d = _config_dict(baseline), _config_dict(member)
    differing = {k for k in base_d if base_d[k] != member_d[k]}
    expected = set(spec["arch"])
    if spec["dropout"] != ENSEMBLE[BASELINE]["dropout"]:
        expected |= {"hidden_dropout", "attention_dropout"}
    assert differing == expected
    if name == "model_2_no_pruning":
        assert (baseline.num_kept, member.num_kept) == (8, 12)
    if name == "model_4_wider":
        assert member.hidden_size // member.num_attention_heads == 96
        for field in WIDTH_FIELDS:
            assert getattr(member, field) == getattr(baseline, field) * 3 // 2, field
        assert member.pyramid_sizes == [s * 3 // 2 for s in baseline.pyramid_sizes]
    if name == "model_5_16_heads":
        assert (member.hidden_size, member.hidden_size // member.num_attention_heads) == (512, 32)


# ---------------------------------------------------------------------------------------------- tiny variants


def _tiny_variant_config(name: str) -> RoadworkConfig:
    """The member's architecture on the tiny test config: booleans, layer and head counts as they are; widths scaled
    from the tiny ones by the member's factor (768 / 512 -> 32 becomes 48), so the test stays tiny."""
    spec = ENSEMBLE[name]
    overrides = {k: v for k, v in spec["arch"].items() if k not in WIDTH_FIELDS and k != "pyramid_sizes"}
    overrides.update(hidden_dropout=spec["dropout"], attention_dropout=spec["dropout"])
    if "hidden_size" in spec["arch"]:
        tiny, default = tiny_config(), RoadworkConfig()
        scale = spec["arch"]["hidden_size"] / default.hidden_size
        for field in WIDTH_FIELDS:
            overrides[field] = round(getattr(tiny, field) * scale)
        overrides["pyramid_sizes"] = [round(s * scale) for s in tiny.pyramid_sizes]
    if "backbone" in spec:
        overrides["backbone_config"] = tiny_timm_config()  # a ConvNeXt V2 of the same family, shrunk
    return tiny_config(**overrides)


@pytest.mark.parametrize("name", ENSEMBLE)
def test_tiny_variant_trains_on_view_features(name):
    torch.manual_seed(0)
    config = _tiny_variant_config(name)
    model = RoadworkForImageClassification(config).train()
    B, V = 3, config.num_views
    D = config.backbone_hidden_size
    out = model(view_features=torch.randn(B, V, D), labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (B, 2)
    assert out.view_logits.shape == (B, config.num_kept, 2)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    head = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(not n.startswith("roadwork.backbone.") for n, _ in head), "the backbone must stay frozen"
    for n, p in head:
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    grads = {n: p.grad for n, p in head}
    for n in (
        "classifier.fc1.weight", "roadwork.input_projection.weight", "roadwork.attention_layers.0.qkv_proj.weight",
        f"roadwork.attention_layers.{config.num_attention_layers - 1}.gate_proj.weight",
    ):  # fmt: skip
        assert grads[n] is not None and grads[n].abs().sum() > 0, n

    layers = model.roadwork.attention_layers
    assert len(layers) == config.num_attention_layers
    if name == "model_2_no_pruning":
        assert model.roadwork.view_pruning is None and config.num_kept == V
    else:
        assert model.roadwork.view_pruning is not None and config.num_kept == config.num_kept_views
    if name == "model_3_deeper":
        assert len(layers) == 6
    if name == "model_4_wider":
        assert config.hidden_size == 48 and layers[0].qkv_proj.weight.shape == (3 * 48, 48)
    if name == "model_5_16_heads":
        assert layers[0].num_heads == 16 and model.roadwork.view_fusion.cross_view_attention.num_heads == 16
    if name == "model_6_convnext":
        assert config.backbone_config.model_type == "timm_wrapper" and D == 32


def test_base_include_merges_mappings_and_detects_cycles(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "seed: 1\nlearning_rate: 0.1\nmodel_overrides:\n  hidden_size: 64\n  num_attention_heads: 4\n"
    )
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nseed: 2\nmodel_overrides:\n  num_attention_heads: 8\n")
    merged = load_config_file(str(tmp_path / "child.yaml"))
    assert merged == {"seed": 2, "learning_rate": 0.1,
                      "model_overrides": {"hidden_size": 64, "num_attention_heads": 8}}  # fmt: skip
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SystemExit, match="cycle"):
        load_config_file(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize("name", ["dora.yaml", "dora_quickstart.yaml"])
def test_dora_configs_parse_with_finetune_dora(name):
    import finetune_dora

    args = finetune_dora.parse_args(["--config", str(CONFIG_DIR / name), "--base_model", "unused"])
    assert args.training.weight_decay == 0.02 and args.training.warmup_steps == 0
    assert args.training.metric_for_best_model == "serving_mcc"


def test_bench_serving_reads_the_probes_challenge_share_from_the_train_config():
    """bench_serving.py fits its probe on the same share of challenge passes as the config's model trained on."""
    import importlib.util

    path = CONFIG_DIR.parent / "benchmarks" / "bench_serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_serving"] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop("bench_serving", None)
    trained = bench._train_config(str(CONFIG_DIR / "quickstart.yaml"), [])
    assert trained.data.serving_augmentation == 1.0 and trained.cache.feature_cache_passes == 3
    assert bench._synthetic_config(str(CONFIG_DIR / "quickstart.yaml"), []).num_train == 1000


def test_the_quality_benchmark_measures_the_quickstart_recipe():
    """
    bench_quality's config is the quickstart's model and recipe on its own data folder with the hard test splits: if
    the two drift apart, the README's quality table no longer says anything about the model the quickstart ships.
    """
    quickstart, quality = _yaml(CONFIG_DIR / "quickstart.yaml"), _yaml(CONFIG_DIR / "quality_quickstart.yaml")
    data_only = {"synthetic_num_hard_test", "synthetic_dir", "feature_cache", "output_dir"}
    differing = {key for key in set(quickstart) | set(quality) if quickstart.get(key) != quality.get(key)}
    assert differing <= data_only, f"quality_quickstart.yaml changes the recipe: {sorted(differing - data_only)}"
    # What the quality section measured as the winning recipe: the per-view detector (focal loss) on 224 px views,
    # trained with hard scenes (distant, occluded, look-alike) among the rows whose masks supervise it.
    overrides = quickstart["model_overrides"]
    overrides = json.loads(overrides) if isinstance(overrides, str) else overrides
    assert overrides["use_view_detector"] is True and overrides["view_size"] == 224
    assert overrides["detector_focal_gamma"] == 2.0
    assert quickstart["synthetic_train_hard_fraction"] > 0
