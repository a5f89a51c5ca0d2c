"""finetune_dora.py and roadwork_training.dora / dora_report / ensemble: folds, adapter targets, one fold end to end,
the ensemble combine rules, and the adapter's Hub round trip from a fresh process.

The end-to-end runs use a tiny roadwork model (tests/roadwork_testing.py) on a tiny synthetic dataset (24 train rows,
30 target rows, half of them roadwork, so that 5 stratified folds have both classes), 2 training steps.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from roadwork_testing import BLOCK_PROJECT_IMPORTS, tiny_config, tiny_dinov3_config

from roadwork_training.dora import (
    DoraArguments,
    DoraConfigError,
    apply_dora,
    build_folds,
    check_adapter_targets,
    load_base_model,
    prepare_folds,
)
from roadwork_training.dora_report import build_ensembles, fit_stacking, select_members
from roadwork_training.ensemble import (
    RoadworkEnsemble,
    RoadworkEnsembleMember,
    combine_mean,
    combine_stacked,
    combine_weighted,
    load_ensemble,
    mcc_weights,
)


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # finetune_dora.py is a script at the repo root
    sys.path.insert(0, str(REPO))
import finetune_dora  # noqa: E402


NUM_TRAIN, NUM_TEST = 24, 30
EVAL_BATCH = 8


# --- folds ----------------------------------------------------------------------------------------------------------


class _Split:
    """The little of `datasets.Dataset` that prepare_folds reads: columns by name."""

    def __init__(self, ids, labels):
        self.columns = {"id": list(ids), "label": list(labels)}
        self.column_names = list(self.columns)

    def __getitem__(self, key):
        return self.columns[key]

    def __len__(self):
        return len(self.columns["id"])


def _split(num_pos=27, num_neg=13):
    ids = [f"row-{i:03d}" for i in range(num_pos + num_neg)]
    return _Split(ids, [1] * num_pos + [0] * num_neg)


def test_folds_are_stratified_shuffled_and_cover_every_row_once():
    split = _split()
    folds = build_folds(split["id"], split["label"], 5, seed=42)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == sorted(split["id"]) and len(flat) == len(set(flat))
    label = dict(zip(split["id"], split["label"]))
    negatives = [sum(1 - label[i] for i in fold) for fold in folds]
    positives = [sum(label[i] for i in fold) for fold in folds]
    assert max(negatives) - min(negatives) <= 1 and sum(negatives) == 13  # 13 negatives over 5 folds: 2 or 3 each
    assert max(positives) - min(positives) <= 1
    assert folds[0] != split["id"][: len(folds[0])]  # shuffled, not the first rows
    assert build_folds(split["id"], split["label"], 5, seed=42) == folds
    assert build_folds(split["id"], split["label"], 5, seed=7) != folds


def test_folds_are_saved_then_reused(tmp_path):
    split, path = _split(), tmp_path / "test_folds.json"
    folds = prepare_folds(split, path, 5, seed=42)
    saved = json.loads(path.read_text())
    assert saved["folds"] == folds and saved["seed"] == 42
    # Reused as saved, not rebuilt: a file with another (valid) assignment wins over the seed.
    saved["folds"] = [folds[1], folds[0], *folds[2:]]
    path.write_text(json.dumps(saved))
    assert prepare_folds(split, path, 5, seed=42) == saved["folds"]


def test_saved_folds_of_another_split_are_refused(tmp_path):
    path = tmp_path / "test_folds.json"
    prepare_folds(_split(), path, 5, seed=42)
    other = _split()
    other.columns["id"][3] = "row-new"
    with pytest.raises(DoraConfigError, match=r"does not match the target split.*row-new|row-new"):
        prepare_folds(other, path, 5, seed=42)
    with pytest.raises(DoraConfigError, match="holds 5 folds, --num_folds is 4"):
        prepare_folds(_split(), path, 4, seed=42)


def test_too_few_rows_of_a_class_for_the_folds():
    split = _split(num_pos=20, num_neg=4)
    with pytest.raises(DoraConfigError, match=r"at least 5 rows of each class.*\{0: 4, 1: 20\}|\{1: 20, 0: 4\}"):
        build_folds(split["id"], split["label"], 5, seed=42)
    assert len(build_folds(split["id"], split["label"], 4, seed=42)) == 4


def test_duplicate_row_ids_are_refused(tmp_path):
    split = _split()
    split.columns["id"][1] = split.columns["id"][0]
    with pytest.raises(DoraConfigError, match="duplicate row ids"):
        prepare_folds(split, tmp_path / "f.json", 5, seed=42)


# --- targets --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    from modeling_roadwork import RoadworkForImageClassification

    torch.manual_seed(0)
    return RoadworkForImageClassification(tiny_config())


def test_adapter_targets_match_the_head_only(tiny_model):
    found = check_adapter_targets(tiny_model, ["qkv_proj", "out_proj"], ["classifier"], "tiny")
    assert sorted(found["targets"]) == sorted(
        [f"roadwork.attention_layers.{i}.{p}" for i in (0, 1) for p in ("qkv_proj", "out_proj")]
        + [f"roadwork.view_fusion.{a}.{p}" for a in ("cross_view_attention", "refinement_attention")
           for p in ("qkv_proj", "out_proj")]
    )  # fmt: skip
    # PEFT matches modules_to_save as a plain suffix: the auxiliary classifiers and the probe floor's path train too,
    # and we say so.
    heads = ["classifier", "global_classifier", "view_classifier", "weather_classifier"]
    assert sorted(found["trained_heads"]) == heads


def test_adapter_training_leaves_the_bases_batch_norm_statistics_alone():
    """With view_feature_norm='batch' the norm's running statistics are base buffers, not in the adapter: they must
    not move while the adapter trains, or the reloaded adapter would run on other statistics than it trained with."""
    from modeling_roadwork import RoadworkForImageClassification

    torch.manual_seed(0)
    base = RoadworkForImageClassification(tiny_config(view_feature_norm="batch", use_metadata=False))
    norm = base.roadwork.feature_norm
    norm.running_mean.fill_(0.5)
    before = norm.running_mean.clone(), norm.running_var.clone()
    peft_model = apply_dora(base, DoraArguments(), "tiny")
    peft_model.train()
    features = torch.randn(6, base.config.num_views, base.config.view_feature_size) * 3 + 2
    out = peft_model(view_features=features, labels=torch.tensor([0, 1] * 3))
    out.loss.backward()
    torch.testing.assert_close(norm.running_mean, before[0])
    torch.testing.assert_close(norm.running_var, before[1])
    # Without the freeze the same forward moves them (so the check above can fail).
    moving = RoadworkForImageClassification(tiny_config(view_feature_norm="batch", use_metadata=False)).train()
    start = moving.roadwork.feature_norm.running_mean.clone()
    moving(view_features=features)
    assert not torch.allclose(moving.roadwork.feature_norm.running_mean, start)


def test_bad_adapter_targets_fail_before_training(tiny_model):
    with pytest.raises(DoraConfigError, match=r"'qkv' matches no module of 'tiny'.*qkv_proj"):
        check_adapter_targets(tiny_model, ["qkv"], ["classifier"], "tiny")
    with pytest.raises(DoraConfigError, match="inside the frozen backbone"):
        check_adapter_targets(tiny_model, ["o_proj"], ["classifier"], "tiny")
    with pytest.raises(DoraConfigError, match="non-Linear"):
        check_adapter_targets(tiny_model, ["layer_norm"], ["classifier"], "tiny")
    with pytest.raises(DoraConfigError, match="--modules_to_save 'head' matches no module"):
        check_adapter_targets(tiny_model, ["qkv_proj"], ["head"], "tiny")


def test_a_base_that_is_not_a_roadwork_model_is_refused(tmp_path):
    from transformers import DINOv3ViTModel

    backbone = DINOv3ViTModel(tiny_dinov3_config())
    with pytest.raises(DoraConfigError, match="'dinov3_vit' model, not a roadwork checkpoint"):
        check_adapter_targets(backbone, ["qkv_proj"], ["classifier"], "dinov3")
    backbone.save_pretrained(tmp_path / "dinov3")
    with pytest.raises(DoraConfigError, match="does not load as a roadwork image classifier"):
        load_base_model(str(tmp_path / "dinov3"))


def test_base_folder_without_model_code_loads_with_the_local_class(tiny_model, tmp_path):
    from modeling_roadwork import RoadworkForImageClassification

    tiny_model.save_pretrained(tmp_path / "base")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert "AutoModelForImageClassification" in config["auto_map"]
    remote = load_base_model(str(tmp_path / "base"), dropout=0.2)
    assert type(remote).__module__.startswith("transformers_modules")  # the folder's own code
    config.pop("auto_map")
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    local = load_base_model(str(tmp_path / "base"), dropout=0.2)
    assert type(local) is RoadworkForImageClassification
    for model in (remote, local):
        assert model.config.hidden_dropout == model.config.attention_dropout == 0.2
        assert not any(p.requires_grad for p in model.roadwork.backbone.parameters())


# --- ensembles ------------------------------------------------------------------------------------------------------

P = np.array([[0.9, 0.6, 0.3], [0.2, 0.4, 0.1]])


def test_combine_rules_against_hand_computed_numbers():
    np.testing.assert_allclose(combine_mean(P), [0.6, 0.7 / 3], rtol=0, atol=1e-12)
    # weights 0.5, 0.3, 0.2: 0.45 + 0.18 + 0.06 = 0.69; 0.10 + 0.12 + 0.02 = 0.24
    np.testing.assert_allclose(combine_weighted(P, [0.5, 0.3, 0.2]), [0.69, 0.24], rtol=0, atol=1e-12)
    np.testing.assert_allclose(combine_weighted(P, [5, 3, 2]), [0.69, 0.24], rtol=0, atol=1e-12)
    # z = -1 + 2*0.9 + 1*0.6 - 1*0.3 = 1.1; z = -1 + 0.4 + 0.4 - 0.1 = -0.3
    np.testing.assert_allclose(
        combine_stacked(P, [2.0, 1.0, -1.0], -1.0), [1 / (1 + math.exp(-1.1)), 1 / (1 + math.exp(0.3))], atol=1e-12
    )
    assert mcc_weights([0.6, 0.3, -0.2]) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert mcc_weights([-0.1, float("nan")]) == [0.5, 0.5]


def test_ensemble_file_round_trip_and_errors(tmp_path):
    members = [
        RoadworkEnsembleMember(model="o/base", adapter=f"fold{i}", weight=w, validation_serving_mcc=m, fold=i)
        for i, w, m in ((2, 0.5, 0.5), (0, 0.3, 0.3), (4, 0.2, 0.2))
    ]
    ensemble = RoadworkEnsemble(members, "stacked", stacking_coefficients=[2.0, 1.0, -1.0], stacking_intercept=-1.0)
    (tmp_path / "fold2").mkdir()
    ensemble.save(tmp_path / "ensemble.json")
    loaded = load_ensemble(tmp_path / "ensemble.json")
    assert loaded.members == members and loaded.combine_method == "stacked"
    np.testing.assert_allclose(loaded.combine(P), combine_stacked(P, [2.0, 1.0, -1.0], -1.0), atol=0)
    np.testing.assert_allclose(loaded.combine(P, "mean"), [0.6, 0.7 / 3], atol=1e-12)
    assert loaded.resolve_adapter(loaded.members[0]) == str(tmp_path / "fold2")  # a folder next to the file
    assert loaded.resolve_adapter(loaded.members[1]) == "fold0"  # no such folder: left as given (a Hub id)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        loaded.combine(P[:, :2])
    with pytest.raises(ValueError, match="sum to 1"):
        RoadworkEnsemble([RoadworkEnsembleMember(model="b", adapter="a", weight=0.4)])
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a roadwork ensemble file"):
        load_ensemble(tmp_path / "bad.json")


def _record(fold, mcc, holdout_probabilities, holdout_labels):
    return {
        "fold": fold, "metrics": {"validation_serving_mcc": mcc}, "validation_labels": [0, 1, 1],
        "validation_probabilities": {"serving": [0.2, 0.7, 0.4]},
        "holdout": {"ids": [str(i) for i in range(len(holdout_labels))], "labels": holdout_labels,
                    "probabilities": holdout_probabilities},
    }  # fmt: skip


def test_build_ensembles_selects_top_folds_and_fits_stacking():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    noisy = lambda scale: np.clip(y * 0.6 + 0.2 + rng.normal(0, scale, len(y)), 0, 1).tolist()  # noqa: E731
    records = [
        _record(f, m, noisy(0.1 + 0.1 * f), y.tolist()) for f, m in enumerate([0.1, 0.5, float("nan"), 0.4, 0.3])
    ]
    assert [r["fold"] for r in select_members(records, 3)] == [1, 3, 4]
    ensemble, report = build_ensembles(
        records, base_model="o/base", base_revision="abc", size=3, adapters={f: f"fold{f}" for f in range(5)}
    )
    assert [m.fold for m in ensemble.members] == [1, 3, 4]
    assert [m.weight for m in ensemble.members] == pytest.approx([0.5 / 1.2, 0.4 / 1.2, 0.3 / 1.2])
    P = np.stack([np.asarray(records[f]["holdout"]["probabilities"]) for f in (1, 3, 4)], axis=1)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=1.0).fit(P, y)
    np.testing.assert_allclose(ensemble.stacking_coefficients, reference.coef_[0], rtol=1e-6)
    assert ensemble.stacking_intercept == pytest.approx(float(reference.intercept_[0]), rel=1e-6)
    assert set(report["ensembles"]) == {"mean", "mcc_weighted", "stacked"}
    assert report["pooled_out_of_fold"]["rows"] == 15
    assert ensemble.combine_method == report["combine"]
    mean_mcc = report["ensembles"]["mean"]["holdout"]["mcc"]
    from sklearn.metrics import matthews_corrcoef

    assert mean_mcc == pytest.approx(matthews_corrcoef(y, (P.mean(1) > 0.5).astype(int)))


def test_stacking_needs_both_classes():
    assert fit_stacking(np.full((4, 2), 0.7), np.ones(4, dtype=int)) == (None, None)


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    from data_collator import SyntheticDatasetConfig, ensure_synthetic_dataset

    path = tmp_path_factory.mktemp("dora_data") / "synthetic"
    ensure_synthetic_dataset(
        path, SyntheticDatasetConfig(num_train=NUM_TRAIN, num_test=NUM_TEST, test_positive_rate=0.5)
    )
    return path


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory) -> Path:
    from modeling_roadwork import RoadworkForImageClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dora_base") / "base"
    RoadworkForImageClassification(tiny_config()).save_pretrained(path)
    return path


def _args(synthetic_dir, base, out, *extra):
    return [
        "--config", str(REPO / "configs" / "dora_quickstart.yaml"), "--base_model", str(base),
        "--output_dir", str(out), "--synthetic_dir", str(synthetic_dir), "--synthetic_num_train", str(NUM_TRAIN),
        "--synthetic_num_test", str(NUM_TEST), "--synthetic_test_positive_rate", "0.5",
        "--use_text_embeddings", "false", "--folds", "0", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", str(EVAL_BATCH), "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--disable_tqdm", "true", "--learning_rate", "1e-2", *extra,
    ]  # fmt: skip


def _serving_batches(synthetic_dir, record, base):
    """The fold's validation rows under the serving condition, collated as the Trainer's evaluation does."""
    from data_collator import RoadworkDataCollator, load_roadwork_splits
    from modeling_roadwork import RoadworkImageProcessor
    from roadwork_training.build import condition_datasets

    target = load_roadwork_splits(str(synthetic_dir))["test"]
    ids = [str(i) for i in target["id"]]
    rows = target.select([ids.index(i) for i in record["validation_ids"]])
    config = base.config
    dataset = condition_datasets(rows, RoadworkImageProcessor.from_model_config(config), config, 42)["serving"]
    collator = RoadworkDataCollator(text_embed_dim=config.text_embed_dim, seg_mask_size=config.seg_resolution)
    for start in range(0, len(dataset), EVAL_BATCH):
        batch = collator([dataset[i] for i in range(start, min(start + EVAL_BATCH, len(dataset)))])
        yield {k: v for k, v in batch.items() if k in ("pixel_values", "gps", "weather_ids", "daytime_ids",
                                                        "scene_ids", "text_embeds")}  # fmt: skip


@pytest.mark.slow  # about 40 s on the shared 2-core machine
def test_one_fold_end_to_end_adapter_reloads_to_identical_predictions(synthetic_dir, tiny_base_dir, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "dora"
    result = finetune_dora.main(_args(synthetic_dir, tiny_base_dir, out))
    printed = capsys.readouterr().out
    assert "trainable params:" in printed and "fold 0: validation MCC serving" in printed
    record = result["records"][0]
    folds = json.loads((out / "test_folds.json").read_text())["folds"]
    assert record["validation_ids"] == sorted(folds[0], key=record["validation_ids"].index)
    assert sorted(record["validation_ids"]) == sorted(folds[0])
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "fold_result.json"} <= {
        p.name for p in (out / "fold0").iterdir()
    }
    assert not (out / "fold0" / "trainer").exists()
    adapter_config = json.loads((out / "fold0" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_base_dir)
    assert adapter_config["use_dora"] and adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert adapter_config["modules_to_save"] == ["classifier"]
    assert record["movement"]["dora_delta_norm"] > 0 and record["movement"]["heads_change_norm"] > 0
    for condition in ("serving", "no_metadata", "metadata"):
        assert f"validation_{condition}_accuracy" in record["metrics"]
    card = (out / "fold0" / "README.md").read_text()
    assert "fold 0 of 5" in card and "| metric | serving | no_metadata | metadata |" in card
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert ensemble["members"][0]["adapter"] == "fold0" and ensemble["members"][0]["model"] == str(tiny_base_dir)
    assert (out / "dora_report.md").read_text().startswith("# DoRA folds and ensembles (serving condition)")

    base = load_base_model(str(tiny_base_dir))
    model = PeftModel.from_pretrained(base, str(out / "fold0")).eval()
    with torch.no_grad():
        logits = torch.cat([model(**batch).logits for batch in _serving_batches(synthetic_dir, record, base)])
    assert torch.equal(logits, torch.tensor(record["validation_serving_logits"], dtype=torch.float32))

    # A second run reuses the saved folds; a wrong adapter target stops it before any training.
    with pytest.raises(SystemExit, match="adapter target 'qkv' matches no module"):
        finetune_dora.main(_args(synthetic_dir, tiny_base_dir, out, "--target_modules", "qkv"))
    assert json.loads((out / "test_folds.json").read_text())["folds"] == folds


@pytest.mark.slow  # about 30 s on the shared 2-core machine
def test_a_fold_on_a_detector_base_trains_and_saves_its_per_view_detector(synthetic_dir, tmp_path):
    """
    The quickstart's model has the per-view detector: `--modules_to_save classifier view_detector` trains a copy of it
    in the fold (the synthetic rows carry masks for its per-view loss), the adapter saves that copy, and the
    reloaded adapter reproduces the fold's serving logits while the base's own detector is untouched.
    """
    from peft import PeftModel

    from modeling_roadwork import RoadworkForImageClassification

    torch.manual_seed(0)
    base_dir = tmp_path / "detector_base"
    RoadworkForImageClassification(tiny_config(use_view_detector=True)).save_pretrained(base_dir)
    out = tmp_path / "dora"
    result = finetune_dora.main(
        _args(synthetic_dir, base_dir, out, "--modules_to_save", "classifier", "view_detector")
    )
    record = result["records"][0]
    assert json.loads((out / "fold0" / "adapter_config.json").read_text())["modules_to_save"] == [
        "classifier", "view_detector"
    ]  # fmt: skip

    base = load_base_model(str(base_dir))
    assert base.config.use_view_detector
    original = {k: v.clone() for k, v in base.view_detector.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(out / "fold0")).eval()
    wrapper = model.base_model.model.view_detector
    trained = wrapper.modules_to_save["default"].state_dict()
    assert any(not torch.equal(trained[k], original[k]) for k in original), "the fold did not train the detector"
    assert all(torch.equal(wrapper.original_module.state_dict()[k], original[k]) for k in original)
    with torch.no_grad():
        logits = torch.cat([model(**batch).logits for batch in _serving_batches(synthetic_dir, record, base)])
    assert torch.equal(logits, torch.tensor(record["validation_serving_logits"], dtype=torch.float32))


@pytest.mark.slow
def test_fold_adapters_on_the_hub_reproduce_predictions_in_a_fresh_process(
    synthetic_dir, tiny_base_dir, hub, tmp_path, fresh_python
):
    from huggingface_hub import HfApi
    from safetensors.torch import save_file

    base_repo = hub.unique_repo_id("roadwork-base")
    HfApi().create_repo(base_repo)
    HfApi().upload_folder(repo_id=base_repo, folder_path=str(tiny_base_dir))
    adapter_repo = hub.unique_repo_id("roadwork-dora")
    out = tmp_path / "dora"
    result = finetune_dora.main(_args(synthetic_dir, base_repo, out, "--push_to_hub", "--hub_model_id", adapter_repo))
    record = result["records"][0]
    fold_repo = f"{adapter_repo}-fold0"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(hub.files(fold_repo))
    adapter_config = json.loads(hub.read(fold_repo, "adapter_config.json"))
    assert adapter_config["base_model_name_or_path"] == base_repo
    assert adapter_config["revision"] == hub.head(base_repo)
    card = hub.read(fold_repo, "README.md").decode()
    assert f"base_model: {base_repo}" in card and "fold 0 of 5" in card
    row = " | ".join(
        f"{record['metrics'][f'validation_{c}_accuracy']:.4f}" for c in ("serving", "no_metadata", "metadata")
    )
    assert f"| accuracy | {row} |" in card
    assert json.loads((out / "ensemble.json").read_text())["members"][0]["adapter"] == fold_repo

    base = load_base_model(str(tiny_base_dir))
    batches = list(_serving_batches(synthetic_dir, record, base))
    for i, batch in enumerate(batches):
        save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / f"batch{i}.safetensors"))
    code = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
        f"""
        import json, torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForImageClassification
        torch.set_num_threads({torch.get_num_threads()})  # as in this process: CPU reductions depend on the split
        base = AutoModelForImageClassification.from_pretrained({base_repo!r}, trust_remote_code=True)
        model = PeftModel.from_pretrained(base, {fold_repo!r}).eval()
        with torch.no_grad():
            logits = torch.cat([model(**load_file({str(tmp_path)!r} + f"/batch{{i}}.safetensors")).logits
                                for i in range({len(batches)})])
        print(json.dumps(logits.tolist()))
        """
    )
    logits = json.loads(fresh_python(code, hub=hub).stdout.strip().splitlines()[-1])
    assert torch.equal(torch.tensor(logits), torch.tensor(record["validation_serving_logits"]))


def test_folds_train_from_the_feature_cache_with_one_backbone_pass_per_image(
    synthetic_dir, tiny_base_dir, tmp_path, monkeypatch
):
    """--feature_cache: the target split is extracted once (training, serving and clean passes) and the holdout's
    serving pass once; two folds then select their rows from those tables and train without running the backbone."""
    images = []

    def counting_base(*args, **kwargs):  # every base model finetune_dora loads counts its backbone's images
        model = load_base_model(*args, **kwargs)
        original = model.roadwork.extract_view_features

        def counting(pixel_values):
            images.append(pixel_values.shape[0])
            return original(pixel_values)

        model.roadwork.extract_view_features = counting
        return model

    monkeypatch.setattr(finetune_dora, "load_base_model", counting_base)
    out, cache_dir = tmp_path / "dora", tmp_path / "cache"
    args = _args(synthetic_dir, tiny_base_dir, out, "--feature_cache", str(cache_dir), "--folds", "0", "1",
                 "--max_steps", "1", "--eval_steps", "1", "--save_steps", "1")  # fmt: skip
    result = finetune_dora.main(args)

    passes = sorted(p for p in cache_dir.iterdir() if p.is_dir())
    assert sorted(p.name.split("-")[0] for p in passes) == ["clean", "serving", "serving", "train0"]
    rows = [json.loads((p / "info.json").read_text())["rows"] for p in passes]
    assert sum(images) == sum(rows)  # the backbone saw each image once per pass, for both folds together
    assert sorted(rows) == sorted([NUM_TEST] * 3 + [len(result["records"][0]["holdout"]["ids"])])
    folds = json.loads((out / "test_folds.json").read_text())["folds"]
    records = sorted(result["records"], key=lambda r: r["fold"])
    assert [r["fold"] for r in records] == [0, 1]
    for record in records:
        assert sorted(record["validation_ids"]) == sorted(folds[record["fold"]])
        assert record["epochs_run"] > 0 and record["movement"]["dora_delta_norm"] > 0
        for condition in ("serving", "no_metadata", "metadata"):
            assert f"validation_{condition}_accuracy" in record["metrics"]
