"""Time one training step (forward + backward + clip + AdamW step) of the quickstart model: fp32 vs bf16 autocast,
eager vs torch.compile, and their peak memory.

    python benchmarks/bench_train_step.py --device cpu --steps 10 --warmup 3
    python benchmarks/bench_train_step.py --device cuda --steps 50 --compile_mode max-autotune

The model, optimizer and batch are built as train.py builds them: `train.parse_args` on `--config`,
`train.load_data` (the synthetic dataset, generated on first use, and its vocabularies), `train.build_model`,
Trainer's optimizer class for the config's `optim`, and one fixed batch from `RoadworkDataset` +
`RoadworkDataCollator`. Without a text encoder the collator sends zero `text_embeds` (same shapes and compute).

Each variant runs in its own Python process with an empty inductor cache, so that compile caches, allocator state
and memory high-water marks of one variant do not leak into the next, and a compiler crash costs one row, not the
run. Times are medians over `--steps` after `--warmup` steps; the first warmup step of a compiled variant is a cold
compile and is reported as `first_step_s`.

Memory: on CUDA, `torch.cuda.max_memory_allocated` over the timed steps (`peak_mb`) and its excess over the memory
held between steps (`step_mb`: activations, gradients, workspaces). On CPU, torch's allocations are invisible to
tracemalloc, so a thread samples glibc's `mallinfo2` (bytes malloc has handed out and not taken back: torch's CPU
tensors plus the rest of the process) while `--memory_steps` extra steps run: the peak (`peak_mb`) and its excess
over the value before those steps (`step_mb`). Samples are 1 ms apart, so a shorter-lived peak can be missed. The
process RSS is reported too (`peak_rss_mb`, `step_rss_mb`); it also counts freed memory that malloc kept, so it
barely moves from step to step. Without glibc, RSS is the only measure.

Prints a table, the ratios bf16/fp32 and compiled/eager (step time and memory), and, last, one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("fp32_eager", "bf16_eager", "fp32_compiled", "bf16_compiled")
MEMORY_METRICS = {
    "cuda_max_memory_allocated": "peak MB = torch.cuda.max_memory_allocated over the timed steps, step MB = peak "
    "minus the memory held between steps",
    "cpu_malloc_in_use_sampled": "peak MB = peak of glibc mallinfo2 bytes in use, sampled every 1 ms (torch "
    "allocations are invisible to tracemalloc), step MB = peak minus the value before the sampled steps",
    "cpu_rss_sampled": "peak MB = peak process RSS sampled every 1 ms, step MB = peak minus RSS before the sampled "
    "steps; rough: RSS keeps memory that was freed",
}


@dataclass
class BenchmarkArguments:
    config: str = field(
        default=str(REPO / "configs" / "quickstart.yaml"), metadata={"help": "train.py YAML config of the model."}
    )
    device: str = field(default="cpu", metadata={"help": "Where to run the steps.", "choices": ["cpu", "cuda"]})
    steps: int = field(default=10, metadata={"help": "Timed steps per variant; the median is reported."})
    warmup: int = field(default=3, metadata={"help": "Untimed steps first, >= 1 (the first one compiles)."})
    memory_steps: int = field(
        default=3, metadata={"help": "CPU only: extra untimed steps during which memory in use is sampled."}
    )
    compile_mode: str = field(
        default="default",
        metadata={"help": "torch.compile mode: default, reduce-overhead or max-autotune (max-autotune is for GPUs)."},
    )
    batch_size: int = field(
        default=0, metadata={"help": "Rows per batch; 0 = the config's per_device_train_batch_size."}
    )
    variants: list[str] = field(
        default_factory=lambda: list(VARIANTS), metadata={"help": "Which variants to run.", "choices": list(VARIANTS)}
    )
    torch_threads: int = field(default=0, metadata={"help": "torch.set_num_threads; 0 keeps torch's default."})
    variant_timeout_s: int = field(default=1200, metadata={"help": "Kill a variant's process after this long."})
    variant: str | None = field(
        default=None, metadata={"help": "Internal: run this one variant in this process and print its JSON line."}
    )


# --- one variant (child process) --------------------------------------------------------------------------------


class _CPUMemorySampler:
    """Peak bytes in use by malloc (glibc `mallinfo2`: what torch's CPU tensors live in, without the freed memory
    malloc keeps) and peak resident set size of this process, sampled from a thread every `interval` seconds."""

    def __init__(self, interval: float = 0.001):
        import psutil

        self._process = psutil.Process()
        self._mallinfo2 = _mallinfo2()
        self.interval = interval
        self.start_malloc, self.start_rss = self.malloc_in_use(), self.rss()
        self.peak_malloc, self.peak_rss = self.start_malloc, self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def malloc_in_use(self) -> int | None:
        if self._mallinfo2 is None:
            return None
        info = self._mallinfo2()
        return info.uordblks + info.hblkhd  # small blocks in use + mmapped (large tensors)

    def rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self):
        self.peak_rss = max(self.peak_rss, self.rss())
        if self._mallinfo2 is not None:
            self.peak_malloc = max(self.peak_malloc, self.malloc_in_use())

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _mallinfo2():
    """glibc's `mallinfo2` (glibc >= 2.33) via ctypes, or None elsewhere (macOS, musl)."""
    import ctypes
    import ctypes.util

    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in names]

    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = MallInfo2
    return function


def _build(args: BenchmarkArguments, device):
    """-> (model, fixed batch on `device`, training arguments), as train.py builds them."""
    import torch

    import train
    from data_collator import RoadworkDataCollator, RoadworkDataset
    from modeling_roadwork.image_processing_roadwork import RoadworkImageProcessor

    model_args, data_args, _, _, training_args = train.parse_args(["--config", args.config])
    train_split, _, _, vocabularies = train.load_data(data_args, training_args.seed)
    torch.manual_seed(training_args.seed)
    model = train.build_model(model_args, vocabularies).to(device).train()

    batch_size = args.batch_size or training_args.per_device_train_batch_size
    if len(train_split) < batch_size:
        raise SystemExit(f"the train split has {len(train_split)} rows, fewer than --batch_size {batch_size}")
    image_processor = RoadworkImageProcessor(view_size=model.config.view_size)
    dataset = RoadworkDataset(
        train_split.select(range(batch_size)), image_processor, vocabularies=model.config, augmentation="none",
        seed=training_args.seed, scan_metadata_on_init=False,
    )  # fmt: skip
    collator = RoadworkDataCollator(text_embed_dim=model.config.text_embed_dim)
    batch = collator([dataset[i] for i in range(batch_size)])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return model, batch, training_args


def _optimizer(model, training_args):
    """The optimizer Trainer would create for `training_args.optim` (decay on matrices, none on biases / norms)."""
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": training_args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return optimizer_cls(groups, **optimizer_kwargs), params


def run_variant(args: BenchmarkArguments, name: str) -> dict:
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    precision, mode = name.split("_")
    model, batch, training_args = _build(args, device)
    optimizer, params = _optimizer(model, training_args)
    forward = torch.compile(model, mode=args.compile_mode) if mode == "compiled" else model

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> torch.Tensor:
        with autocast():
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # Other processes on a shared machine slow every variant; the load average says how busy it was.
    result = {
        "variant": name,
        "batch_size": int(next(iter(batch.values())).shape[0]),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m_start": os.getloadavg()[0],
    }
    losses, warmup_s = [], []
    for _ in range(args.warmup):
        start = time.perf_counter()
        losses.append(step())
        sync()
        warmup_s.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result.update(peak_mb=peak / 2**20, step_mb=(peak - held) / 2**20, memory_metric="cuda_max_memory_allocated")
    else:
        with _CPUMemorySampler() as sampler:
            for _ in range(args.memory_steps):
                losses.append(step())
        result.update(peak_rss_mb=sampler.peak_rss / 2**20, step_rss_mb=(sampler.peak_rss - sampler.start_rss) / 2**20)
        if sampler.start_malloc is not None:
            mb = 2**20
            peak, start = sampler.peak_malloc, sampler.start_malloc
            result.update(peak_mb=peak / mb, step_mb=(peak - start) / mb, memory_metric="cpu_malloc_in_use_sampled")
        else:
            rss = dict(peak_mb=result["peak_rss_mb"], step_mb=result["step_rss_mb"], memory_metric="cpu_rss_sampled")
            result.update(rss)
    losses = [float(loss) for loss in losses]
    if not all(map(math.isfinite, losses)):
        result["error"] = f"non-finite loss: {losses}"
    result.update(
        median_step_ms=1000 * statistics.median(times),
        min_step_ms=1000 * min(times),
        max_step_ms=1000 * max(times),
        first_step_s=warmup_s[0],
        first_loss=losses[0],
        last_loss=losses[-1],
        loadavg_1m_end=os.getloadavg()[0],
    )
    if mode == "compiled":
        from torch._dynamo.utils import counters

        result["graph_breaks"] = sum(counters["graph_break"].values())
    return result


def child_main(args: BenchmarkArguments) -> None:
    try:
        result = run_variant(args, args.variant)
    except Exception as error:  # a compiler failure is a result, not a crash of the benchmark
        traceback.print_exc()
        result = {"variant": args.variant, "error": f"{type(error).__name__}: {str(error).strip()[:2000]}"}
    print(json.dumps(result), flush=True)


# --- driver (parent process) ------------------------------------------------------------------------------------


def _spawn(args: BenchmarkArguments, name: str) -> dict:
    argv = [
        sys.executable, __file__, "--variant", name, "--config", args.config, "--device", args.device,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--memory_steps", str(args.memory_steps),
        "--compile_mode", args.compile_mode, "--batch_size", str(args.batch_size),
        "--torch_threads", str(args.torch_threads),
    ]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:
        # A cold compile per variant: otherwise a second run reuses the first one's kernels and first_step_s lies.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=args.variant_timeout_s, cwd=REPO, env=env
            )
        except subprocess.TimeoutExpired:
            return {"variant": name, "error": f"timed out after {args.variant_timeout_s} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"variant": name, "error": f"exit status {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def _ratio(results: dict, numerator: str, denominator: str, key: str) -> float | None:
    a, b = results.get(numerator, {}), results.get(denominator, {})
    if "error" in a or "error" in b or key not in a or key not in b or not b[key]:
        return None
    return round(a[key] / b[key], 3)


def _environment(device: str) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["cpu_count"] = os.cpu_count()
    return env


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.variant:
        child_main(args)
        return
    if args.steps < 1 or args.warmup < 1:
        raise SystemExit("--steps and --warmup must be >= 1 (compilation must not land in the timed steps)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")

    results = {}
    for name in args.variants:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = _spawn(args, name)

    metrics = sorted({r["memory_metric"] for r in results.values() if "memory_metric" in r})
    memory_note = "; ".join(f"{metric}: {MEMORY_METRICS[metric]}" for metric in metrics) or "n/a"
    print(
        f"\n{Path(args.config).name} on {args.device}: {args.steps} timed steps after {args.warmup} warmup, "
        f"compile mode {args.compile_mode!r}"
    )
    print(
        f"{'variant':15} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'1st step s':>10} {'peak MB':>9} "
        f"{'step MB':>8} {'loss 1st->last':>16}"
    )
    for name, r in results.items():
        if "error" in r and "median_step_ms" not in r:
            print(f"{name:15} FAILED: {r['error'][:300]}")
            continue
        print(
            f"{name:15} {r['median_step_ms']:10.1f} {r['min_step_ms']:8.1f} {r['max_step_ms']:8.1f} "
            f"{r['first_step_s']:10.2f} {r['peak_mb']:9.1f} {r['step_mb']:8.1f} "
            f"{r['first_loss']:7.4f}->{r['last_loss']:.4f}" + (f"  ({r['error']})" if "error" in r else "")
        )
    print(f"memory: {memory_note}")

    ratios = {}
    for key, label in (("median_step_ms", "time"), ("peak_mb", "peak_memory"), ("step_mb", "step_memory")):
        for mode in ("eager", "compiled"):
            ratios[f"{label}_bf16_over_fp32_{mode}"] = _ratio(results, f"bf16_{mode}", f"fp32_{mode}", key)
        for precision in ("fp32", "bf16"):
            ratios[f"{label}_compiled_over_eager_{precision}"] = _ratio(
                results, f"{precision}_compiled", f"{precision}_eager", key
            )
    print("ratios (< 1 means the first is faster / smaller):")
    for key, value in ratios.items():
        print(f"  {key:42} {'n/a' if value is None else f'{value:.3f}'}")
    if args.device == "cpu":
        print(
            "note: on CPU, bf16 autocast is only fast with native bf16 units (AVX512-BF16 / AMX); without them it "
            "adds casts and is usually slower than fp32. GPU numbers need --device cuda."
        )

    summary = {
        "benchmark": "train_step",
        "config": os.path.relpath(args.config, REPO),
        "device": args.device,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile_mode": args.compile_mode,
        "memory_metric": memory_note,
        **_environment(args.device),
        "variants": {
            name: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k != "variant"}
            for name, r in results.items()
        },
        "ratios": ratios,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
