"""The scene renderer of the synthetic dataset: procedural street photos drawn with PIL/numpy.

Sky, horizon, a road in perspective with lane markings, buildings or trees, ordinary cars; roadwork scenes add
one or more of the six object classes the segmentation head knows (`RoadworkConfig.seg_class_names`: orange
cones, striped barriers, diamond road-work signs, workers in hi-vis vests, construction vehicles, equipment such
as traffic drums and arrow boards). Because the renderer knows where it drew each object, every scene comes
with exact soft masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from modeling_roadwork.configuration_roadwork import DEFAULT_SEG_CLASSES

from ..schema import SEG_MASK_SIZE


_MASK_CANVAS = 128  # masks are drawn at this resolution, then box-filtered to SEG_MASK_SIZE (soft coverage)
OBJECT_WEIGHTS = {"cone": 0.34, "barrier": 0.2, "sign": 0.14, "worker": 0.12, "vehicle": 0.08, "equipment": 0.12}
# Real-world heights in metres; the road is 7 m wide, which fixes the pixels per metre at each depth.
_HEIGHT_M = {"cone": 0.75, "barrier": 1.0, "sign": 2.0, "worker": 1.75, "vehicle": 3.0, "equipment": 1.0, "car": 1.45}
_ROAD_HALF_WIDTH_M = 3.5

Color = tuple[int, int, int]


class _Canvas:
    """An RGB image plus one low-resolution coverage canvas per segmentation class.

    Every primitive is drawn on the image; one that belongs to class ``c`` is drawn in white on mask ``c``,
    and any primitive drawn after the first object also erases what it covers from the other masks
    (a nearer car hides a cone). Objects are drawn far to near.
    """

    def __init__(self, width: int, height: int, background: Color):
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)
        self.masks = [Image.new("L", (_MASK_CANVAS, _MASK_CANVAS), 0) for _ in DEFAULT_SEG_CLASSES]
        self.mask_draws = [ImageDraw.Draw(m) for m in self.masks]
        self._scale = (_MASK_CANVAS / width, _MASK_CANVAS / height)
        self.current_class: int | None = None  # class of the primitives being drawn; None = scenery
        self._masking = False

    def _to_mask(self, points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        sx, sy = self._scale
        return [(x * sx, y * sy) for x, y in points]

    def _mask(self, kind: str, points: Sequence[tuple[float, float]], width: int = 0) -> None:
        cls = self.current_class
        if cls is not None:
            self._masking = True
        if not self._masking:  # scenery drawn before any object cannot hide one
            return
        scaled = self._to_mask(points)
        mask_width = max(1, int(round(width * self._scale[0]))) if width else 0
        for c, draw in enumerate(self.mask_draws):
            fill = 255 if c == cls else 0
            if kind == "polygon":
                draw.polygon(scaled, fill=fill)
            elif kind == "rectangle":
                draw.rectangle(_box(scaled), fill=fill)
            elif kind == "ellipse":
                draw.ellipse(_box(scaled), fill=fill)
            elif kind == "line":
                draw.line(scaled, fill=fill, width=mask_width)

    def polygon(self, points, color: Color, outline: Color | None = None):
        self.draw.polygon(points, fill=color, outline=outline)
        self._mask("polygon", points)

    def rectangle(self, box, color: Color):
        box = _box(box)
        self.draw.rectangle(box, fill=color)
        self._mask("rectangle", [(box[0], box[1]), (box[2], box[3])])

    def ellipse(self, box, color: Color):
        box = _box(box)
        self.draw.ellipse(box, fill=color)
        self._mask("ellipse", [(box[0], box[1]), (box[2], box[3])])

    def line(self, points, color: Color, width: int):
        width = max(1, int(round(width)))
        self.draw.line(points, fill=color, width=width)
        self._mask("line", points, width=width)

    def coverage(self) -> np.ndarray:
        """(num classes, SEG_MASK_SIZE, SEG_MASK_SIZE) uint8 soft masks."""
        return np.stack(
            [
                np.asarray(m.resize((SEG_MASK_SIZE, SEG_MASK_SIZE), Image.Resampling.BOX), dtype=np.uint8)
                for m in self.masks
            ]
        )


def _box(points) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 from a box or two corner points."""
    if len(points) == 2:
        (x0, y0), (x1, y1) = points
    else:
        x0, y0, x1, y1 = points
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _jitter(rng: np.random.Generator, color: Color, amount: int = 12) -> Color:
    shifted = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)
    return tuple(shifted)  # type: ignore[return-value]


def _lerp(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


@dataclass
class _Road:
    """Perspective of the scene: depth ``s`` in (0, 1] maps to image row ``horizon + s * (H - horizon)``."""

    width: int
    height: int
    horizon: int
    vanish_x: float
    bottom_center: float
    bottom_half_width: float

    def y(self, s: float) -> float:
        return self.horizon + s * (self.height - self.horizon)

    def x(self, s: float, u: float) -> float:
        """Column at depth `s` and lateral position `u` (-1 left road edge, +1 right edge)."""
        return self.vanish_x + (self.bottom_center - self.vanish_x) * s + u * self.bottom_half_width * s

    def px_per_m(self, s: float) -> float:
        return self.bottom_half_width * s / _ROAD_HALF_WIDTH_M


def _sky_colors(weather: str, daytime: str) -> tuple[Color, Color]:
    if daytime == "Dark":
        return (8, 10, 28), (34, 34, 58)
    if daytime == "Twilight":
        return (58, 52, 112), (236, 148, 92)
    return {
        "Sunny": ((68, 128, 218), (172, 206, 240)),
        "Cloudy": ((128, 140, 160), (196, 200, 208)),
        "Overcast": ((140, 142, 150), (188, 190, 194)),
        "Rainy": ((92, 98, 108), (140, 144, 150)),
        "Foggy": ((186, 188, 192), (212, 212, 214)),
    }[weather]


def _draw_background(canvas: _Canvas, road: _Road, rng: np.random.Generator, weather: str, daytime: str, scene: str):
    w, h, hz = canvas.width, canvas.height, road.horizon
    top, bottom = _sky_colors(weather, daytime)
    ramp = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None, None]
    sky = np.asarray(top, np.float32) * (1 - ramp) + np.asarray(bottom, np.float32) * ramp
    canvas.image.paste(Image.fromarray(np.broadcast_to(sky, (hz, w, 3)).astype(np.uint8)), (0, 0))
    if weather in ("Cloudy", "Overcast") and daytime != "Dark":
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, hz * 0.6)
            rx, ry = rng.uniform(0.06, 0.16) * w, rng.uniform(0.03, 0.07) * h
            canvas.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), _jitter(rng, (222, 224, 228), 8))
    if weather == "Sunny" and daytime == "Light":
        cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05, 0.3) * hz, 0.035 * w
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), (255, 248, 215))

    verge = (150, 150, 146) if scene == "Urban" else (84, 122, 64) if scene != "Highway" else (120, 128, 92)
    canvas.rectangle((0, hz, w, h), _jitter(rng, verge, 10))
    # Skyline / tree line, left and right of the road.
    for side in (-1, 1):
        x = road.x(0.0, 0)
        edge = x + side * w * rng.uniform(0.02, 0.06)
        while (side < 0 and edge > -0.1 * w) or (side > 0 and edge < 1.1 * w):
            if scene == "Urban" or (scene == "Residential" and rng.random() < 0.5):
                bw = rng.uniform(0.06, 0.16) * w
                bh = rng.uniform(0.15, 0.6) * hz if scene == "Urban" else rng.uniform(0.08, 0.2) * hz
                x0 = edge if side > 0 else edge - bw
                color = _jitter(
                    rng, [(150, 110, 90), (170, 170, 175), (120, 125, 140), (200, 190, 170)][int(rng.integers(4))], 15
                )
                canvas.rectangle((x0, hz - bh, x0 + bw, hz + 2), color)
                win = (220, 210, 140) if daytime == "Dark" else _lerp(color, (40, 50, 70), 0.6)
                step = max(6.0, bw / 5)
                for wy in np.arange(hz - bh + step * 0.5, hz - step * 0.5, step):
                    for wx in np.arange(x0 + step * 0.4, x0 + bw - step * 0.6, step):
                        canvas.rectangle((wx, wy, wx + step * 0.45, wy + step * 0.55), win)
                edge += side * (bw + rng.uniform(0, 0.02) * w)
            else:
                r = rng.uniform(0.025, 0.06) * w
                trunk_h = r * rng.uniform(0.8, 1.4)
                cx = edge + side * r
                canvas.rectangle((cx - r * 0.12, hz - trunk_h, cx + r * 0.12, hz + 2), (90, 64, 40))
                canvas.ellipse(
                    (cx - r, hz - trunk_h - 1.6 * r, cx + r, hz - trunk_h + 0.3 * r), _jitter(rng, (52, 104, 48), 18)
                )
                edge += side * r * rng.uniform(1.2, 2.4)

    # Road surface and markings.
    asphalt = _jitter(rng, (78, 78, 82), 8)
    far_l, far_r = road.x(0.0, -1.05), road.x(0.0, 1.05)
    canvas.polygon([(far_l, hz), (far_r, hz), (road.x(1.0, 1.05), h), (road.x(1.0, -1.05), h)], asphalt)
    edge_color = (230, 230, 225)
    for u in (-0.95, 0.95):
        canvas.polygon(
            [
                (road.x(0.02, u - 0.01), road.y(0.02)),
                (road.x(0.02, u + 0.01), road.y(0.02)),
                (road.x(1.0, u + 0.02), h),
                (road.x(1.0, u - 0.02), h),
            ],
            edge_color,
        )
    center_color = (236, 196, 40) if scene in ("Rural", "Highway") and rng.random() < 0.5 else edge_color
    s = 0.03
    while s < 1.0:
        s_end = min(1.0, s * 1.35)
        canvas.polygon(
            [
                (road.x(s, -0.015), road.y(s)),
                (road.x(s, 0.015), road.y(s)),
                (road.x(s_end, 0.015), road.y(s_end)),
                (road.x(s_end, -0.015), road.y(s_end)),
            ],
            center_color,
        )
        s = s_end * 1.3


def _draw_car(canvas: _Canvas, road: _Road, rng: np.random.Generator, s: float, u: float, color: Color, dark: bool):
    ppm = road.px_per_m(s)
    x, y = road.x(s, u), road.y(s)
    w, hgt = 1.8 * ppm, _HEIGHT_M["car"] * ppm
    canvas.rectangle((x - w / 2, y - hgt * 0.55, x + w / 2, y - hgt * 0.1), color)
    canvas.polygon(
        [(x - w * 0.4, y - hgt * 0.55), (x + w * 0.4, y - hgt * 0.55), (x + w * 0.3, y - hgt), (x - w * 0.3, y - hgt)],
        _lerp(color, (0, 0, 0), 0.25),
    )
    canvas.rectangle((x - w * 0.26, y - hgt * 0.93, x + w * 0.26, y - hgt * 0.62), (50, 62, 78))
    for side in (-1, 1):
        canvas.rectangle((x + side * w * 0.5 - side * w * 0.05, y - hgt * 0.15, x + side * w * 0.32, y), (20, 20, 20))
        light = (255, 60, 50) if not dark else (255, 120, 100)
        canvas.rectangle((x + side * w * 0.42, y - hgt * 0.48, x + side * w * 0.3, y - hgt * 0.38), light)


def _draw_object(canvas: _Canvas, road: _Road, rng: np.random.Generator, kind: str, s: float, u: float) -> None:
    canvas.current_class = DEFAULT_SEG_CLASSES.index(kind)
    ppm = road.px_per_m(s)
    x, y = road.x(s, u), road.y(s)
    hgt = _HEIGHT_M[kind] * ppm * rng.uniform(0.9, 1.1)
    orange = _jitter(rng, (250, 108, 10), 10)
    white = (238, 238, 232)
    if kind == "cone":
        base_w = hgt * 0.55
        canvas.rectangle((x - base_w / 2, y - hgt * 0.08, x + base_w / 2, y), (30, 30, 30))
        canvas.polygon(
            [
                (x - hgt * 0.2, y - hgt * 0.08),
                (x + hgt * 0.2, y - hgt * 0.08),
                (x + hgt * 0.05, y - hgt),
                (x - hgt * 0.05, y - hgt),
            ],
            orange,
        )
        for t0, t1 in ((0.35, 0.48), (0.6, 0.7)):
            half0, half1 = 0.2 - 0.15 * t0, 0.2 - 0.15 * t1
            canvas.polygon(
                [
                    (x - hgt * half0, y - hgt * t0),
                    (x + hgt * half0, y - hgt * t0),
                    (x + hgt * half1, y - hgt * t1),
                    (x - hgt * half1, y - hgt * t1),
                ],
                white,
            )
    elif kind == "barrier":
        width = hgt * rng.uniform(1.6, 2.4)
        x0, x1 = x - width / 2, x + width / 2
        for lx in (x0 + width * 0.1, x1 - width * 0.1):
            canvas.line([(lx, y), (lx, y - hgt)], (120, 120, 120), max(1, hgt * 0.06))
        for top, bottom in ((0.55, 0.75), (0.2, 0.4)) if rng.random() < 0.6 else ((0.45, 0.8),):
            yt, yb = y - hgt * bottom, y - hgt * top
            canvas.rectangle((x0, yt, x1, yb), white)
            stripe = max(2.0, (yb - yt) * 1.2)
            sx = x0
            while sx < x1:
                pts = [
                    (sx, yt),
                    (min(sx + stripe * 0.5, x1), yt),
                    (min(max(sx + stripe * 0.5 - (yb - yt), x0), x1), yb),
                    (max(sx - (yb - yt), x0), yb),
                ]
                canvas.polygon(pts, orange)
                sx += stripe
    elif kind == "sign":
        pole_w = max(1, hgt * 0.035)
        canvas.line([(x, y), (x, y - hgt * 0.55)], (140, 140, 140), pole_w)
        r, cy = hgt * 0.25, y - hgt * 0.72
        canvas.polygon([(x, cy - r), (x + r, cy), (x, cy + r), (x - r, cy)], (20, 20, 20))
        r2 = r * 0.86
        canvas.polygon([(x, cy - r2), (x + r2, cy), (x, cy + r2), (x - r2, cy)], orange)
        g = r * 0.35  # a worker-with-shovel glyph
        canvas.ellipse((x - g * 0.2, cy - g * 1.1, x + g * 0.2, cy - g * 0.7), (20, 20, 20))
        canvas.line([(x, cy - g * 0.7), (x - g * 0.1, cy + g * 0.2)], (20, 20, 20), max(1, g * 0.25))
        canvas.line([(x - g * 0.1, cy + g * 0.2), (x - g * 0.5, cy + g * 0.9)], (20, 20, 20), max(1, g * 0.2))
        canvas.line([(x - g * 0.1, cy + g * 0.2), (x + g * 0.3, cy + g * 0.9)], (20, 20, 20), max(1, g * 0.2))
        canvas.line([(x, cy - g * 0.4), (x + g * 0.7, cy + g * 0.1)], (20, 20, 20), max(1, g * 0.15))
    elif kind == "worker":
        vest = (214, 255, 40) if rng.random() < 0.6 else orange
        w = hgt * 0.32
        canvas.rectangle((x - w * 0.45, y - hgt * 0.48, x - w * 0.05, y), (40, 48, 80))
        canvas.rectangle((x + w * 0.05, y - hgt * 0.48, x + w * 0.45, y), (40, 48, 80))
        canvas.rectangle((x - w / 2, y - hgt * 0.82, x + w / 2, y - hgt * 0.46), vest)
        canvas.rectangle((x - w / 2, y - hgt * 0.62, x + w / 2, y - hgt * 0.58), (205, 205, 215))
        canvas.line([(x - w / 2, y - hgt * 0.8), (x - w * 0.8, y - hgt * 0.5)], vest, max(1, w * 0.22))
        canvas.line([(x + w / 2, y - hgt * 0.8), (x + w * 0.8, y - hgt * 0.55)], vest, max(1, w * 0.22))
        head = hgt * 0.09
        canvas.ellipse(
            (x - head, y - hgt * 0.82 - 2 * head, x + head, y - hgt * 0.82), _jitter(rng, (196, 150, 120), 30)
        )
        canvas.ellipse(
            (x - head * 1.2, y - hgt * 0.82 - 2.3 * head, x + head * 1.2, y - hgt * 0.82 - 1.1 * head),
            (250, 220, 20) if rng.random() < 0.6 else white,
        )
    elif kind == "vehicle":
        yellow = _jitter(rng, (240, 186, 24), 12)
        w = hgt * rng.uniform(1.4, 1.9)
        x0 = x - w / 2
        if rng.random() < 0.5:  # excavator
            canvas.rectangle((x0, y - hgt * 0.22, x0 + w, y), (40, 40, 40))
            canvas.rectangle((x0 + w * 0.1, y - hgt * 0.6, x0 + w * 0.75, y - hgt * 0.22), yellow)
            canvas.rectangle((x0 + w * 0.45, y - hgt * 0.95, x0 + w * 0.75, y - hgt * 0.6), yellow)
            canvas.rectangle((x0 + w * 0.5, y - hgt * 0.9, x0 + w * 0.7, y - hgt * 0.66), (60, 80, 100))
            arm = [(x0 + w * 0.2, y - hgt * 0.55), (x0 - w * 0.15, y - hgt * 1.0), (x0 - w * 0.35, y - hgt * 0.35)]
            canvas.line(arm, yellow, max(2, hgt * 0.1))
            canvas.polygon(
                [(x0 - w * 0.45, y - hgt * 0.38), (x0 - w * 0.22, y - hgt * 0.38), (x0 - w * 0.3, y - hgt * 0.12)],
                (60, 60, 60),
            )
        else:  # dump truck
            canvas.rectangle((x0, y - hgt * 0.75, x0 + w * 0.62, y - hgt * 0.2), yellow)
            canvas.rectangle((x0 + w * 0.64, y - hgt * 0.9, x0 + w, y - hgt * 0.2), yellow)
            canvas.rectangle((x0 + w * 0.7, y - hgt * 0.85, x0 + w * 0.95, y - hgt * 0.6), (60, 80, 100))
            for wx in (0.15, 0.45, 0.82):
                r = hgt * 0.16
                canvas.ellipse((x0 + w * wx - r, y - 2 * r, x0 + w * wx + r, y), (25, 25, 25))
        canvas.ellipse((x0 + w * 0.55, y - hgt * 1.02, x0 + w * 0.62, y - hgt * 0.95), (255, 170, 0))
    elif kind == "equipment":
        if rng.random() < 0.6:  # traffic drum
            w = hgt * 0.6
            canvas.rectangle((x - w * 0.6, y - hgt * 0.06, x + w * 0.6, y), (30, 30, 30))
            canvas.rectangle((x - w / 2, y - hgt, x + w / 2, y - hgt * 0.06), orange)
            for t in (0.25, 0.55, 0.8):
                canvas.rectangle((x - w / 2, y - hgt * (t + 0.1), x + w / 2, y - hgt * t), white)
        else:  # arrow board on a trailer
            w = hgt * 2.2
            canvas.line([(x, y), (x, y - hgt * 0.5)], (90, 90, 90), max(1, hgt * 0.08))
            canvas.rectangle((x - w * 0.3, y - hgt * 0.25, x + w * 0.3, y - hgt * 0.05), orange)
            canvas.rectangle((x - w / 2, y - hgt * 1.6, x + w / 2, y - hgt * 0.5), (20, 20, 20))
            cy, a = y - hgt * 1.05, hgt * 0.35
            canvas.polygon(
                [
                    (x - w * 0.35, cy - a * 0.3),
                    (x + w * 0.1, cy - a * 0.3),
                    (x + w * 0.1, cy - a),
                    (x + w * 0.4, cy),
                    (x + w * 0.1, cy + a),
                    (x + w * 0.1, cy + a * 0.3),
                    (x - w * 0.35, cy + a * 0.3),
                ],
                (255, 200, 40),
            )
    canvas.current_class = None


def _apply_weather(
    image: Image.Image, rng: np.random.Generator, weather: str, daytime: str, horizon: int
) -> Image.Image:
    array = np.asarray(image).astype(np.float32)
    h, w = array.shape[:2]
    if weather == "Foggy":
        veil = np.clip(1.0 - np.abs(np.arange(h, dtype=np.float32) - horizon) / (0.9 * h), 0.25, 1.0)[:, None, None]
        array = array * (1 - 0.55 * veil) + 205.0 * 0.55 * veil
    if daytime == "Dark":
        array *= 0.42
    elif daytime == "Twilight":
        array *= np.asarray((0.85, 0.75, 0.8), np.float32)
    if weather == "Rainy":
        array *= 0.85
    noise = rng.standard_normal((h, w, 1), dtype=np.float32)  # sensor noise, sigma 4
    noise *= 4.0
    array += noise
    np.clip(array, 0, 255, out=array)
    image = Image.fromarray(array.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if daytime == "Dark":  # street lights
        for _ in range(int(rng.integers(2, 6))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0.2, 0.9) * horizon, rng.uniform(2, 5)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), (255, 236, 170))
    if weather == "Rainy":
        length = 0.04 * h
        for _ in range(int(0.15 * w)):
            x0, y0 = rng.uniform(-0.1 * w, w), rng.uniform(0, h)
            draw.line([(x0, y0), (x0 + 0.25 * length, y0 + length)], (190, 194, 200), 1)
    return image.filter(ImageFilter.SMOOTH)  # soften the drawn edges (a 3x3 kernel; GaussianBlur costs 10x more)


_PHRASES = {
    "cone": ("an orange traffic cone", "orange traffic cones"),
    "barrier": ("a striped construction barrier", "striped construction barriers"),
    "sign": ("a diamond-shaped road work sign", "road work signs"),
    "worker": ("a worker in a high-visibility vest", "workers in high-visibility vests"),
    "vehicle": ("a construction vehicle", "construction vehicles"),
    "equipment": ("construction equipment", "construction equipment"),
}
_PLACES = {
    "Urban": "an urban street",
    "Highway": "a highway",
    "Residential": "a residential road",
    "Rural": "a rural road",
}


def describe_scene(objects: Sequence[str], scene: str, weather: str, daytime: str, rng: np.random.Generator) -> str:
    """A one-sentence description of what the generator drew (as the dataset's scene descriptions read)."""
    place = _PLACES[scene]
    when = {"Dark": " at night", "Twilight": " at dusk"}.get(daytime, "")
    sky = {"Rainy": " in the rain", "Foggy": " in fog"}.get(weather, "")
    if not objects:
        return f"A clear view of {place}{when}{sky} with normal traffic."
    counts = {k: objects.count(k) for k in DEFAULT_SEG_CLASSES if k in objects}
    phrases = [_PHRASES[k][0 if n == 1 else 1] for k, n in counts.items()]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    plural = len(phrases) > 1 or objects.count(next(iter(counts))) > 1
    verb = (
        ("is visible on", "narrows the road on", "marks roadwork on"),
        ("are visible on", "narrow the lanes of", "mark roadwork on"),
    )[plural][int(rng.integers(3))]
    return f"{listed[0].upper()}{listed[1:]} {verb} {place}{when}{sky}."


# Scene variants, each the generator of a test split of its own (SyntheticDatasetConfig.num_hard_test):
# - standard: the default mix;
# - small: roadwork scenes whose only roadwork is one or two small, distant objects (a cone, a drum or a sign far
#   down the road, < 1% of the image): what the tiles exist to find;
# - occluded: roadwork objects partly hidden by a nearer car in front of each;
# - distractor: roadwork-free scenes full of orange that is not roadwork (orange cars, an orange shop sign, traffic
#   lights, autumn leaves), against which a model that learned "orange" rather than "roadwork" fails.
# Roadwork scenes of the distractor variant and roadwork-free scenes of the small and occluded variants are
# standard scenes, so each split asks one question.
SCENE_VARIANTS = ("standard", "small", "occluded", "distractor")


def _draw_traffic_light(canvas: _Canvas, road: _Road, rng: np.random.Generator, s: float, u: float) -> None:
    ppm = road.px_per_m(s)
    x, y = road.x(s, u), road.y(s)
    pole, box_h, box_w = 4.5 * ppm, 1.0 * ppm, 0.38 * ppm
    canvas.line([(x, y), (x, y - pole)], (70, 70, 70), max(1, ppm * 0.12))
    top = y - pole
    canvas.rectangle((x - box_w / 2, top, x + box_w / 2, top + box_h), (30, 30, 30))
    lit = int(rng.integers(3))  # red, amber or green
    for k, color in enumerate(((230, 40, 30), (255, 160, 0), (40, 200, 80))):
        r = box_w * 0.3
        cy = top + box_h * (0.18 + 0.32 * k)
        canvas.ellipse((x - r, cy - r, x + r, cy + r), color if k == lit else _lerp(color, (30, 30, 30), 0.75))


def _draw_shop_sign(canvas: _Canvas, road: _Road, rng: np.random.Generator, s: float, u: float) -> None:
    """An orange rectangular shop or fuel-station sign on a post: orange, but not a diamond road-work sign."""
    ppm = road.px_per_m(s)
    x, y = road.x(s, u), road.y(s)
    w, h = rng.uniform(2.0, 3.2) * ppm, rng.uniform(1.0, 1.5) * ppm
    canvas.line([(x, y), (x, y - 3.0 * ppm)], (110, 110, 110), max(1, ppm * 0.15))
    top = y - 3.0 * ppm - h
    canvas.rectangle((x - w / 2, top, x + w / 2, top + h), _jitter(rng, (245, 120, 20), 10))
    for k in range(3):  # lettering
        lx = x - w * 0.38 + k * w * 0.27
        canvas.rectangle((lx, top + h * 0.3, lx + w * 0.18, top + h * 0.7), (250, 250, 245))


def _draw_leaves(canvas: _Canvas, road: _Road, rng: np.random.Generator) -> None:
    """Autumn leaves scattered on the verges."""
    for _ in range(int(rng.integers(25, 60))):
        s = rng.uniform(0.3, 1.0)
        u = rng.choice((-1, 1)) * rng.uniform(1.1, 2.2)
        x, y = road.x(s, u), road.y(s) - rng.uniform(0, 0.2) * road.px_per_m(s)
        r = max(1.0, 0.12 * road.px_per_m(s) * rng.uniform(0.6, 1.4))
        canvas.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), _jitter(rng, (230, 110, 20), 25))


def _roadwork_items(rng: np.random.Generator, variant: str) -> list[tuple[float, str, float]]:
    """(depth, kind, lateral) of the roadwork objects of a roadwork scene of `variant`."""
    items: list[tuple[float, str, float]] = []
    if variant == "small":
        # One or two objects far down the road, near its edge: a few pixels tall.
        for _ in range(int(rng.integers(1, 3))):
            kind = ("cone", "equipment", "sign")[int(rng.integers(3))]
            items.append((rng.uniform(0.1, 0.22), kind, rng.choice((-1, 1)) * rng.uniform(0.7, 1.15)))
        return items
    kinds = list(OBJECT_WEIGHTS)
    weights = np.asarray(list(OBJECT_WEIGHTS.values()))
    for _ in range(int(rng.integers(1, 5))):
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        s, u = rng.uniform(0.2, 0.85), rng.uniform(-1.25, 1.25)
        if kind in ("cone", "equipment") and rng.random() < 0.6:  # a taper of cones / drums along a lane
            step = rng.uniform(0.05, 0.1)
            for k in range(int(rng.integers(3, 7))):
                depth = s + k * step
                if depth < 0.95:
                    items.append((depth, kind, u + k * rng.uniform(-0.08, 0.08)))
        else:
            items.append((s, kind, u))
    return items


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    roadwork: bool,
    weather: str,
    daytime: str,
    scene: str,
    variant: str = "standard",
) -> tuple[Image.Image, np.ndarray, list[str]]:
    """
    Draws one scene of `variant` (`SCENE_VARIANTS`). Returns the image, (6, SEG_MASK_SIZE, SEG_MASK_SIZE) uint8
    soft masks and the object kinds drawn.
    """
    if variant not in SCENE_VARIANTS:
        raise ValueError(f"variant must be one of {SCENE_VARIANTS}, got {variant!r}")
    state = rng.bit_generator.state
    image, masks, objects = _render(rng, width, height, roadwork, weather, daytime, scene, variant)
    if variant == "occluded" and roadwork and masks.max() == 0:
        # The cars hid every object (about 7% of occluded scenes): the label would be wrong. Draw the same scene
        # with its occluding cars shifted clear of the objects instead, so only traffic can hide them.
        rng.bit_generator.state = state
        image, masks, objects = _render(rng, width, height, roadwork, weather, daytime, scene, variant, shift=0.45)
    return image, masks, objects


def _render(rng, width, height, roadwork, weather, daytime, scene, variant, shift: float | None = None):
    horizon = int(height * rng.uniform(0.38, 0.52))
    road = _Road(
        width=width,
        height=height,
        horizon=horizon,
        vanish_x=width * rng.uniform(0.4, 0.6),
        bottom_center=width * rng.uniform(0.42, 0.58),
        bottom_half_width=width * rng.uniform(0.38, 0.5),
    )
    canvas = _Canvas(width, height, (0, 0, 0))
    _draw_background(canvas, road, rng, weather, daytime, scene)

    items: list[tuple[float, str, float]] = []  # (depth, kind, lateral)
    for _ in range(int(rng.integers(0, 4))):
        items.append((rng.uniform(0.15, 0.8), "car", rng.choice((-0.5, 0.5)) + rng.uniform(-0.1, 0.1)))
    if roadwork:
        roadwork_items = _roadwork_items(rng, variant)
        items += roadwork_items
        if variant == "occluded":
            # A car just in front of every object (nearer, so drawn later), shifted sideways by 30-60% of its
            # half-width (a car spans about u +- 0.26), so that it hides part of the object. One object's car is
            # shifted further (110-140%: it covers the object's near edge), so that some roadwork stays in sight.
            anchor = int(rng.integers(len(roadwork_items)))
            for k, (s, kind, u) in enumerate(roadwork_items):
                low, high = (0.28, 0.36) if k == anchor else (0.08, 0.16)
                offset = rng.choice((-1, 1)) * rng.uniform(low, high)
                if shift is not None:
                    offset = np.sign(offset) * shift
                items.append((min(s + rng.uniform(0.02, 0.05), 0.98), "car", u + offset))
    elif variant == "distractor":
        for _ in range(int(rng.integers(1, 3))):
            items.append((rng.uniform(0.3, 0.85), "orange_car", rng.choice((-0.5, 0.5))))
        items.append((rng.uniform(0.25, 0.6), "shop_sign", rng.choice((-1, 1)) * rng.uniform(1.3, 1.8)))
        items.append((rng.uniform(0.2, 0.5), "traffic_light", rng.choice((-1, 1)) * rng.uniform(1.1, 1.3)))
        _draw_leaves(canvas, road, rng)
    elif rng.random() < 0.25:  # hard negative: an orange or yellow car, no roadwork
        items.append((rng.uniform(0.3, 0.8), "orange_car", rng.choice((-0.5, 0.5))))

    objects: list[str] = []
    for s, kind, u in sorted(items):  # far to near, so nearer things occlude
        if kind in ("car", "orange_car"):
            color = _jitter(
                rng, (240, 120, 20) if kind == "orange_car" else tuple(int(c) for c in rng.integers(20, 230, 3)), 10
            )
            _draw_car(canvas, road, rng, s, u, color, daytime == "Dark")
        elif kind == "shop_sign":
            _draw_shop_sign(canvas, road, rng, s, u)
        elif kind == "traffic_light":
            _draw_traffic_light(canvas, road, rng, s, u)
        else:
            _draw_object(canvas, road, rng, kind, s, u)
            objects.append(kind)
    masks = canvas.coverage()
    image = _apply_weather(canvas.image, rng, weather, daytime, horizon)
    return image, masks, objects


__all__ = ["OBJECT_WEIGHTS", "SCENE_VARIANTS", "describe_scene", "render_scene"]
