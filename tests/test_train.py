"""End-to-end tests of train.py on CPU: the command line, two processes, resuming, the Hub push, the output folder
and the GPS weighting gate.

Every run is a tiny variant of the quickstart (tests/configs/tiny_quickstart.yaml: a tiny random backbone, trained
end to end; 48 + 16 synthetic rows, batch 8, a few steps; see `TINY_ARGS`). The synthetic dataset is generated once per
session into a temporary ROADWORK_CACHE. Runs that must behave as a user's do (`python train.py`, `accelerate launch`,
a restart) are subprocesses; the argument parsing, the GPS gate and the Hub push run in-process through
`train.parse_args` / `train.main`.

Timings on the shared 2-core development machine: 3 to 3.5 minutes for the whole file (10 tests), about 30 s without
the `slow` ones.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from roadwork_testing import BLOCK_PROJECT_IMPORTS
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # train.py is a script at the repo root, not part of the installed packages
    sys.path.insert(0, str(REPO))
import train  # noqa: E402


QUICKSTART = REPO / "tests" / "configs" / "tiny_quickstart.yaml"
TRAIN_SCRIPT = REPO / "train.py"
NUM_TRAIN, NUM_TEST, BATCH = 48, 16, 8
# The quickstart, shrunk: 48 train rows (40 after the 15% validation split) and 16 test rows, batch 8.
TINY_ARGS = [
    "--config", str(QUICKSTART),
    "--synthetic_num_train", str(NUM_TRAIN), "--synthetic_num_test", str(NUM_TEST),
    "--per_device_train_batch_size", str(BATCH), "--dataloader_num_workers", "0",
    "--logging_steps", "1", "--disable_tqdm", "true",
]  # fmt: skip
_NUMBER = r"-?\d+\.\d{4}|undefined \(one class\)|not evaluated|-"
SUMMARY_RE = re.compile(
    rf"^roadwork: best validation serving_mcc (?P<best>{_NUMBER}) at epoch (?P<epoch>\d+\.\d{{2}}|nan); "
    rf"test MCC serving (?P<serving>{_NUMBER}) \| no_metadata (?P<no_metadata>{_NUMBER}) \| metadata "
    rf"(?P<metadata>{_NUMBER}); test reward \(serving\) (?P<reward>{_NUMBER})"
    rf"(?:; probe floor: (?P<floor>head|head\+probe|probe) kept \(validation head (?:{_NUMBER}), head\+probe "
    rf"(?:{_NUMBER}), probe (?:{_NUMBER})\))?; wall time (?P<minutes>\d+\.\d) min; "
    r"checkpoint (?P<checkpoint>.+)$",
    re.MULTILINE,
)
# log_history keys that measure time, not training.
TIMING_KEYS = ("runtime", "per_second")
# Resuming must reproduce the uninterrupted run. Measured: bit-identical (max |difference| 0.0) on CPU.
RESUME_ATOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Helpers and fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def roadwork_cache(tmp_path_factory) -> Path:
    """A ROADWORK_CACHE with the tiny synthetic dataset, generated once (before any two ranks could race for it)."""
    from data_collator import SyntheticDatasetConfig, ensure_synthetic_dataset

    cache = tmp_path_factory.mktemp("roadwork_cache")
    ensure_synthetic_dataset(cache / "synthetic", SyntheticDatasetConfig(num_train=NUM_TRAIN, num_test=NUM_TEST))
    return cache


@pytest.fixture(scope="session")
def train_env(roadwork_cache, tmp_path_factory) -> dict[str, str]:
    """Environment of a train.py subprocess: offline, our ROADWORK_CACHE, a private HF_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        ROADWORK_CACHE=str(roadwork_cache),
        HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_script(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> SimpleNamespace:
    """Runs a command; fails the test with the tail of its output unless it exits 0."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(command[:4])} ... exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return SimpleNamespace(stdout=proc.stdout, stderr=proc.stderr, cwd=cwd)


def run_train(args: list[str], env: dict[str, str], cwd: Path) -> SimpleNamespace:
    """`python train.py <args>` from `cwd` (not the repo: relative output dirs land in `cwd`)."""
    result = run_script([sys.executable, str(TRAIN_SCRIPT), *args], env, cwd)
    result.out = cwd / "run"
    return result


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def log_history(run_dir: Path) -> list[dict]:
    return read_json(run_dir / "trainer_state.json")["log_history"]


def without_timings(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not any(t in k for t in TIMING_KEYS)}


def fixed_image() -> Image.Image:
    """The image every parity check feeds (the fresh-process code builds the same one)."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------------------------
# 1-2. Command line
# ----------------------------------------------------------------------------------------------------------------


def _squash(text: str) -> str:
    # argparse re-wraps help text (and may break after hyphens): compare without any whitespace.
    return "".join(text.split())


def test_help_documents_every_flag(train_env):
    result = run_script([sys.executable, str(TRAIN_SCRIPT), "--help"], train_env, REPO, timeout=120)
    help_text = _squash(result.stdout)
    documented = []
    groups = (train.ModelArguments, train.DataArguments, train.SyntheticArguments, train.AugmentationArguments,
              train.GPSConfigArguments, train.RunArguments)  # fmt: skip
    for group in groups:
        for f in fields(group):
            text = f.metadata.get("help", "")
            assert text.strip(), f"{group.__name__}.{f.name} has no help text"
            assert f"--{f.name}" in result.stdout, f"--{f.name} is missing from --help"
            # argparse prints a literal % written as %% in a help string.
            assert _squash(text.replace("%%", "%")) in help_text, f"the help of --{f.name} is missing from --help"
            documented.append(f.name)
    assert len(documented) >= 20
    assert "--config" in result.stdout
    assert _squash("YAML file of flags; command-line flags override it.") in help_text
    # TrainingArguments come along too.
    assert "--learning_rate" in result.stdout and "--resume_from_checkpoint" in result.stdout


def test_command_line_overrides_yaml():
    args = train.parse_args(
        [
            "--config", str(QUICKSTART), "--learning_rate", "5e-4", "--augmentation_strength", "none",
            "--gps_bracket_weights", "1", "2", "3", "4", "--gps_weighting", "false", "--early_stopping_patience", "2",
            "--model_overrides", '{"hidden_size": 64}',
        ]
    )  # fmt: skip
    model, data, gps, run, training = args.model, args.data, args.gps, args.run, args.training
    # Overridden on the command line (quickstart.yaml: 1e-3, light, [5, 2.5, 1, 0.3], true, 5, hidden_size 128).
    assert training.learning_rate == 5e-4
    assert args.augmentation.strength == "none"
    assert gps.bracket_weights == [1.0, 2.0, 3.0, 4.0]
    assert run.gps_weighting is False
    assert run.early_stopping_patience == 2
    overrides = json.loads(model.model_overrides)
    assert overrides["hidden_size"] == 64 and overrides["view_size"] == 64, "merged into the YAML's mapping"
    # Not overridden: the YAML values, including YAML mappings passed on as JSON.
    assert training.seed == 42 and training.num_train_epochs == 4 and training.per_device_train_batch_size == 16
    assert data.dataset == "synthetic" and data.validation_fraction == 0.15
    assert args.synthetic.num_train == train.SyntheticDatasetConfig().num_train
    assert training.output_dir == "outputs/tiny_quickstart" and training.load_best_model_at_end is True
    backbone = json.loads(model.backbone_config)
    assert backbone["model_type"] == "dinov3_vit" and backbone["num_register_tokens"] == 4
    # Without the config file: the dataclass defaults.
    default = train.parse_args(["--output_dir", "x"])
    assert default.augmentation.strength == "heavy" and default.data.dataset == "natix-network-org/roadwork"


def test_yaml_lists_and_their_command_line_override(tmp_path):
    config = tmp_path / "lists.yaml"
    lists = "gps_bracket_edges_km: [40, 150, 400]\ngps_bracket_weights: [6, 2.5, 1, 0.25]\n"
    config.write_text(QUICKSTART.read_text() + "\n" + lists)  # ints on purpose: they must arrive as floats
    gps = train.parse_args(["--config", str(config)]).gps
    assert gps.bracket_edges_km == [40.0, 150.0, 400.0] and gps.bracket_weights == [6.0, 2.5, 1.0, 0.25]
    assert all(isinstance(v, float) for v in gps.bracket_edges_km + gps.bracket_weights)
    gps = train.parse_args(["--config", str(config), "--gps_bracket_weights", "1", "2", "3", "4"]).gps
    assert gps.bracket_weights == [1.0, 2.0, 3.0, 4.0] and gps.bracket_edges_km == [40.0, 150.0, 400.0]


def test_unknown_yaml_key_exits_naming_it(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(QUICKSTART.read_text() + "\nlearning_rat: 0.1\ngps_cluster: 3\n")
    with pytest.raises(SystemExit) as excinfo:
        train.parse_args(["--config", str(config)])
    message = str(excinfo.value)
    assert "learning_rat" in message and "gps_cluster" in message and str(config) in message
    assert "'learning_rate'" not in message  # only the unknown keys are named


# ----------------------------------------------------------------------------------------------------------------
# 3. Two processes
# ----------------------------------------------------------------------------------------------------------------

# Runs train.py as __main__ (so its exit path, destroy_process_group included, is the real one) under
# `accelerate launch`, and records from the outside what each rank trained on and wrote, without any debug option in
# the product code:
# - the collator adds the examples' row ids to each batch; the trainer removes them before the forward and logs
#   them (with the dataset's augmentation epoch) for every training step;
# - every file the rank opens for writing under the output dir, and every save_pretrained call;
# - the id sequence that the trainer's own GPS sampler draws in each epoch (identical on every rank by design).
RANK_LOGGER = r'''
import builtins, io, json, os, runpy, sys
sys.path.insert(0, {repo!r})
from transformers import PreTrainedModel
import data_collator
import roadwork_training

rank = int(os.environ.get("RANK", "0"))
out = os.path.abspath(sys.argv[sys.argv.index("--output_dir") + 1])
record = dict(rank=rank, world_size=int(os.environ.get("WORLD_SIZE", "1")), steps=[], writes=[], save_pretrained=[])
trainers = []


class IdCollator(data_collator.RoadworkDataCollator):
    def __call__(self, examples):
        batch = super().__call__(examples)
        batch["row_ids"] = [e["id"] for e in examples if not e.get("corrupt", False)]
        return batch


class RecordingTrainer(roadwork_training.RoadworkTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        trainers.append(self)

    def compute_loss(self, model, inputs, *args, **kwargs):
        ids = inputs.pop("row_ids", None)
        if model.training:
            record["steps"].append(
                dict(global_step=self.state.global_step, ids=ids, dataset_epoch=self.train_dataset.epoch)
            )
        return super().compute_loss(model, inputs, *args, **kwargs)


_open = builtins.open


def recording_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.abspath(os.fspath(file))
        if path.startswith(out + os.sep):
            record["writes"].append(os.path.relpath(path, out))
    return _open(file, mode, *args, **kwargs)


_save_pretrained = PreTrainedModel.save_pretrained


def recording_save_pretrained(self, save_directory, *args, **kwargs):
    record["save_pretrained"].append(os.path.relpath(os.path.abspath(save_directory), out))
    return _save_pretrained(self, save_directory, *args, **kwargs)


builtins.open = io.open = recording_open
PreTrainedModel.save_pretrained = recording_save_pretrained
data_collator.RoadworkDataCollator = IdCollator  # train.py imports both names from these modules
roadwork_training.RoadworkTrainer = RecordingTrainer
sys.argv[0] = {script!r}
try:
    runpy.run_path({script!r}, run_name="__main__")
finally:
    builtins.open = io.open = _open
    if trainers:
        trainer = trainers[0]
        ids = list(trainer.train_dataset.split["id"])
        sampler = trainer._get_train_sampler()
        record["sampler_ids"] = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            record["sampler_ids"].append([ids[i % len(ids)] for i in sampler])  # repeats come as row + k * N
    with open(os.path.join(os.environ["ROADWORK_TEST_RANK_LOG"], f"rank{{rank}}.json"), "w") as f:
        json.dump(record, f)
'''


@pytest.mark.slow
def test_two_processes_train_on_different_batches_and_save_once(train_env, tmp_path):
    """
    `accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine: two processes over gloo. (`--cpu
    --num_processes 2` starts one process.) Each rank must train on its own batches of the one shared sampler draw,
    rank 0 alone writes the model, card and metrics, and the launcher exits 0.
    """
    logger_script = tmp_path / "rank_logger.py"
    logger_script.write_text(RANK_LOGGER.format(repo=str(REPO), script=str(TRAIN_SCRIPT)))
    logs = tmp_path / "rank_logs"
    logs.mkdir()
    out = tmp_path / "run"
    env = {**train_env, "ROADWORK_TEST_RANK_LOG": str(logs), "OMP_NUM_THREADS": "1"}
    max_steps = 4  # 40 rows / (2 ranks x 8) = 3 steps per epoch: crosses into epoch 1
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(logger_script), *TINY_ARGS, "--augmentation_strength", "none", "--max_steps", str(max_steps),
        "--eval_strategy", "steps", "--eval_steps", "4", "--save_strategy", "steps", "--save_steps", "4",
        "--output_dir", str(out),
    ]  # fmt: skip
    result = run_script(command, env, REPO)

    ranks = [read_json(logs / f"rank{r}.json") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # Different batches, and together exactly the shared sampler's draw.
    sequences = ranks[0]["sampler_ids"]
    assert sequences == ranks[1]["sampler_ids"], "the ranks' samplers draw different sequences"
    num_rows = len(sequences[0])
    steps_per_epoch = math.ceil(math.ceil(num_rows / BATCH) / 2)
    steps = [r["steps"] for r in ranks]
    assert [[s["global_step"] for s in rank_steps] for rank_steps in steps] == [list(range(max_steps))] * 2
    checked = 0
    for step, (first, second) in enumerate(zip(*steps)):
        epoch, k = divmod(step, steps_per_epoch)
        assert len(first["ids"]) == len(second["ids"]) == BATCH
        assert first["ids"] != second["ids"], f"step {step}: both ranks trained on the same batch"
        # accelerate's data loaders skip dataset.set_epoch on >1 process: RoadworkTrainer sets it.
        assert first["dataset_epoch"] == second["dataset_epoch"] == epoch, f"step {step}: augmentation epoch"
        window = sequences[epoch][2 * BATCH * k : 2 * BATCH * (k + 1)]
        if len(window) == 2 * BATCH:  # the last step of an epoch may wrap around to its start (even_batches)
            assert sorted(first["ids"] + second["ids"]) == sorted(window), f"step {step}: not the sampler's draw"
            checked += 1
    assert checked >= 3

    # One checkpoint, one model, written by rank 0 only.
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{max_steps}"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / f"checkpoint-{max_steps}").iterdir()}
    assert ranks[1]["save_pretrained"] == []
    assert all(re.fullmatch(r"checkpoint-\d+/rng_state_1\.pth", p) for p in ranks[1]["writes"]), ranks[1]["writes"]
    assert sorted(ranks[0]["save_pretrained"]) == [".", f"checkpoint-{max_steps}"]
    rank0_writes = ranks[0]["writes"]
    assert rank0_writes.count("README.md") == 1, rank0_writes
    for name in ("all_results.json", "trainer_state.json", "gps_weighting/gps_report.json"):
        assert name in rank0_writes, name
    assert len(SUMMARY_RE.findall(result.stdout)) == 1, "the summary line must be printed once (rank 0)"


# ----------------------------------------------------------------------------------------------------------------
# 4 and 6. An uninterrupted run; resuming it; its summary and output folder
# ----------------------------------------------------------------------------------------------------------------

RESUME_ARGS = [
    *TINY_ARGS, "--max_steps", "12", "--output_dir", "run",
    "--eval_strategy", "steps", "--eval_steps", "4", "--save_strategy", "steps", "--save_steps", "4",
    # Keep checkpoint-8 after the run ends (quickstart keeps 2), to restart from it.
    "--save_total_limit", "3",
]  # fmt: skip  (augmentation: the quickstart's "light", so the augmentation RNG is exercised)


@pytest.fixture(scope="module")
def uninterrupted_run(train_env, tmp_path_factory) -> SimpleNamespace:
    """12 steps (2.4 epochs) with checkpoints and evaluations every 4 steps, from its own working directory."""
    return run_train(RESUME_ARGS, train_env, tmp_path_factory.mktemp("uninterrupted"))


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(uninterrupted_run, train_env, tmp_path):
    """
    A run killed after step 8 and restarted from checkpoint-8 ends as the uninterrupted run does. The kill is
    emulated with the uninterrupted run's own checkpoint-4 and checkpoint-8, which a killed run would have written
    identically; the output dir is relative, so the best-checkpoint paths inside them stay valid in the new folder.
    """
    full = uninterrupted_run.out
    killed = tmp_path / "run"
    for name in ("gps_weighting", "checkpoint-4", "checkpoint-8"):
        shutil.copytree(full / name, killed / name)
    resumed = run_train([*RESUME_ARGS, "--resume_from_checkpoint", "run/checkpoint-8"], train_env, tmp_path).out

    full_history, resumed_history = log_history(full), log_history(resumed)
    assert [e["step"] for e in resumed_history] == [e["step"] for e in full_history]
    assert [e["step"] for e in full_history if "loss" in e] == list(range(1, 13))
    # Evaluations every 4 steps, then train.py's final one (of the best model).
    assert [e["step"] for e in full_history if "eval_serving_mcc" in e] == [4, 8, 12]
    max_difference = 0.0
    for expected, actual in zip(full_history, resumed_history):
        expected, actual = without_timings(expected), without_timings(actual)
        if "train_loss" in expected:
            # Trainer reports the mean loss of this train() call only: steps 9-12 after the restart.
            losses = {e["step"]: e["loss"] for e in full_history if "loss" in e}
            assert expected.pop("train_loss") == pytest.approx(np.mean([losses[s] for s in range(1, 13)]), abs=1e-9)
            assert actual.pop("train_loss") == pytest.approx(np.mean([losses[s] for s in range(9, 13)]), abs=1e-6)
        assert expected.keys() == actual.keys(), f"step {expected['step']}"
        for key, value in expected.items():
            where = f"step {expected['step']}: {key}"
            if isinstance(value, float):  # nan_ok: a NaN metric (e.g. ROC-AUC of one class) must stay NaN
                if math.isfinite(value):
                    max_difference = max(max_difference, abs(value - actual[key]))
                assert actual[key] == pytest.approx(value, abs=RESUME_ATOL, nan_ok=True), where
            else:
                assert actual[key] == value, where

    full_results, resumed_results = read_json(full / "all_results.json"), read_json(resumed / "all_results.json")
    assert without_timings(full_results).keys() == without_timings(resumed_results).keys()
    for key in ("validation_serving_mcc", "validation_metadata_loss", "test_serving_mcc", "test_no_metadata_loss",
                "test_metadata_accuracy", "test_serving_roc_auc"):  # fmt: skip
        assert resumed_results[key] == pytest.approx(full_results[key], abs=RESUME_ATOL), key

    # The weights after the last step, not only the (possibly earlier) best model that the final metrics use.
    for name in ("checkpoint-12/model.safetensors", "model.safetensors"):
        expected, actual = load_file(full / name), load_file(resumed / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            difference = (expected[key].double() - actual[key].double()).abs().max().item()
            max_difference = max(max_difference, difference)
            assert difference <= RESUME_ATOL, f"{name}: {key} differs by {difference}"
    print(f"resume: max |difference| to the uninterrupted run {max_difference:.3g}")


@pytest.mark.slow
def test_summary_line_and_output_folder(uninterrupted_run, roadwork_cache, fresh_python):
    out = uninterrupted_run.out
    matches = list(SUMMARY_RE.finditer(uninterrupted_run.stdout))
    assert len(matches) == 1, uninterrupted_run.stdout[-2000:]
    summary = matches[0]
    evals = [e for e in log_history(out) if "eval_serving_mcc" in e]
    best = max(evals, key=lambda e: e["eval_serving_mcc"])
    results = read_json(out / "all_results.json")
    assert summary["best"] == f"{best['eval_serving_mcc']:.4f}" and summary["epoch"] == f"{best['epoch']:.2f}"
    for condition in ("serving", "no_metadata", "metadata"):
        assert summary[condition] == f"{results[f'test_{condition}_mcc']:.4f}", condition
    assert summary["reward"] == f"{results['test_serving_streetvision_reward']:.4f}"
    # all_results.json leads with the serving condition, split by split.
    keys = list(results)
    assert keys[0].startswith("validation_serving_")
    assert keys.index("test_serving_mcc") < keys.index("test_metadata_mcc")
    assert 0 < float(summary["minutes"]) < 30
    assert Path(summary["checkpoint"]) == out.resolve()

    # The folder: model, processor, vocabularies, GPS report and plots.
    config = read_json(out / "config.json")
    args = train.parse_args(TINY_ARGS)
    args.data.synthetic_dir = str(roadwork_cache / "synthetic")
    _, vocabularies = train.load_data(args.data, 42, args.synthetic)
    for name in ("weather_vocab", "daytime_vocab", "scene_vocab"):
        assert config[name] == vocabularies[name] and config[name], name
    assert config["id2label"] == {"0": "None", "1": "Roadwork"}
    processor_config = read_json(out / "preprocessor_config.json")
    assert processor_config["view_size"] == config["view_size"] == 64
    assert "AutoImageProcessor" in processor_config["auto_map"]
    report = read_json(out / "gps_weighting" / "gps_report.json")
    assert report["passed"] is True
    for png in ("gps_distance_histogram.png", "gps_scatter.png"):
        assert (out / "gps_weighting" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    code = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
        f"""
        import json, numpy as np, torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
        with torch.no_grad():
            logits = model(**processor(image, return_tensors="pt")).logits
        finite = bool(logits.isfinite().all())
        print(json.dumps(dict(cls=type(model).__name__, shape=list(logits.shape), finite=finite)))
        """
    )
    loaded = json.loads(fresh_python(code).stdout.strip().splitlines()[-1])
    assert loaded == {"cls": "RoadworkForImageClassification", "shape": [1, 2], "finite": True}


# ----------------------------------------------------------------------------------------------------------------
# 5. Hub push
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_push_to_hub_model_card_and_parity(hub, roadwork_cache, tmp_path, monkeypatch, fresh_python):
    """In-process `train.main` with `--push_to_hub` against the loopback Hub (the `hub` fixture points this
    process's huggingface_hub at it); the checks load the pushed repo from a fresh process."""
    monkeypatch.setenv("ROADWORK_CACHE", str(roadwork_cache))
    repo_id, out = hub.unique_repo_id("roadwork-test"), tmp_path / "run"
    args = [
        *TINY_ARGS, "--augmentation_strength", "none", "--max_steps", "2", "--output_dir", str(out),
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        "--push_to_hub", "--hub_model_id", repo_id,
    ]  # fmt: skip
    train.main(args)
    # The checkpoint push during training is a loadable repo too: model code and card included.
    from huggingface_hub import HfApi

    commits = HfApi().list_repo_commits(repo_id)
    in_progress = [c for c in commits if c.title.startswith("Training in progress")]
    assert in_progress, [c.title for c in commits]
    checkpoint_files = set(hub.files(repo_id, revision=in_progress[-1].commit_id))
    assert {"README.md", "config.json", "model.safetensors", "modeling_roadwork.py",
            "configuration_roadwork.py", "image_processing_roadwork.py",
            "preprocessor_config.json"} <= checkpoint_files, sorted(checkpoint_files)  # fmt: skip
    files = set(hub.files(repo_id))
    expected = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_roadwork.py",
                "configuration_roadwork.py", "image_processing_roadwork.py"}  # fmt: skip
    assert expected <= files, sorted(files)

    card = hub.read(repo_id, "README.md").decode()
    assert card == (out / "README.md").read_text()
    results = read_json(out / "all_results.json")
    assert "| metric | serving | no_metadata | metadata |" in card
    for split in ("validation", "test"):
        for name in ("mcc", "accuracy"):
            row = " | ".join(f"{results[f'{split}_{c}_{name}']:.4f}" for c in ("serving", "no_metadata", "metadata"))
            assert f"| {name} | {row} |" in card, (split, name)
    licence = card.split("## Licence note", 1)[-1]
    assert "## Licence note" in card and re.search(r"DINOv3\s+License", licence), "no DINOv3 licence note"
    snippet = re.search(r"## Load\s+```python\n(.*?)```", card, re.DOTALL)
    assert snippet, "no load snippet"
    snippet = snippet[1]
    assert len(snippet.strip().splitlines()) == 3, snippet
    assert f'AutoModelForImageClassification.from_pretrained("{repo_id}", trust_remote_code=True)' in snippet
    assert f'AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)' in snippet

    # A fresh process that cannot import the project runs the card's snippet against the Hub, then compares the
    # Hub model with the local output folder on one image.
    code = BLOCK_PROJECT_IMPORTS + textwrap.dedent(
        f"""
        import json, numpy as np, torch
        from PIL import Image
        namespace = {{}}
        exec({snippet!r}, namespace)
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
        scores = namespace["classifier"](image)
        hub_model = namespace["model"].eval()
        hub_processor = AutoImageProcessor.from_pretrained({repo_id!r}, trust_remote_code=True)
        local_model = AutoModelForImageClassification.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        local_processor = AutoImageProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        hub_pixels = hub_processor(image, return_tensors="pt")["pixel_values"]
        local_pixels = local_processor(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hub_logits = hub_model(pixel_values=hub_pixels).logits
            local_logits = local_model(pixel_values=local_pixels).logits
        print(json.dumps(dict(
            scores={{s["label"]: s["score"] for s in scores}}, processor=type(hub_processor).__name__,
            pixels_equal=bool(torch.equal(hub_pixels, local_pixels)),
            hub_logits=hub_logits.tolist(), local_logits=local_logits.tolist(),
        )))
        """
    )
    result = json.loads(fresh_python(code, hub=hub).stdout.strip().splitlines()[-1])
    assert result["processor"] == "RoadworkImageProcessor"
    assert result["pixels_equal"]
    assert set(result["scores"]) == {"None", "Roadwork"}
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    hub_logits = torch.tensor(result["hub_logits"])
    assert hub_logits.shape == (1, 2)
    torch.testing.assert_close(hub_logits, torch.tensor(result["local_logits"]), rtol=0, atol=1e-6)
    # ... and the project's own classes on the output folder agree.
    from modeling_roadwork import RoadworkForImageClassification, RoadworkImageProcessor

    model = RoadworkForImageClassification.from_pretrained(out).eval()
    pixels = RoadworkImageProcessor.from_pretrained(out)(fixed_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, hub_logits, rtol=0, atol=1e-5)
    probability = torch.softmax(hub_logits, -1)[0, 1].item()
    assert result["scores"]["Roadwork"] == pytest.approx(probability, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 7. GPS weighting gate
# ----------------------------------------------------------------------------------------------------------------

# With 4 centres the tiny synthetic data passes the GPS criteria with the default weights, and fails them when
# rows beyond 500 km are favoured a thousandfold.
ABSURD_GPS = ["--gps_num_clusters", "4", "--gps_bracket_weights", "0.01", "0.01", "0.01", "10"]


class _TrainerSpy:
    """Replaces train.RoadworkTrainer to see whether training was reached (and with which sample weights)."""

    def __init__(self, monkeypatch):
        self.created = []
        spy = self

        class Trainer(train.RoadworkTrainer):
            def __init__(self, *args, **kwargs):
                spy.created.append(kwargs.get("sample_weights"))
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(train, "RoadworkTrainer", Trainer)


def test_gps_criteria_failure_stops_before_training(roadwork_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("ROADWORK_CACHE", str(roadwork_cache))
    spy = _TrainerSpy(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as excinfo:
        train.main([*TINY_ARGS, *ABSURD_GPS, "--output_dir", str(out)])
    message = str(excinfo.value)
    assert "GPS weighting misses its criteria" in message
    assert "--gps_min_fraction_within_50km" in message, "the criteria are flags the message names"
    assert "min_fraction_within_50km" in message and "within 50 km" in message
    assert "--allow_weak_gps_weighting" in message
    assert spy.created == [], "a trainer was built"
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    assert read_json(out / "gps_weighting" / "gps_report.json")["passed"] is False

    # Control: the same centres with the default weights pass, so the weights are what failed.
    args = train.parse_args([*TINY_ARGS, "--gps_num_clusters", "4"])
    splits, _ = train.load_data(args.data, args.training.seed, args.synthetic)
    weights = train.gps_sample_weights(args.gps, splits["train"], splits["test"], str(tmp_path / "control"))
    assert weights is not None and len(weights) == len(splits["train"])
    # Relaxing the criterion the report names is the other way out: the absurd weights then pass.
    relaxed = train.parse_args([*TINY_ARGS, *ABSURD_GPS, "--gps_min_fraction_within_50km", "0",
                                "--gps_min_fraction_within_100km", "0",
                                "--gps_max_mean_distance_km", "100000"])  # fmt: skip
    assert train.gps_sample_weights(relaxed.gps, splits["train"], splits["test"], None) is not None


@pytest.mark.slow
def test_allow_weak_gps_weighting_trains(roadwork_cache, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("ROADWORK_CACHE", str(roadwork_cache))
    spy = _TrainerSpy(monkeypatch)
    out = tmp_path / "run"
    args = [
        *TINY_ARGS, *ABSURD_GPS, "--allow_weak_gps_weighting", "--augmentation_strength", "none", "--max_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--output_dir", str(out),
    ]  # fmt: skip
    summary = train.main(args)
    assert "Training anyway (--allow_weak_gps_weighting)" in caplog.text
    assert len(spy.created) == 1 and spy.created[0] is not None, "the trainer must get the (weak) GPS weights"
    assert read_json(out / "trainer_state.json")["global_step"] == 1
    assert (out / "model.safetensors").is_file()
    assert read_json(out / "gps_weighting" / "gps_report.json")["passed"] is False
    assert math.isfinite(summary["metrics"]["test_serving_loss"])
    assert SUMMARY_RE.search(capsys.readouterr().out)


def test_each_loss_component_is_logged_with_its_skip_rate(uninterrupted_run):
    """RoadworkTrainer logs the mean of each loss component next to `loss`, and how often it was skipped."""
    train_logs = [
        entry for entry in log_history(uninterrupted_run.out) if "loss" in entry and "eval_loss" not in entry
    ]
    assert train_logs
    components = ("focal_loss", "consistency_loss", "weather_loss", "seg_loss")
    for entry in train_logs:
        for name in components:
            skipped = entry[f"{name}_skipped"]
            assert 0.0 <= skipped <= 1.0, (name, entry)
            if skipped < 1.0:
                assert math.isfinite(entry[name]) and entry[name] >= 0.0, (name, entry)
            else:
                assert name not in entry, "a component skipped in every step has no mean"
    # Focal and consistency losses need only the labels every row has: never skipped.
    assert all(entry["focal_loss_skipped"] == 0.0 and entry["consistency_loss_skipped"] == 0.0 for entry in train_logs)
    # The synthetic data has masks and weather on only some rows, so those two components ran in some steps.
    assert any("seg_loss" in entry for entry in train_logs) and any("weather_loss" in entry for entry in train_logs)


def test_model_overrides_from_the_command_line_merge_into_the_yaml_and_typos_are_rejected():
    model_args = train.parse_args(
        ["--config", str(QUICKSTART), "--model_overrides", '{"num_attention_layers": 3}']
    ).model
    overrides = json.loads(model_args.model_overrides)
    assert overrides["num_attention_layers"] == 3
    assert overrides["view_size"] == 64, "the YAML's other overrides stay"
    with pytest.raises(SystemExit, match="'hidden_sise' is not a RoadworkConfig field; did you mean hidden_size"):
        train.parse_args(["--config", str(QUICKSTART), "--model_overrides", '{"hidden_sise": 64}'])
