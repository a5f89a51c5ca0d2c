"""How often does a validator challenge of a synthetic roadwork scene still show a roadwork object?

    python benchmarks/bench_synthetic_crops.py --num_test 60 --draws_per_scene 20

The quickstart trains and evaluates on the synthetic scenes only, and the validators send each image through
`RoadworkValidatorTransform` (level 0: centre square; levels 1..3: rotation +-20 degrees and a square
RandomResizedCrop of 0.2..1 of the area). If that crop usually cut the cones and barriers away, a "Roadwork" label
would not be learnable from the challenge. For every roadwork test scene (the generator's own rows, regenerated with
masks on every row) and several challenge draws, the scene's object masks (the union of the six classes, soft
coverage) go through the same rotation and crop as the image; a challenge "contains a roadwork object" when at least
`--min_visible_pixels` of object area lands in the 224 x 224 output.

Prints a summary and, last, one JSON line: `{"share", "share_level0", "share_levels123", "share_any_pixel",
"mean_retained", "scenes", "draws", ...}`. `share` is over (scene, draw) pairs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import HfArgumentParser


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_collator import RoadworkValidatorTransform, decode_seg_masks  # noqa: E402
from data_collator.synthetic import SyntheticDatasetConfig, generate_row  # noqa: E402
from modeling_roadwork import RoadworkImageProcessor  # noqa: E402


@dataclass
class CropShareArguments:
    num_test: int = field(default=60, metadata={"help": "Rows of the synthetic test split (the quickstart's 60)."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic dataset (the quickstart's default 0)."})
    draws_per_scene: int = field(default=20, metadata={"help": "Validator challenges drawn per roadwork scene."})
    min_visible_pixels: float = field(
        default=16.0, metadata={"help": "Object area (pixels of the 224 x 224 challenge) that counts as visible."}
    )


def object_coverage(row: dict) -> np.ndarray:
    """(32, 32) float in [0, 1]: the union of a row's object masks (any roadwork class)."""
    masks = decode_seg_masks(row["seg_masks"])
    if masks is None:
        raise ValueError(f"row {row['id']} has no seg_masks; generate with mask_rate=1.0")
    return masks.max(axis=0)


def visible_object_pixels(coverage: np.ndarray, image_size: tuple[int, int], params: dict, target_size: int) -> float:
    """
    Object area in the challenge image: the coverage map stretched over the whole image, rotated and cropped
    with the validator's `last_params`, resized to `target_size`. (Flips and colour distortions do not move
    area in or out of the crop.) Returns pixels of the `target_size` x `target_size` output.
    """
    width, height = image_size
    mask = Image.fromarray(coverage.astype(np.float32)).resize((width, height), Image.BILINEAR)
    if params["level"] == 0:
        side = min(width, height)
        left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
        box = (left, top, left + side, top + side)
    else:
        mask = mask.rotate(params["angle"], resample=Image.BILINEAR, expand=False, fillcolor=0.0)
        top, left, h, w = params["crop"]
        box = (left, top, left + w, top + h)
    crop = np.asarray(mask.crop(box), dtype=np.float64)
    # Area scales by (target / crop side)^2 when the crop is resized to the challenge size.
    return float(crop.sum() * (target_size / (box[2] - box[0])) * (target_size / (box[3] - box[1])))


def crop_object_share(
    num_test: int = 60,
    seed: int = 0,
    draws_per_scene: int = 20,
    min_visible_pixels: float = 16.0,
    transform: RoadworkValidatorTransform | None = None,
) -> dict:
    """
    Share of validator challenges of roadwork test scenes that still contain a roadwork object.

    Returns:
        `dict`: `share` (>= `min_visible_pixels` of object area, over scene x draw pairs), `share_level0` and
        `share_levels123` (the centre crop vs. the rotated random crops), `share_any_pixel` (> 0.5 px),
        `scene_share_majority` (scenes whose challenges show an object more often than not), `mean_retained`
        (mean fraction of a scene's object area, at challenge scale, that survives the crop), and the counts.
    """
    transform = transform or RoadworkValidatorTransform()
    config = SyntheticDatasetConfig(num_train=0, num_test=num_test, seed=seed, mask_rate=1.0)
    visible, levels, retained, per_scene = [], [], [], []
    processor = RoadworkImageProcessor()  # its decoder: the image as training and serving see it
    for index in range(num_test):
        row = generate_row(config, "test", index)  # mask_rate only decides which rows keep masks: same scenes
        if row["label"] != 1:
            continue
        image = processor.load_image(row["image"])
        coverage = object_coverage(row)
        whole = coverage.sum() * (transform.target_size / coverage.shape[0]) ** 2  # all objects, whole image at 224
        scene_hits = []
        for draw in range(draws_per_scene):
            transform(image, seed=seed * 1_000_003 + index * 1_009 + draw)
            params = transform.last_params
            pixels = visible_object_pixels(coverage, image.size, params, transform.target_size)
            visible.append(pixels)
            levels.append(params["level"])
            retained.append(min(1.0, pixels / whole / _zoom(image.size, params)) if whole > 0 else 0.0)
            scene_hits.append(pixels >= min_visible_pixels)
        per_scene.append(np.mean(scene_hits))
    visible, levels = np.asarray(visible), np.asarray(levels)
    hit = visible >= min_visible_pixels
    return {
        "share": float(hit.mean()),
        "share_level0": float(hit[levels == 0].mean()) if (levels == 0).any() else None,
        "share_levels123": float(hit[levels > 0].mean()) if (levels > 0).any() else None,
        "share_any_pixel": float((visible > 0.5).mean()),
        "scene_share_majority": float(np.mean(np.asarray(per_scene) > 0.5)),
        "mean_retained": float(np.mean(retained)),
        "median_visible_pixels": float(np.median(visible)),
        "min_visible_pixels": min_visible_pixels,
        "scenes": len(per_scene),
        "draws": int(hit.size),
        "num_test": num_test,
        "seed": seed,
    }


def _zoom(image_size: tuple[int, int], params: dict) -> float:
    """Area magnification of the crop relative to the whole image squashed to the challenge size."""
    width, height = image_size
    if params["level"] == 0:
        side = min(width, height)
        return (width / side) * (height / side)
    _, _, h, w = params["crop"]
    return (width / w) * (height / h)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(CropShareArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    result = crop_object_share(args.num_test, args.seed, args.draws_per_scene, args.min_visible_pixels)
    print(
        f"{result['scenes']} roadwork test scenes x {args.draws_per_scene} validator challenges: "
        f"{100 * result['share']:.1f}% contain >= {args.min_visible_pixels:g} px of roadwork object "
        f"(centre crop {100 * result['share_level0']:.1f}%, "
        f"rotated random crops {100 * result['share_levels123']:.1f}%; "
        f"any object pixel {100 * result['share_any_pixel']:.1f}%); {100 * result['scene_share_majority']:.1f}% of "
        f"scenes show an object in most challenges; "
        f"mean share of object area kept {100 * result['mean_retained']:.1f}%"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
