"""Tests of RoadworkImageProcessor: view geometry, decoding of every input kind and mode, output values,
the JPEG draft fast path, and the save_pretrained -> AutoImageProcessor round trip from a fresh process."""

import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from roadwork_testing import BLOCK_PROJECT_IMPORTS

from modeling_roadwork.image_processing_roadwork import RoadworkImageProcessor


SIZES = [(4032, 3024), (1920, 1080), (224, 224), (3024, 4032), (100, 37)]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Fast (JPEG draft at 1/2..1/8 scale) and full decoding differ by resampling error only: the mean absolute
# difference per view, in normalised units (1 grey level ~ 0.017), stays below this on textured images
# (measured: 0.005-0.011 here, 0.004-0.021 on the 4032x3024 benchmark image).
FAST_DECODE_TOLERANCE = 0.03


def textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 with structure at several scales, so that a misplaced view or a wrong rotation shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 127 + 70 * np.sin(x / 23.0) * np.cos(y / 31.0) + 40 * np.sin((x + 2 * y) / 97.0)
    image = np.stack([base, 255 - base, 0.5 * x / width * 255 + 0.5 * y / height * 255], axis=-1)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: PIL.Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def processor():
    return RoadworkImageProcessor(view_size=32)


# ----------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("width,height", SIZES)
def test_view_boxes_geometry(width, height):
    processor = RoadworkImageProcessor()
    boxes = processor.view_boxes(width, height)
    assert len(boxes) == 12 == processor.num_views
    for box in boxes:
        left, top, right, bottom = box
        assert all(isinstance(v, int) for v in box)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height, box

    assert boxes[0] == (0, 0, width, height)

    tiles = boxes[1:10]
    tile_w, tile_h = tiles[0][2] - tiles[0][0], tiles[0][3] - tiles[0][1]
    assert all((right - left, bottom - top) == (tile_w, tile_h) for left, top, right, bottom in tiles)
    if max(width, height) / min(width, height) <= 2.5:
        assert tile_w == tile_h, "tiles are square unless the aspect ratio exceeds 1 + 2 * 0.75"
    else:
        # A square tile cannot cover with 25% overlap; the tile spans the whole short side instead.
        assert min(tile_w, tile_h) == min(width, height) and max(tile_w, tile_h) < max(width, height)

    covered = np.zeros((height, width), dtype=bool)
    for left, top, right, bottom in tiles:
        covered[top:bottom, left:right] = True
    assert covered.all(), "the tiles must cover every pixel"

    grid = [tiles[row * 3 : row * 3 + 3] for row in range(3)]
    for row in range(3):
        assert len({t[1] for t in grid[row]}) == 1, "row-major: a row shares its top edge"
        for a, b in zip(grid[row], grid[row][1:]):
            assert b[0] > a[0] or tile_w == width
            assert a[2] - b[0] >= 0.25 * tile_w, (a, b)
    for column in range(3):
        for a, b in zip([grid[r][column] for r in range(3)], [grid[r][column] for r in range(1, 3)]):
            assert b[1] >= a[1]
            assert a[3] - b[1] >= 0.25 * tile_h, (a, b)
    assert tiles[0][:2] == (0, 0) and tiles[-1][2:] == (width, height), "outer tiles are flush with the edges"

    side = min(width, height)
    centre, right = boxes[10], boxes[11]
    assert centre[2] - centre[0] == centre[3] - centre[1] == side
    assert right[2] - right[0] == right[3] - right[1] == side
    assert abs((centre[0] + centre[2]) - width) <= 1 and abs((centre[1] + centre[3]) - height) <= 1
    assert right[2] == width and right[1] == centre[1]


def test_view_boxes_4032x3024_numbers():
    # The original design's 1344 px tiles at stride 1008 end at x = 3360 and leave 672 px uncovered; ours cover.
    boxes = RoadworkImageProcessor().view_boxes(4032, 3024)
    assert boxes[1:4] == [(0, 0, 1614, 1614), (1209, 0, 2823, 1614), (2418, 0, 4032, 1614)]
    assert [b[1] for b in boxes[1:10:3]] == [0, 705, 1410]
    assert boxes[10:] == [(504, 0, 3528, 3024), (1008, 0, 4032, 3024)]


def test_other_grids_and_tiny_images():
    processor = RoadworkImageProcessor(tile_grid=2, tile_overlap=0.5, view_size=8)
    assert processor.num_views == 7 and len(processor.view_boxes(300, 200)) == 7
    for width, height in [(1, 1), (2, 1), (3, 7)]:
        boxes = RoadworkImageProcessor().view_boxes(width, height)
        assert all(
            0 <= left < right <= width and 0 <= top < bottom <= height for left, top, right, bottom in boxes
        )
    with pytest.raises(ValueError, match="width"):
        RoadworkImageProcessor().view_boxes(0, 10)


@pytest.mark.parametrize(
    "kwargs,bad",
    [
        ({"view_size": 0}, "0"),
        ({"view_size": 51.2}, "51.2"),
        ({"view_size": True}, "True"),
        ({"tile_grid": 0}, "0"),
        ({"tile_overlap": 1.0}, "1.0"),
        ({"tile_overlap": -0.1}, "-0.1"),
        ({"resample": PIL.Image.Resampling.NEAREST}, "0"),
        ({"resample": "nearest"}, "nearest"),
        ({"image_std": (0.2, 0.0, 0.2)}, "0.0"),
        ({"image_mean": (0.5, 0.5)}, "0.5"),
        ({"do_normalize": "yes"}, "yes"),
        ({"fast_decode": None}, "None"),
    ],
)
def test_constructor_rejects_bad_values(kwargs, bad):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))}.*{bad}"):
        RoadworkImageProcessor(**kwargs)


def test_constructor_rejects_unknown_kwargs():
    with pytest.raises(TypeError, match="view_sise"):
        RoadworkImageProcessor(view_sise=224)


# ----------------------------------------------------------------------------------------------- outputs


def test_output_shapes_single_and_batch(processor):
    image = PIL.Image.fromarray(textured(120, 90))
    single = processor(images=image, return_tensors="pt")
    assert list(single.keys()) == ["pixel_values"]
    assert single["pixel_values"].shape == (1, 12, 3, 32, 32) and single["pixel_values"].dtype == torch.float32

    other = PIL.Image.fromarray(textured(50, 140, seed=1))
    batch = processor([image, other], return_tensors="pt", return_view_boxes=True)
    assert batch["pixel_values"].shape == (2, 12, 3, 32, 32)
    assert batch["view_boxes"].shape == (2, 12, 4) and batch["view_boxes"].dtype == torch.int64
    assert batch["view_boxes"][1].tolist() == [list(b) for b in processor.view_boxes(50, 140)]
    assert torch.isfinite(batch["pixel_values"]).all()
    torch.testing.assert_close(batch["pixel_values"][0], single["pixel_values"][0])

    as_numpy = processor(image)["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (1, 12, 3, 32, 32)


def test_constant_grey_is_normalised(processor):
    grey = PIL.Image.new("RGB", (300, 200), (128, 128, 128))
    pixel_values = processor(grey, return_tensors="pt")["pixel_values"]
    expected = torch.from_numpy((128 / 255 - MEAN) / STD).view(1, 1, 3, 1, 1).expand_as(pixel_values)
    torch.testing.assert_close(pixel_values, expected, atol=1e-5, rtol=0)

    unnormalised = processor(grey, return_tensors="pt", do_normalize=False)["pixel_values"]
    torch.testing.assert_close(unnormalised, torch.full_like(unnormalised, 128 / 255), atol=1e-6, rtol=0)


def test_views_show_their_boxes():
    # A left half black / right half white image: the right-hand square of a wide image is all white,
    # the first tile all black, the global view half and half.
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 150:] = 255
    processor = RoadworkImageProcessor(view_size=16, do_normalize=False)
    pixel_values = processor(array, return_tensors="pt")["pixel_values"][0]
    assert pixel_values[1].max() < 0.01 and pixel_values[11].min() > 0.99
    assert abs(pixel_values[0].mean().item() - 0.5) < 0.02


# ----------------------------------------------------------------------------------------------- inputs


def test_every_input_kind_gives_the_same_views(processor, tmp_path):
    array = textured(160, 120)
    png = encode(PIL.Image.fromarray(array), "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(png)
    inputs = {
        "pil": PIL.Image.fromarray(array),
        "str": str(path),
        "path": path,
        "bytes": png,
        "dict_bytes": {"bytes": png, "path": None},
        "dict_path": {"bytes": None, "path": str(path)},
        "numpy_hwc_uint8": array,
        "torch_chw_uint8": torch.from_numpy(array).permute(2, 0, 1),
        "torch_chw_float": torch.from_numpy(array).permute(2, 0, 1).float() / 255,
    }
    reference = processor(inputs["pil"], return_tensors="pt")["pixel_values"]
    for name, image in inputs.items():
        torch.testing.assert_close(processor(image, return_tensors="pt")["pixel_values"], reference, msg=name)
    batched = processor(np.stack([array, array]), return_tensors="pt")["pixel_values"]
    assert batched.shape[0] == 2


def make_mode(mode: str, size=(64, 48)) -> PIL.Image.Image:
    rgb = PIL.Image.fromarray(textured(*size))
    if mode == "I;16":
        return PIL.Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1", "I", "F"])
def test_modes_become_rgb(processor, mode):
    image = make_mode(mode)
    assert image.mode == mode
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 12, 3, 32, 32) and torch.isfinite(pixel_values).all()


def test_sixteen_bit_is_scaled_not_clipped(processor):
    for image in [
        PIL.Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16)),  # 32896 = 128 * 257
        PIL.Image.open(io.BytesIO(encode(PIL.Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16)), "PNG"))),
    ]:
        assert image.mode.startswith("I")
        unnormalised = processor(image, return_tensors="pt", do_normalize=False)["pixel_values"]
        torch.testing.assert_close(unnormalised, torch.full_like(unnormalised, 128 / 255), atol=1e-6, rtol=0)


def test_alpha_is_composited_on_white(processor):
    transparent = PIL.Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    half = PIL.Image.new("LA", (40, 30), (0, 128))
    white = processor(transparent, return_tensors="pt", do_normalize=False)["pixel_values"]
    torch.testing.assert_close(white, torch.ones_like(white))
    grey = processor(half, return_tensors="pt", do_normalize=False)["pixel_values"]
    assert torch.allclose(grey, torch.full_like(grey, 127 / 255), atol=1.5 / 255)


def test_exif_orientation_is_applied(tmp_path):
    upright = PIL.Image.fromarray(textured(640, 480))
    # Orientation 6 means "rotate 90 degrees clockwise to display": store the image turned the other way.
    stored = upright.transpose(PIL.Image.Transpose.ROTATE_90)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())

    # The same decoded pixels, turned upright by hand (fromarray drops the EXIF, which would rotate it again).
    by_hand = PIL.Image.fromarray(np.asarray(PIL.Image.open(path))).transpose(PIL.Image.Transpose.ROTATE_270)
    assert by_hand.size == (640, 480)

    for fast_decode in (False, True):
        processor = RoadworkImageProcessor(view_size=64, fast_decode=fast_decode)
        from_file = processor(str(path), return_tensors="pt", return_view_boxes=True)
        expected = processor(by_hand, return_tensors="pt", return_view_boxes=True)
        assert from_file["view_boxes"].tolist() == expected["view_boxes"].tolist()
        if fast_decode:
            difference = (from_file["pixel_values"] - expected["pixel_values"]).abs().mean(dim=(0, 2, 3, 4))
            assert difference.max() < FAST_DECODE_TOLERANCE, difference
        else:
            torch.testing.assert_close(from_file["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize(
    "bad,name",
    [
        ("file", "broken.jpg"),
        (b"\x00\x01 this is not an image", "bytes"),
        ({"bytes": b"garbage", "path": "shard-0/row-17.jpg"}, "row-17.jpg"),
        ("truncated", "truncated.jpg"),
        ("missing", "missing.jpg"),
    ],
)
def test_undecodable_input_raises_value_error_naming_it(processor, tmp_path, bad, name):
    if bad == "file":
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif bad == "truncated":
        bad = tmp_path / "truncated.jpg"
        bad.write_bytes(encode(PIL.Image.fromarray(textured(200, 150)), "JPEG")[:600])
    elif bad == "missing":
        bad = tmp_path / "missing.jpg"
    with pytest.raises(ValueError, match=f"Could not decode image .*{name}"):
        processor([PIL.Image.new("RGB", (8, 8)), bad])


def test_unsupported_type_raises_type_error(processor):
    with pytest.raises(TypeError, match="int"):
        processor(3)


# ----------------------------------------------------------------------------------------------- public steps


def test_extract_views_then_normalize_is_the_processor_call(tmp_path):
    # A JPEG large enough for the draft path, so extract_views takes the very decode that serving takes.
    path = tmp_path / "large.jpg"
    PIL.Image.fromarray(textured(1280, 960)).save(path, quality=90)
    processor = RoadworkImageProcessor(view_size=64)
    views = processor.extract_views(str(path))
    assert views.shape == (12, 64, 64, 3) and views.dtype == np.uint8
    served = processor(str(path), return_tensors="pt")
    assert torch.equal(processor.normalize(views), served["pixel_values"][0])
    assert torch.equal(processor.normalize(list(views)), served["pixel_values"][0])  # a list of augmented views
    unnormalised = processor(str(path), return_tensors="pt", do_normalize=False)["pixel_values"][0]
    assert torch.equal(processor.normalize(views, do_normalize=False), unnormalised)
    # The mean and std are the processor's own: another processor normalises the same views differently.
    other = RoadworkImageProcessor(view_size=64, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    torch.testing.assert_close(other.normalize(views), unnormalised * 2 - 1)
    with pytest.raises(ValueError, match="uint8"):
        processor.normalize(views.astype(np.float32))


def test_load_image_is_the_processor_decoder(tmp_path):
    processor = RoadworkImageProcessor(view_size=32, fast_decode=False)
    # Transparent pixels with a colour underneath: the decoder composites them on white, `.convert("RGB")` would not.
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:, :20, 3] = 255, 255
    sixteen_bit = PIL.Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16))
    upright = PIL.Image.fromarray(textured(64, 48))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = {
        "bytes": encode(upright.transpose(PIL.Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    }
    for image in (encode(PIL.Image.fromarray(rgba), "PNG"), sixteen_bit, rotated):
        loaded = processor.load_image(image)
        assert loaded.mode == "RGB"
        assert np.array_equal(processor(loaded)["pixel_values"], processor(image)["pixel_values"])
    assert np.asarray(processor.load_image(encode(PIL.Image.fromarray(rgba), "PNG")))[0, -1].tolist() == [255] * 3
    assert np.asarray(processor.load_image(sixteen_bit))[0, 0].tolist() == [128] * 3
    assert processor.load_image(rotated).size == (64, 48)
    with pytest.raises(ValueError, match="Could not decode image"):
        processor.load_image(b"not an image")


# ----------------------------------------------------------------------------------------------- fast path


def test_fast_decode_is_close_to_full_decode(tmp_path):
    path = tmp_path / "large.jpg"
    PIL.Image.fromarray(textured(1280, 960)).save(path, quality=90)
    processor = RoadworkImageProcessor(view_size=64)
    # Tiles are 512 px, so libjpeg may decode at 1/8 and still leave 64 source pixels per tile side.
    assert processor.draft_scale(1280, 960) == 8
    _, width, height, scale = processor._decode(str(path), fast_decode=True)
    assert (width, height, scale) == (1280, 960, 1 / 8)
    assert processor._decode(str(path), fast_decode=False)[3] == 1.0
    assert RoadworkImageProcessor(view_size=512).draft_scale(4032, 3024) == 2

    fast = processor(str(path), return_tensors="pt")["pixel_values"]
    full = RoadworkImageProcessor(view_size=64, fast_decode=False)(str(path), return_tensors="pt")["pixel_values"]
    difference = (fast - full).abs().mean(dim=(0, 2, 3, 4))
    assert difference.max() < FAST_DECODE_TOLERANCE, difference
    assert not torch.equal(fast, full), "the draft path should really have decoded at reduced scale"


def test_lanczos_matches_bicubic_roughly(tmp_path):
    image = PIL.Image.fromarray(textured(320, 240))
    bicubic = RoadworkImageProcessor(view_size=32)(image, return_tensors="pt")["pixel_values"]
    lanczos = RoadworkImageProcessor(view_size=32, resample="lanczos")(image, return_tensors="pt")["pixel_values"]
    assert (bicubic - lanczos).abs().mean() < 0.05


# ----------------------------------------------------------------------------------------------- save / load


def test_save_pretrained_and_auto_image_processor_from_a_fresh_process(tmp_path, fresh_python):
    processor = RoadworkImageProcessor(view_size=48, tile_overlap=0.3, resample=PIL.Image.Resampling.LANCZOS)
    save_dir = tmp_path / "checkpoint"
    processor.save_pretrained(save_dir)

    copied = save_dir / "image_processing_roadwork.py"
    assert copied.is_file(), "save_pretrained must copy the processor's code (custom_object_save via _auto_class)"
    assert copied.read_text() == Path(sys.modules[RoadworkImageProcessor.__module__].__file__).read_text()
    config = json.loads((save_dir / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoImageProcessor": "image_processing_roadwork.RoadworkImageProcessor"}
    assert config["image_processor_type"] == "RoadworkImageProcessor"
    assert config["view_size"] == 48 and config["resample"] == int(PIL.Image.Resampling.LANCZOS)

    reloaded = RoadworkImageProcessor.from_pretrained(save_dir)
    assert reloaded.to_dict() == processor.to_dict()
    assert RoadworkImageProcessor.from_pretrained(save_dir, view_size=32).view_size == 32  # valid_kwargs override

    image_path = tmp_path / "image.png"
    PIL.Image.fromarray(textured(200, 150)).save(image_path)
    np.save(tmp_path / "expected.npy", processor(str(image_path), return_tensors="np")["pixel_values"])

    # A clean interpreter in another directory, repo not importable, offline (tests/conftest.py).
    # The project is installed (editable) in the venv, so its packages are blocked rather than merely absent.
    result = fresh_python(
        BLOCK_PROJECT_IMPORTS
        + textwrap.dedent(
            f"""
        import numpy as np
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(save_dir)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "RoadworkImageProcessor", type(processor)
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        assert processor.view_size == 48 and processor.tile_overlap == 0.3
        pixel_values = processor({str(image_path)!r}, return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(pixel_values, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
        print("ok", pixel_values.shape)
        """
        ),
        timeout=120,
    )
    assert "ok (1, 12, 3, 48, 48)" in result.stdout
