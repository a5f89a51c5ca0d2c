"""Metadata parsing and vocabulary encoding (data_collator/metadata.py)."""

from __future__ import annotations

import ast
import logging
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from data_collator.metadata import (
    IGNORE_INDEX,
    RoadworkMetadataParser,
    RoadworkParseReport,
    build_vocab,
    clean_description,
    collate_metadata,
    encode,
    encode_metadata,
    normalize_category,
    null_metadata,
    parse_gps,
    parse_tag_list,
    vocab_index,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("[39.77160604, -86.18823935]", (39.77160604, -86.18823935)),
        ("39.77,-86.18", (39.77, -86.18)),
        ("(39.77, -86.18)", (39.77, -86.18)),
        ("  39.77   -86.18 ", (39.77, -86.18)),
        ([39.77, -86.18], (39.77, -86.18)),
        ((39.77, -86.18), (39.77, -86.18)),
        (np.array([39.77, -86.18]), (39.77, -86.18)),
        (np.array([[39.77], [-86.18]], dtype=np.float32), (pytest.approx(39.77), pytest.approx(-86.18))),
        (["39.77", "-86.18"], (39.77, -86.18)),
        ({"lat": 39.77, "lon": -86.18}, (39.77, -86.18)),
        ({"Latitude": 39.77, "lng": -86.18}, (39.77, -86.18)),
        ({"latitude": "39.77", "longitude": "-86.18"}, (39.77, -86.18)),
        (b"[39.77, -86.18]", (39.77, -86.18)),
        ("[-90, 180]", (-90.0, 180.0)),  # the edges are valid
    ],
)
def test_parse_gps_valid(value, expected):
    assert parse_gps(value) == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "gps_missing"),
        (float("nan"), "gps_missing"),
        (np.float32("nan"), "gps_missing"),
        (pd.NA, "gps_missing"),
        ("", "gps_missing"),
        ("   ", "gps_missing"),
        ("null", "gps_missing"),
        ("None", "gps_missing"),
        ("[nan, nan]", "gps_missing"),
        ([None, None], "gps_missing"),
        ("[0.0, 0.0]", "gps_zero"),
        ((0, 0), "gps_zero"),
        ("[90.5, -86.18]", "gps_out_of_range"),
        ("[39.77, -180.01]", "gps_out_of_range"),
        ("[inf, 3]", "gps_out_of_range"),
        ("garbage", "gps_malformed"),
        ("[39.7, ]", "gps_malformed"),
        ("[39.7, -86.1, 200]", "gps_malformed"),
        ("39.77N, 86.18W", "gps_malformed"),  # hemisphere letters: refuse rather than guess the sign
        ("lat=39.77 lon=-86.18", "gps_malformed"),
        ("[nan, -86.18]", "gps_malformed"),
        ([39.7], "gps_malformed"),
        ({"lat": 39.7}, "gps_malformed"),
        ({"x": 1, "y": 2}, "gps_malformed"),
        (True, "gps_malformed"),
        (12.5, "gps_malformed"),
        (object(), "gps_malformed"),
        ([True, False], "gps_malformed"),
    ],
)
def test_parse_gps_rejects_and_counts(value, reason):
    report = RoadworkParseReport()
    assert parse_gps(value, report=report) is None
    assert dict(report.counts) == {reason: 1}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("['Sunny']", ["sunny"]),
        ("['Cloudy', 'Rainy']", ["cloudy", "rainy"]),
        ('["Cloudy", "Rainy"]', ["cloudy", "rainy"]),
        ("('Cloudy',)", ["cloudy"]),
        ("Sunny", ["sunny"]),
        ("  Partly   Cloudy ", ["partly cloudy"]),
        ("Cloudy, Rainy", ["cloudy", "rainy"]),
        (["Cloudy", " RAINY ", "cloudy"], ["cloudy", "rainy"]),  # de-duplicated, order kept
        (("Foggy",), ["foggy"]),
        (np.array(["Snowy", "Windy"]), ["snowy", "windy"]),
        (None, []),
        (float("nan"), []),
        ("", []),
        ("[]", []),
        ("null", []),
        ("['null', 'Sunny', '']", ["sunny"]),
        ([["Cloudy", "Rainy"]], ["cloudy", "rainy"]),
    ],
)
def test_parse_tag_list(value, expected):
    assert parse_tag_list(value) == expected


@pytest.mark.parametrize("value", ["['Sunny', 'Cloudy'", "[Sunny, Cloudy]", "['Sunny', Cloudy']"])
def test_parse_tag_list_malformed_literal_is_split_and_counted(value):
    report = RoadworkParseReport()
    tags = parse_tag_list(value, report=report)
    assert tags and all(t == t.strip().lower() and "'" not in t for t in tags)
    assert report.counts["tags_malformed"] == 1


def test_parse_tag_list_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"[__import__('pathlib').Path({str(marker)!r}).touch()]"
    parse_tag_list(payload)
    parse_tag_list("[" * 10_000 + "]" * 10_000)  # deep nesting: no RecursionError escapes
    parse_tag_list("[" + "'x', " * 5000 + "]")  # longer than the literal limit
    assert not marker.exists()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Light", "light"),
        ("  URBAN ", "urban"),
        ("Urban   Area", "urban area"),
        ("['Urban']", "urban"),
        (["Highway"], "highway"),
        ("null", None),
        ("None", None),
        ("", None),
        ("unknown", None),
        ("N/A", None),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        ("[]", None),
    ],
)
def test_normalize_category(value, expected):
    assert normalize_category(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Orange cones close the right lane.", "Orange cones close the right lane."),
        ("  Cones\n and   a sign ", "Cones and a sign"),
        ("No Description", None),
        ("no description", None),
        ("", None),
        ("   ", None),
        ("null", None),
        (None, None),
        (float("nan"), None),
    ],
)
def test_clean_description(value, expected):
    assert clean_description(value) == expected


def test_build_vocab_frequency_then_name_and_deterministic():
    values = ["Urban", "highway", "urban", None, "", "Rural", "HIGHWAY", "urban", "null", "Arterial"]
    vocab = build_vocab(values)
    assert vocab == ["urban", "highway", "arterial", "rural"]  # 3, 2, then ties by name
    shuffled = values[:]
    random.Random(0).shuffle(shuffled)
    assert build_vocab(shuffled) == vocab
    assert build_vocab(values, min_count=2) == ["urban", "highway"]
    with pytest.raises(ValueError, match="min_count"):
        build_vocab(values, min_count=0)


def test_build_vocab_counts_every_tag_of_a_list():
    vocab = build_vocab(["['Cloudy', 'Rainy']", "['Rainy']", ["sunny", "Rainy"], None, "[]"])
    assert vocab == ["rainy", "cloudy", "sunny"]


def test_encode_known_unknown_and_null():
    vocab = ["sunny", "rainy"]
    assert encode("Sunny", vocab) == 1
    assert encode(" RAINY ", vocab) == 2
    assert encode("snowy", vocab) == 0
    assert encode(None, vocab) == 0
    assert encode("null", vocab) == 0
    assert encode("rainy", vocab_index(vocab)) == 2
    assert encode("hail", vocab_index(vocab)) == 0


def _row(**overrides):
    row = {
        "gps": "[39.77160604, -86.18823935]",
        "scene_level_tags.weather": "['Snowy', 'Cloudy']",
        "scene_level_tags.daytime": "Dark",
        "scene_level_tags.scene_environment": "Highway",
        "scene_description": "  Cones narrow the road. ",
    }
    row.update(overrides)
    return row


def test_parser_encodes_a_row():
    report = RoadworkParseReport()
    parser = RoadworkMetadataParser(["sunny", "cloudy"], ["light", "dark"], ["urban", "highway"], report=report)
    out = parser(_row())
    assert out["gps"].dtype == np.float32 and out["gps"].shape == (2,)
    np.testing.assert_allclose(out["gps"], [39.77160604, -86.18823935], rtol=1e-6)
    # "snowy" is not in the vocabulary: the first known tag wins.
    assert (out["weather_ids"], out["weather_labels"]) == (2, 1)
    assert (out["daytime_ids"], out["scene_ids"]) == (2, 2)
    assert out["description"] == "Cones narrow the road."
    assert report.counts["rows"] == 1 and not report.counts["weather_unknown"]


def test_parser_missing_and_unknown_values():
    report = RoadworkParseReport()
    parser = RoadworkMetadataParser(["sunny"], ["light"], ["urban"], report=report)
    out = parser(
        _row(
            gps="nonsense",
            **{
                "scene_level_tags.weather": "['Hail']",
                "scene_level_tags.daytime": None,
                "scene_level_tags.scene_environment": "Desert",
                "scene_description": "No Description",
            },
        )
    )
    assert np.isnan(out["gps"]).all()
    assert (out["weather_ids"], out["weather_labels"]) == (0, IGNORE_INDEX)
    assert (out["daytime_ids"], out["scene_ids"], out["description"]) == (0, 0, None)
    assert report.counts["gps_malformed"] == 1
    assert report.counts["weather_unknown"] == 1
    assert report.counts["scene_unknown"] == 1
    assert "daytime_unknown" not in report.counts  # a NULL is not an unknown value


def test_parser_reads_nested_structs_and_missing_columns():
    parser = RoadworkMetadataParser(["rainy"], ["light"], ["urban"])
    out = parser({"gps": [40.0, -100.0], "scene_level_tags": {"weather": ["Rainy"], "daytime": "Light"}})
    assert (out["weather_ids"], out["daytime_ids"], out["scene_ids"]) == (1, 1, 0)
    empty = parser({})
    assert np.isnan(empty["gps"]).all() and empty["weather_labels"] == IGNORE_INDEX and empty["description"] is None


def test_encode_metadata_from_config_like_objects():
    config = SimpleNamespace(weather_vocab=["sunny"], daytime_vocab=["dark"], scene_vocab=["highway"])
    row = _row(**{"scene_level_tags.weather": "Sunny"})
    expected = {"weather_ids": 1, "daytime_ids": 1, "scene_ids": 1}
    for vocabularies in (config, vars(config), RoadworkMetadataParser.from_vocabularies(config)):
        out = encode_metadata(row, vocabularies)
        assert {k: out[k] for k in expected} == expected


def test_report_logs_one_line_once(caplog):
    report = RoadworkParseReport()
    for value in ["x", "y", "[0, 0]", None]:
        parse_gps(value, report=report)
    with caplog.at_level(logging.INFO, logger="data_collator.metadata"):
        assert report.log_summary() is True
        assert report.log_summary() is False
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert (
        "\n" not in line and "gps_malformed=2 (e.g. 'x')" in line and "gps_zero=1" in line and "gps_missing=1" in line
    )


def test_collate_metadata_and_null_metadata():
    parser = RoadworkMetadataParser(["sunny"], ["light"], ["urban"])
    batch = collate_metadata([parser(_row(**{"scene_level_tags.weather": "Sunny"})), parser({})])
    assert batch["gps"].shape == (2, 2) and batch["gps"].dtype == torch.float32
    assert torch.isnan(batch["gps"][1]).all() and not torch.isnan(batch["gps"][0]).any()
    for key in ("weather_ids", "daytime_ids", "scene_ids", "weather_labels"):
        assert batch[key].shape == (2,) and batch[key].dtype == torch.long
    assert batch["weather_labels"].tolist() == [0, IGNORE_INDEX]
    null = null_metadata(3)
    assert torch.isnan(null["gps"]).all() and null["weather_ids"].eq(0).all() and null["weather_labels"].eq(-100).all()


def test_parsers_never_raise_on_garbage():
    rng = random.Random(0)
    garbage = [
        b"\xff\xfe",
        bytearray(b"[1,2]"),
        object(),
        {1: 2},
        [[[]]],
        set(),
        -1,
        10**400,
        "[" * 50,
        "'",
        '"]',
        "[1e999, -1e999]",
        np.array([]),
        np.zeros((3, 3)),
        float("inf"),
        complex(1, 2),
        "\x00",
        "[None]",
    ]
    garbage += ["".join(rng.choice("[](),'\" 0123456789.-eNa") for _ in range(rng.randint(0, 30))) for _ in range(300)]
    report = RoadworkParseReport()
    for value in garbage:
        parse_gps(value, report=report)
        assert isinstance(parse_tag_list(value, report=report), list)
        normalize_category(value)
        clean_description(value)
        result = parse_gps(value)
        assert result is None or (abs(result[0]) <= 90 and abs(result[1]) <= 180 and all(map(math.isfinite, result)))


def test_the_model_package_never_imports_the_data_side():
    # Metadata parsing lives in data_collator/ because a checkpoint does not need it; that holds only while no file
    # that ships with a checkpoint (modeling_roadwork/) imports the data side.
    package = Path(__file__).resolve().parents[1] / "modeling_roadwork"
    sources = sorted(package.glob("*.py"))
    assert sources
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "data_collator" for name in names), (source.name, names)
