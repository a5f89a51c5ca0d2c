"""Draw the 12 view boxes of RoadworkImageProcessor on an image and write docs/view_boxes.png.

    python docs/draw_view_boxes.py                      # synthetic 4032x3024 street scene
    python docs/draw_view_boxes.py --image photo.jpg    # any photo (EXIF orientation applied)

Two panels side by side, since the 12 boxes overlap: left the global view and the 3x3 tiles, right the global
view, the centre square and the right-hand square.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import PIL.ImageOps
from transformers import HfArgumentParser


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from modeling_roadwork.image_processing_roadwork import RoadworkImageProcessor  # noqa: E402


# Twelve distinguishable colours (Tableau 10 + two), one per view.
COLOURS = [
    (255, 255, 255), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (255, 215, 0), (0, 255, 127),
]  # fmt: skip
NAMES = ["0 global"] + [f"{i} tile r{(i - 1) // 3}c{(i - 1) % 3}" for i in range(1, 10)] + ["10 centre", "11 right"]


@dataclass
class DrawArguments:
    image: str | None = field(default=None, metadata={"help": "Photo to draw on; a synthetic street scene if unset."})
    width: int = field(default=4032, metadata={"help": "Width of the synthetic image."})
    height: int = field(default=3024, metadata={"help": "Height of the synthetic image."})
    panel_width: int = field(default=800, metadata={"help": "Width in pixels of each of the two panels."})
    output: str = field(default=str(REPO_ROOT / "docs" / "view_boxes.png"), metadata={"help": "PNG to write."})


def synthetic_street(width: int, height: int) -> PIL.Image.Image:
    """Sky, road with lane marks and a few orange cones: flat colours, so the PNG stays small."""
    image = PIL.Image.new("RGB", (width, height), (135, 180, 225))
    draw = PIL.ImageDraw.Draw(image)
    horizon = int(height * 0.45)
    draw.rectangle((0, horizon, width, height), fill=(95, 95, 100))
    road = [(0, height), (int(width * 0.42), horizon), (int(width * 0.58), horizon), (width, height)]
    draw.polygon(road, fill=(70, 70, 75))
    for k in range(6):  # dashed centre line, larger towards the viewer
        y0 = horizon + int((height - horizon) * (k / 6) ** 1.6)
        y1 = horizon + int((height - horizon) * ((k + 0.5) / 6) ** 1.6)
        half = max(2, int(width * 0.004 * (1 + 4 * k / 6)))
        draw.rectangle((width // 2 - half, y0, width // 2 + half, y1), fill=(240, 240, 240))
    for fx, fy, scale in [(0.70, 0.62, 1.0), (0.78, 0.72, 1.4), (0.88, 0.86, 2.0), (0.30, 0.66, 1.1)]:
        cx, base, size = int(width * fx), int(height * fy), int(width * 0.012 * scale)
        draw.polygon([(cx - size, base), (cx + size, base), (cx, base - 3 * size)], fill=(255, 120, 0))
        stripe = (cx - int(size * 0.55), base - int(size * 1.4), cx + int(size * 0.55), base - int(size * 1.0))
        draw.rectangle(stripe, fill=(250, 250, 250))
    draw.rectangle((int(width * 0.08), int(height * 0.25), int(width * 0.2), horizon), fill=(160, 120, 90))  # building
    return image


def draw_panel(image: PIL.Image.Image, boxes: list, views: list[int], panel_width: int) -> PIL.Image.Image:
    scale = panel_width / image.width
    panel = image.resize((panel_width, round(image.height * scale)), PIL.Image.Resampling.BICUBIC)
    draw = PIL.ImageDraw.Draw(panel)
    font = PIL.ImageFont.load_default(size=max(12, panel_width // 45))
    for order, view in enumerate(views):
        left, top, right, bottom = (round(v * scale) for v in boxes[view])
        inset = 2 * (order % 4)  # staggered so that shared edges stay visible
        outline = (left + inset, top + inset, right - 1 - inset, bottom - 1 - inset)
        draw.rectangle(outline, outline=COLOURS[view], width=3)
        label_x, label_y = left + inset + 6, top + inset + 6 + (order % 3) * (font.size + 6) * (view != 0)
        if view == 0:
            label_y = panel.height - font.size - 14
        text_box = draw.textbbox((label_x, label_y), NAMES[view], font=font)
        draw.rectangle((text_box[0] - 3, text_box[1] - 2, text_box[2] + 3, text_box[3] + 2), fill=(0, 0, 0))
        draw.text((label_x, label_y), NAMES[view], fill=COLOURS[view], font=font)
    return panel


def main() -> None:
    (args,) = HfArgumentParser(DrawArguments).parse_args_into_dataclasses()

    if args.image:
        image = PIL.ImageOps.exif_transpose(PIL.Image.open(args.image)).convert("RGB")
    else:
        image = synthetic_street(args.width, args.height)
    boxes = RoadworkImageProcessor().view_boxes(*image.size)

    tiles = draw_panel(image, boxes, [0, *range(1, 10)], args.panel_width)
    squares = draw_panel(image, boxes, [0, 10, 11], args.panel_width)
    gap, caption_height = 16, 36
    canvas = PIL.Image.new("RGB", (2 * args.panel_width + gap, tiles.height + caption_height), (255, 255, 255))
    canvas.paste(tiles, (0, 0))
    canvas.paste(squares, (args.panel_width + gap, 0))
    tile, right_tile, lower_tile = boxes[1], boxes[2], boxes[4]
    caption = (
        f"{image.width}x{image.height}: tiles {tile[2] - tile[0]}x{tile[3] - tile[1]} px, strides "
        f"{right_tile[0] - tile[0]} across / {lower_tile[1] - tile[1]} down (overlap >= 25%); "
        f"centre and right squares {boxes[10][2] - boxes[10][0]} px; every view resized to view_size"
    )
    font = PIL.ImageFont.load_default(size=18)
    PIL.ImageDraw.Draw(canvas).text((8, tiles.height + 8), caption, fill=(0, 0, 0), font=font)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # An adaptive palette keeps the PNG small (flat synthetic colours survive it unchanged).
    canvas.quantize(colors=256, method=PIL.Image.Quantize.MEDIANCUT).save(output, optimize=True)
    print(f"{output}: {canvas.width}x{canvas.height}, {output.stat().st_size / 1024:.0f} KB; boxes for {image.size}:")
    for name, box in zip(NAMES, boxes):
        print(f"  {name:14} {box}")


if __name__ == "__main__":
    main()
