"""Geometry on the sphere: (latitude, longitude) arrays, great-circle distances, and the city table that names
GPS centres in reports."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np


# Mean earth radius (IUGG). The spherical model is within ~0.5% of the WGS84 geodesic.
EARTH_RADIUS_KM = 6371.0088

# (name, latitude, longitude) of city centres, used only to name the GPS centres in reports.
# Covers the NATIX roadwork cities (e.g. Indianapolis, Pittsburgh, Boston, ...) and the largest US metros.
US_CITIES: tuple[tuple[str, float, float], ...] = (
    ("Albuquerque, NM", 35.0844, -106.6504),
    ("Atlanta, GA", 33.7490, -84.3880),
    ("Austin, TX", 30.2672, -97.7431),
    ("Baltimore, MD", 39.2904, -76.6122),
    ("Boston, MA", 42.3601, -71.0589),
    ("Charlotte, NC", 35.2271, -80.8431),
    ("Chicago, IL", 41.8781, -87.6298),
    ("Cincinnati, OH", 39.1031, -84.5120),
    ("Cleveland, OH", 41.4993, -81.6944),
    ("Columbus, OH", 39.9612, -82.9988),
    ("Dallas, TX", 32.7767, -96.7970),
    ("Denver, CO", 39.7392, -104.9903),
    ("Detroit, MI", 42.3314, -83.0458),
    ("Fort Worth, TX", 32.7555, -97.3308),
    ("Houston, TX", 29.7604, -95.3698),
    ("Indianapolis, IN", 39.7684, -86.1581),
    ("Jacksonville, FL", 30.3322, -81.6557),
    ("Kansas City, MO", 39.0997, -94.5786),
    ("Las Vegas, NV", 36.1699, -115.1398),
    ("Los Angeles, CA", 34.0522, -118.2437),
    ("Louisville, KY", 38.2527, -85.7585),
    ("Memphis, TN", 35.1495, -90.0490),
    ("Miami, FL", 25.7617, -80.1918),
    ("Milwaukee, WI", 43.0389, -87.9065),
    ("Minneapolis, MN", 44.9778, -93.2650),
    ("Nashville, TN", 36.1627, -86.7816),
    ("New Orleans, LA", 29.9511, -90.0715),
    ("New York, NY", 40.7128, -74.0060),
    ("Orlando, FL", 28.5383, -81.3792),
    ("Philadelphia, PA", 39.9526, -75.1652),
    ("Phoenix, AZ", 33.4484, -112.0740),
    ("Pittsburgh, PA", 40.4406, -79.9959),
    ("Portland, OR", 45.5152, -122.6784),
    ("Raleigh, NC", 35.7796, -78.6382),
    ("Sacramento, CA", 38.5816, -121.4944),
    ("Salt Lake City, UT", 40.7608, -111.8910),
    ("San Antonio, TX", 29.4241, -98.4936),
    ("San Diego, CA", 32.7157, -117.1611),
    ("San Francisco, CA", 37.7749, -122.4194),
    ("San Jose, CA", 37.3382, -121.8863),
    ("Seattle, WA", 47.6062, -122.3321),
    ("St. Louis, MO", 38.6270, -90.1994),
    ("Tampa, FL", 27.9506, -82.4572),
    ("Tucson, AZ", 32.2226, -110.9747),
    ("Washington, DC", 38.9072, -77.0369),
)

ArrayLike = Union[np.ndarray, Sequence]


def as_latlon(points: ArrayLike, name: str) -> np.ndarray:
    """`(N, 2)` or `(2,)` array-like -> float64 `(N, 2)`. Rows that are `None` become NaN rows."""
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        # A list that mixes (lat, lon) pairs and None (or empty) rows.
        arr = np.asarray(
            [(np.nan, np.nan) if p is None or len(p) != 2 else p for p in points], dtype=np.float64
        ).reshape(-1, 2)
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None, :]
    if arr.ndim == 1 and arr.shape[0] == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) of (latitude, longitude) in degrees, got {arr.shape}")
    return arr


def valid_gps_mask(gps: ArrayLike) -> np.ndarray:
    """`(N, 2)` -> `(N,)` bool: both values finite and within [-90, 90] x [-180, 180]."""
    gps = as_latlon(gps, "gps")
    with np.errstate(invalid="ignore"):
        return np.isfinite(gps).all(axis=1) & (np.abs(gps[:, 0]) <= 90.0) & (np.abs(gps[:, 1]) <= 180.0)


def clean_gps(gps: ArrayLike, name: str) -> np.ndarray:
    """Copy of `gps` as `(N, 2)` with every invalid row set to NaN; warns about out-of-range rows."""
    gps = as_latlon(gps, name).copy()
    valid = valid_gps_mask(gps)
    out_of_range = ~valid & np.isfinite(gps).all(axis=1)
    if out_of_range.any():
        warnings.warn(
            f"{name}: {int(out_of_range.sum())} row(s) lie outside [-90, 90] x [-180, 180] and are treated as "
            f"missing GPS (first: {gps[out_of_range][0].tolist()}); are the columns (latitude, longitude)?",
            UserWarning,
            stacklevel=3,
        )
    gps[~valid] = np.nan
    return gps


def haversine_km(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """
    Great-circle distances on a sphere of radius `EARTH_RADIUS_KM`.

    `a` (N, 2), `b` (K, 2) of (latitude, longitude) in degrees -> (N, K) km. A `(2,)` input counts as
    one point. NaN rows give NaN distances. Longitude wrap-around needs no special case: the formula
    only uses `sin(dlon / 2) ** 2`, which is the same for +359 and -1 degrees.
    """
    a = np.radians(as_latlon(a, "a"))
    b = np.radians(as_latlon(b, "b"))
    lat1, lon1 = a[:, 0:1], a[:, 1:2]  # (N, 1)
    lat2, lon2 = b[None, :, 0], b[None, :, 1]  # (1, K)
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    # clip: rounding can push h a hair above 1 for antipodal points, and arcsin would return NaN
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def to_unit_vectors(latlon: np.ndarray) -> np.ndarray:
    """(N, 2) degrees -> (N, 3) points on the unit sphere."""
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def to_latlon(xyz: np.ndarray) -> np.ndarray:
    """(K, 3) vectors (any norm > 0) -> (K, 2) degrees; the projection of each vector onto the sphere."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    return np.degrees(np.stack([np.arctan2(z, np.hypot(x, y)), np.arctan2(y, x)], axis=1))


def nearest_city(points: ArrayLike) -> tuple[list[str], np.ndarray]:
    """`(K, 2)` -> (names of the nearest city in `US_CITIES`, `(K,)` km to it). NaN rows get `""`, NaN."""
    points = as_latlon(points, "points")
    cities = np.asarray([(lat, lon) for _, lat, lon in US_CITIES])
    dist = haversine_km(points, cities)  # (K, C)
    names, km = [], np.full(len(points), np.nan)
    for i, row in enumerate(dist):
        if np.isnan(row).all():
            names.append("")
            continue
        j = int(np.nanargmin(row))
        names.append(US_CITIES[j][0])
        km[i] = row[j]
    return names, km


__all__ = [
    "EARTH_RADIUS_KM",
    "US_CITIES",
    "ArrayLike",
    "as_latlon",
    "clean_gps",
    "haversine_km",
    "nearest_city",
    "to_latlon",
    "to_unit_vectors",
    "valid_gps_mask",
]
