"""Time the 12-view extraction of a 4032x3024 JPEG against a plain full decode of the same file.

    python benchmarks/bench_views.py --runs 9 --view_size 512

Prints the medians and, last, one JSON line per setting (the last line is the default `fast_decode=True`):
`{"extract_s", "decode_s", "ratio", "target": 1.5, "pass", ...}`. The ratio is extraction (decode + 12 views
+ normalisation, `processor(path, return_tensors="pt")`) over `Image.open(path).convert("RGB")`, medians of
interleaved wall-clock runs; `cpu_ratio` is the same for this process's CPU time (steadier on a busy machine,
but it counts every torch thread).
"""

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import HfArgumentParser


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_roadwork.image_processing_roadwork import RoadworkImageProcessor  # noqa: E402


TARGET_RATIO = 1.5


@dataclass
class BenchmarkArguments:
    runs: int = field(default=7, metadata={"help": "Timed runs per measurement; the median is reported."})
    view_size: int = field(default=512, metadata={"help": "Side of every view in pixels."})
    image: str | None = field(
        default=None, metadata={"help": "A JPEG to time instead of the synthetic 4032x3024 one."}
    )
    quality: int = field(default=90, metadata={"help": "JPEG quality of the synthetic image."})
    torch_threads: int = field(
        default=0,
        metadata={"help": "torch.set_num_threads for the run (DataLoader workers use 1); 0 keeps torch's default."},
    )


def make_synthetic_jpeg(directory: Path, quality: int, width: int = 4032, height: int = 3024) -> Path:
    """A photo-sized JPEG with structure at several scales and sensor-like noise (~4.5 MB at quality 90)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 127 + 60 * np.sin(x / 37.0) * np.cos(y / 53.0) + 40 * np.sin((x + y) / 211.0)
    image = np.stack([base, np.roll(base, 100, axis=1), 255 - base], axis=-1) + rng.normal(0, 12, (height, width, 3))
    path = directory / "synthetic_4032x3024.jpg"
    PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=quality)
    return path


def full_decode(path: Path) -> PIL.Image.Image:
    with PIL.Image.open(path) as image:
        return image.convert("RGB")  # convert() loads the pixels


def timed(function) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call."""
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall_start, time.process_time() - cpu_start


def measure(path: Path, processor: RoadworkImageProcessor, fast_decode: bool, runs: int) -> dict:
    def extract():
        processor(str(path), return_tensors="pt", fast_decode=fast_decode)

    def decode():
        full_decode(path)

    extract(), decode()  # warm-up
    # Interleaved, so that load from other processes on a shared machine hits both sides alike.
    samples = [(timed(extract), timed(decode)) for _ in range(runs)]
    extract_s = statistics.median(e[0] for e, _ in samples)
    decode_s = statistics.median(d[0] for _, d in samples)
    extract_cpu_s = statistics.median(e[1] for e, _ in samples)
    decode_cpu_s = statistics.median(d[1] for _, d in samples)
    ratio = extract_s / decode_s
    return {
        "fast_decode": fast_decode,
        "extract_s": round(extract_s, 4),
        "decode_s": round(decode_s, 4),
        "ratio": round(ratio, 3),
        "cpu_ratio": round(extract_cpu_s / decode_cpu_s, 3),
        "target": TARGET_RATIO,
        "pass": ratio <= TARGET_RATIO,
    }


def main() -> None:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as directory:
        path = Path(args.image) if args.image else make_synthetic_jpeg(Path(directory), args.quality)
        with PIL.Image.open(path) as image:
            width, height = image.size
        processor = RoadworkImageProcessor(view_size=args.view_size)
        print(
            f"{path.name}: {width}x{height}, {path.stat().st_size / 1e6:.2f} MB; view_size {args.view_size}, "
            f"JPEG draft scale 1/{processor.draft_scale(width, height)}, torch threads {torch.get_num_threads()}"
        )

        results = [measure(path, processor, fast_decode, args.runs) for fast_decode in (False, True)]

    for result in results:
        print(
            f"fast_decode={result['fast_decode']!s:5}  extract {result['extract_s'] * 1000:7.1f} ms  "
            f"full decode {result['decode_s'] * 1000:7.1f} ms  ratio {result['ratio']:.2f} "
            f"(CPU-time ratio {result['cpu_ratio']:.2f}, target <= {TARGET_RATIO})"
        )
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
