"""Metadata parsing and vocabulary encoding: raw roadwork rows -> the model's metadata inputs.

The `natix-network-org/roadwork` rows carry metadata as loosely formatted strings:

- ``gps``: ``"[39.77160604, -86.18823935]"`` (latitude, longitude in degrees), sometimes malformed.
- ``scene_level_tags.weather`` / ``.travel_alteration``: Python list reprs such as ``"['Cloudy', 'Rainy']"``.
- ``scene_level_tags.daytime`` / ``.scene_environment``: plain strings such as ``"Light"``, ``"Urban"``.
- ``scene_description``: free text, empty, or the literal ``"No Description"``.

This module turns them into the metadata arguments of `RoadworkForImageClassification.forward`: ``gps`` (2,)
float with NaN for missing, ``weather_ids`` / ``daytime_ids`` / ``scene_ids`` (0 = NULL / unknown,
``i + 1`` = ``vocab[i]``), ``weather_labels`` (``weather_ids - 1`` or -100) and a cleaned description. Nothing here
raises on bad input: malformed values become "missing" and are counted in a [`RoadworkParseReport`], which logs a
one-line summary once instead of one line per row.

It lives on the data side, not in `modeling_roadwork/`: prediction from a Hub checkpoint never parses metadata
(the image processor takes images only and serving sends none), so a checkpoint does not need it.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


logger = logging.getLogger(__name__)

# Column names of the real schema (dots are part of the names).
GPS_COLUMN = "gps"
WEATHER_COLUMN = "scene_level_tags.weather"
DAYTIME_COLUMN = "scene_level_tags.daytime"
SCENE_COLUMN = "scene_level_tags.scene_environment"
DESCRIPTION_COLUMN = "scene_description"

NULL_ID = 0
IGNORE_INDEX = -100

# Lower-cased strings that mean "no value" in a categorical or tag field.
NULL_STRINGS = frozenset({"", "null", "none", "nan", "unknown", "n/a", "na", "[]", "()", "{}", "-", "?"})
# Lower-cased descriptions that mean "no description".
NULL_DESCRIPTIONS = frozenset({"", "no description", "null", "none", "nan", "n/a", "na", "no description."})

# A literal longer than this is not a tag list; do not hand it to ast.literal_eval.
_MAX_LITERAL_CHARS = 4096
_WHITESPACE = re.compile(r"\s+")
_GPS_SPLIT = re.compile(r"[,;\s]+")


class RoadworkParseReport:
    """Counts parse problems over many rows and logs a one-line summary once.

    Counted keys (only the ones that occur are reported): ``gps_missing``, ``gps_malformed``,
    ``gps_out_of_range``, ``gps_zero``, ``tags_malformed``, ``weather_unknown``, ``daytime_unknown``,
    ``scene_unknown``, ``rows``.

    Example:

    ```python
    >>> report = RoadworkParseReport()
    >>> parse_gps("garbage", report=report) is None
    True
    >>> report.counts["gps_malformed"]
    1
    ```
    """

    def __init__(self, name: str = "roadwork metadata"):
        self.name = name
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # first offending raw value per key, for the log line
        self._logged = False

    def add(self, key: str, value: Any = None) -> None:
        self.counts[key] += 1
        if value is not None and key not in self.examples:
            self.examples[key] = repr(value)[:80]

    def summary(self) -> str:
        """One line, e.g. ``roadwork metadata: 300 rows; gps_malformed=6 (e.g. 'nan, x'); weather_unknown=2``."""
        rows = self.counts.get("rows", 0)
        parts = []
        for key in sorted(k for k in self.counts if k != "rows"):
            example = f" (e.g. {self.examples[key]})" if key in self.examples else ""
            parts.append(f"{key}={self.counts[key]}{example}")
        return f"{self.name}: {rows} rows; " + ("; ".join(parts) if parts else "no problems")

    def log_summary(self, level: int = logging.INFO) -> bool:
        """Logs [`~RoadworkParseReport.summary`] once per report; returns whether it did."""
        if self._logged:
            return False
        self._logged = True
        logger.log(level, self.summary())
        return True

    def __repr__(self) -> str:
        return f"RoadworkParseReport({dict(self.counts)})"


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _is_missing_scalar(value: Any) -> bool:
    if value is None or _is_nan(value):
        return True
    if isinstance(value, np.generic) and value.dtype.kind == "f" and np.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without importing pandas


def _to_float(value: Any) -> float | None:
    """Float of a number or numeric string; None if it is not one (bools are not numbers here)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _gps_pair(value: Any) -> tuple[float, float] | str:
    """(lat, lon) from a raw value, or a reason string: "missing" or "malformed"."""
    if _is_missing_scalar(value):
        return "missing"
    if isinstance(value, Mapping):
        lowered = {str(k).strip().lower(): v for k, v in value.items()}
        lat = next((lowered[k] for k in ("lat", "latitude") if k in lowered), None)
        lon = next((lowered[k] for k in ("lon", "lng", "long", "longitude") if k in lowered), None)
        if lat is None and lon is None:
            return "malformed"
        items: Sequence[Any] = (lat, lon)
    elif isinstance(value, (bytes, bytearray)):
        return _gps_pair(value.decode("utf-8", errors="replace"))
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in NULL_STRINGS:
            return "missing"
        # Strip one level of brackets: "[lat, lon]", "(lat, lon)", "{lat, lon}".
        if len(text) >= 2 and text[0] in "[({" and text[-1] in "])}":
            text = text[1:-1].strip()
        parts = [p for p in _GPS_SPLIT.split(text) if p]
        if len(parts) != 2:
            return "malformed"
        items = parts
    elif isinstance(value, np.ndarray):
        if value.size != 2:
            return "malformed"
        items = value.reshape(-1).tolist()
    elif isinstance(value, Sequence):
        if len(value) != 2:
            return "malformed"
        items = value
    else:
        return "malformed"

    if all(_is_missing_scalar(v) for v in items):
        return "missing"
    lat, lon = (_to_float(v) for v in items)
    if lat is None or lon is None:
        return "malformed"
    if math.isnan(lat) and math.isnan(lon):
        return "missing"
    if math.isnan(lat) or math.isnan(lon):
        return "malformed"
    return lat, lon


def parse_gps(value: Any, report: RoadworkParseReport | None = None) -> tuple[float, float] | None:
    """Parses a GPS value into ``(lat, lon)`` degrees, or `None` when it is missing or unusable.

    Accepted forms: ``"[39.77, -86.18]"``, ``"39.77,-86.18"``, ``"(39.77, -86.18)"``, ``"39.77 -86.18"``,
    2-element lists / tuples / numpy arrays, and mappings with ``lat``/``latitude`` and
    ``lon``/``lng``/``longitude`` keys. The order is always (latitude, longitude), as in the dataset; the
    parser does not guess a swapped order.

    Returns `None` for: `None`, NaN, empty / ``"null"``-like strings (counted as ``gps_missing``); anything
    that is not two numbers (``gps_malformed``); ``|lat| > 90`` or ``|lon| > 180`` or non-finite values
    (``gps_out_of_range``); and exactly ``(0, 0)`` (``gps_zero``). ``(0, 0)`` is "Null Island", the value GPS
    loggers write when they have no fix; the dataset covers US cities, so it is treated as missing rather
    than as a point in the Gulf of Guinea.

    Args:
        value (`Any`): the raw ``gps`` cell.
        report (`RoadworkParseReport`, *optional*): where to count problems.

    Returns:
        `tuple[float, float] | None`: ``(latitude, longitude)``.
    """
    pair = _gps_pair(value)
    if isinstance(pair, str):
        if report is not None:
            report.add(f"gps_{pair}", None if pair == "missing" else value)
        return None
    lat, lon = pair
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90.0 or abs(lon) > 180.0:
        if report is not None:
            report.add("gps_out_of_range", value)
        return None
    if lat == 0.0 and lon == 0.0:
        if report is not None:
            report.add("gps_zero", value)
        return None
    return lat, lon


def _normalize_token(value: Any) -> str | None:
    """Lower-cased, stripped, whitespace-collapsed string; None for null-like values."""
    if _is_missing_scalar(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    text = _WHITESPACE.sub(" ", str(value)).strip().strip("'\"").strip().lower()
    return None if text in NULL_STRINGS else text


def parse_tag_list(value: Any, report: RoadworkParseReport | None = None) -> list[str]:
    """Parses a tag field into a list of normalised tags (lower-case, stripped, de-duplicated, in order).

    Accepts Python list reprs (``"['Cloudy', 'Rainy']"``, parsed with `ast.literal_eval`, never `eval`),
    a bare tag (``"Sunny"``), a comma-separated string (``"Cloudy, Rainy"``), lists / tuples / numpy arrays,
    `None`, NaN and empty strings (which give ``[]``). A bracketed string that is not a valid literal is
    split on commas and counted as ``tags_malformed``. Never raises.

    Args:
        value (`Any`): the raw cell, e.g. of ``scene_level_tags.weather``.
        report (`RoadworkParseReport`, *optional*): where to count problems.

    Returns:
        `list[str]`
    """
    if _is_missing_scalar(value):
        return []
    items: Iterable[Any]
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in NULL_STRINGS:
            return []
        if text[0] in "[(" or text[-1] in "])":
            parsed: Any = None
            if len(text) <= _MAX_LITERAL_CHARS:
                try:
                    parsed = ast.literal_eval(text)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    parsed = None
            if isinstance(parsed, (list, tuple, set)):
                items = parsed
            elif isinstance(parsed, str):
                items = [parsed]
            else:
                if report is not None:
                    report.add("tags_malformed", value)
                items = text.strip("[]()").split(",")
        else:
            items = text.split(",")
    elif isinstance(value, np.ndarray):
        items = value.reshape(-1).tolist()
    elif isinstance(value, (list, tuple, set)):
        items = value
    else:
        items = [value]

    tags: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)):  # nested lists are flattened one level
            candidates = [_normalize_token(x) for x in item]
        else:
            candidates = [_normalize_token(item)]
        for tag in candidates:
            if tag is not None and tag not in tags:
                tags.append(tag)
    return tags


def normalize_category(value: Any) -> str | None:
    """Normalises a single categorical value (daytime, scene environment).

    ``"  Light "`` -> ``"light"``; `None`, NaN, ``""``, ``"null"``, ``"none"``, ``"unknown"``, ``"n/a"`` -> `None`.
    A one-element list or list repr (``"['Urban']"``) gives its element; a longer one gives its first element.
    """
    if _is_missing_scalar(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, str) and value.strip()[:1] in ("[", "(")):
        tags = parse_tag_list(value)
        return tags[0] if tags else None
    return _normalize_token(value)


def clean_description(value: Any) -> str | None:
    """Cleans a ``scene_description``: stripped text with collapsed whitespace, or `None`.

    `None`, NaN, whitespace, ``""``, ``"null"``, ``"none"`` and the dataset's literal ``"No Description"``
    (any case) give `None`. The case of a real description is kept: it is what the text encoder sees.
    """
    if _is_missing_scalar(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    text = _WHITESPACE.sub(" ", str(value)).strip()
    return None if text.lower() in NULL_DESCRIPTIONS else text


def build_vocab(values: Iterable[Any], min_count: int = 1) -> list[str]:
    """Builds a vocabulary of normalised values, most frequent first, ties broken by name.

    Each item of `values` is a single value (normalised with [`normalize_category`]), a list of tags or a
    list repr such as ``"['Cloudy', 'Rainy']"`` (every tag counts). Null-like values are skipped; they map to id
    0 anyway. The result is deterministic for a given multiset of values, whatever their order.

    Args:
        values (`Iterable`): raw values, e.g. a column.
        min_count (`int`, *optional*, defaults to 1): drop values seen fewer times (they encode to 0).

    Returns:
        `list[str]`: ``vocab``; value ``vocab[i]`` encodes to ``i + 1``.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts: Counter[str] = Counter()
    for value in values:
        if isinstance(value, (list, tuple, set, np.ndarray)):
            tokens = [_normalize_token(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
        elif isinstance(value, str) and value.strip()[:1] in ("[", "("):
            tokens = parse_tag_list(value)  # a list repr such as "['Cloudy', 'Rainy']": every tag counts
        else:
            tokens = [normalize_category(value)]
        counts.update(t for t in tokens if t is not None)
    kept = [(token, n) for token, n in counts.items() if n >= min_count]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return [token for token, _ in kept]


def encode(value: Any, vocab: Sequence[str] | Mapping[str, int]) -> int:
    """Id of a value: ``i + 1`` for ``vocab[i]``, 0 for NULL or a value not in the vocabulary.

    `vocab` may also be the mapping returned by [`vocab_index`] (faster for many lookups).
    """
    token = normalize_category(value)
    if token is None:
        return NULL_ID
    if isinstance(vocab, Mapping):
        return vocab.get(token, NULL_ID)
    try:
        return list(vocab).index(token) + 1
    except ValueError:
        return NULL_ID


def vocab_index(vocab: Sequence[str]) -> dict[str, int]:
    """``{token: id}`` with ids starting at 1 (0 is NULL)."""
    return {token: i + 1 for i, token in enumerate(vocab)}


def _get(row: Mapping[str, Any], column: str) -> Any:
    """Reads a dotted column, either flat (``row["scene_level_tags.weather"]``) or nested (a struct)."""
    if column in row:
        return row[column]
    head, _, tail = column.partition(".")
    nested = row.get(head) if tail else None
    if isinstance(nested, Mapping):
        return nested.get(tail)
    return None


class RoadworkMetadataParser:
    """Turns a raw dataset row into the model's metadata inputs.

    The vocabularies are the config fields ``weather_vocab``, ``daytime_vocab`` and ``scene_vocab``
    (normalised strings, id 0 = NULL). The weather field is a tag list; a row gets the id of its first
    tag that is in the vocabulary (0 if none), because the model has one weather embedding per row.

    Args:
        weather_vocab (`Sequence[str]`): weather vocabulary.
        daytime_vocab (`Sequence[str]`): daytime vocabulary.
        scene_vocab (`Sequence[str]`): scene-environment vocabulary.
        report (`RoadworkParseReport`, *optional*): a report to count problems in; one is created if absent.

    Example:

    ```python
    >>> parser = RoadworkMetadataParser(["sunny", "cloudy"], ["light", "dark"], ["urban"])
    >>> out = parser({"gps": "[39.77, -86.18]", "scene_level_tags.weather": "['Cloudy']",
    ...               "scene_level_tags.daytime": "Dark", "scene_description": "No Description"})
    >>> out["weather_ids"], out["weather_labels"], out["daytime_ids"], out["scene_ids"], out["description"]
    (2, 1, 2, 0, None)
    ```
    """

    def __init__(
        self,
        weather_vocab: Sequence[str] = (),
        daytime_vocab: Sequence[str] = (),
        scene_vocab: Sequence[str] = (),
        report: RoadworkParseReport | None = None,
    ):
        self.weather_vocab = list(weather_vocab)
        self.daytime_vocab = list(daytime_vocab)
        self.scene_vocab = list(scene_vocab)
        self._weather_index = vocab_index(self.weather_vocab)
        self._daytime_index = vocab_index(self.daytime_vocab)
        self._scene_index = vocab_index(self.scene_vocab)
        self.report = report if report is not None else RoadworkParseReport()

    @classmethod
    def from_vocabularies(cls, vocabularies: Any, report: RoadworkParseReport | None = None) -> RoadworkMetadataParser:
        """From a config (attributes) or a dict with ``weather_vocab``, ``daytime_vocab``, ``scene_vocab``."""
        if isinstance(vocabularies, RoadworkMetadataParser):
            return vocabularies
        if isinstance(vocabularies, Mapping):
            get = vocabularies.get
        else:

            def get(name, default=None):
                return getattr(vocabularies, name, default)

        return cls(
            get("weather_vocab", None) or (),
            get("daytime_vocab", None) or (),
            get("scene_vocab", None) or (),
            report=report,
        )

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Encodes one row.

        Returns:
            `dict`: ``gps`` (`np.ndarray` (2,) float32, NaN if missing), ``weather_ids``, ``daytime_ids``,
            ``scene_ids``, ``weather_labels`` (`int`), ``description`` (`str | None`).
        """
        report = self.report
        report.add("rows")
        latlon = parse_gps(_get(row, GPS_COLUMN), report=report)
        gps = np.array(latlon if latlon is not None else (np.nan, np.nan), dtype=np.float32)

        weather_id = NULL_ID
        weather_tags = parse_tag_list(_get(row, WEATHER_COLUMN), report=report)
        for tag in weather_tags:
            weather_id = self._weather_index.get(tag, NULL_ID)
            if weather_id != NULL_ID:
                break
        if weather_tags and weather_id == NULL_ID:
            report.add("weather_unknown", weather_tags)

        daytime_id = self._encode_category(_get(row, DAYTIME_COLUMN), self._daytime_index, "daytime_unknown")
        scene_id = self._encode_category(_get(row, SCENE_COLUMN), self._scene_index, "scene_unknown")
        return {
            "gps": gps,
            "weather_ids": weather_id,
            "daytime_ids": daytime_id,
            "scene_ids": scene_id,
            "weather_labels": weather_id - 1 if weather_id != NULL_ID else IGNORE_INDEX,
            "description": clean_description(_get(row, DESCRIPTION_COLUMN)),
        }

    def _encode_category(self, value: Any, index: Mapping[str, int], unknown_key: str) -> int:
        token = normalize_category(value)
        if token is None:
            return NULL_ID
        token_id = index.get(token, NULL_ID)
        if token_id == NULL_ID:
            self.report.add(unknown_key, token)
        return token_id


def encode_metadata(
    row: Mapping[str, Any], vocabularies: Any, report: RoadworkParseReport | None = None
) -> dict[str, Any]:
    """Functional form of [`RoadworkMetadataParser`].

    Args:
        row (`Mapping`): a raw dataset row (flat dotted column names or nested structs).
        vocabularies (`Any`): a config with ``weather_vocab`` / ``daytime_vocab`` / ``scene_vocab``, a dict
            with those keys, or a [`RoadworkMetadataParser`] (then its own report is used).
        report (`RoadworkParseReport`, *optional*): where to count problems.
    """
    return RoadworkMetadataParser.from_vocabularies(vocabularies, report=report)(row)


def collate_metadata(encoded: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks encoded rows into the model's metadata tensors.

    Returns:
        `dict`: ``gps`` (B, 2) float32, ``weather_ids`` / ``daytime_ids`` / ``scene_ids`` / ``weather_labels``
        (B,) int64.
    """
    gps = np.zeros((len(encoded), 2), dtype=np.float32)
    for i, e in enumerate(encoded):
        gps[i] = np.asarray(e["gps"], dtype=np.float32).reshape(2)
    out = {"gps": torch.from_numpy(gps)}
    for key in ("weather_ids", "daytime_ids", "scene_ids", "weather_labels"):
        out[key] = torch.tensor([int(e[key]) for e in encoded], dtype=torch.long)
    return out


# The metadata fields of an encoded row that serving never sends, each dropped as a whole (weather_labels is a
# training target of the vision side, not an input, and is kept).
METADATA_FIELDS = ("gps", "weather_ids", "daytime_ids", "scene_ids", "description")


def drop_metadata_fields(encoded: dict[str, Any], fields: Iterable[str] = METADATA_FIELDS) -> dict[str, Any]:
    """`encoded` (a [`RoadworkMetadataParser`] row) with `fields` set to missing: NaN GPS, NULL ids, no description."""
    for name in fields:
        if name == "gps":
            encoded["gps"] = np.full(2, np.nan, dtype=np.float32)
        elif name == "description":
            encoded["description"] = None
        elif name in ("weather_ids", "daytime_ids", "scene_ids"):
            encoded[name] = NULL_ID
        else:
            raise ValueError(f"{name!r} is not a metadata field; use some of {METADATA_FIELDS}")
    return encoded


def null_metadata(batch_size: int) -> dict[str, torch.Tensor]:
    """All-missing metadata for `batch_size` rows, as at serving time: NaN GPS, NULL ids, -100 weather labels."""
    return {
        "gps": torch.full((batch_size, 2), float("nan"), dtype=torch.float32),
        "weather_ids": torch.zeros(batch_size, dtype=torch.long),
        "daytime_ids": torch.zeros(batch_size, dtype=torch.long),
        "scene_ids": torch.zeros(batch_size, dtype=torch.long),
        "weather_labels": torch.full((batch_size,), IGNORE_INDEX, dtype=torch.long),
    }


__all__ = [
    "DAYTIME_COLUMN",
    "DESCRIPTION_COLUMN",
    "GPS_COLUMN",
    "IGNORE_INDEX",
    "METADATA_FIELDS",
    "NULL_ID",
    "SCENE_COLUMN",
    "WEATHER_COLUMN",
    "RoadworkMetadataParser",
    "RoadworkParseReport",
    "build_vocab",
    "clean_description",
    "collate_metadata",
    "drop_metadata_fields",
    "encode",
    "encode_metadata",
    "normalize_category",
    "null_metadata",
    "parse_gps",
    "parse_tag_list",
    "vocab_index",
]
