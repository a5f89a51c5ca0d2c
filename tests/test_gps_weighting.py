import json
import math
import re
from dataclasses import asdict

import numpy as np
import pytest
from geopy.distance import geodesic

from data_collator.gps_weighting import (
    EARTH_RADIUS_KM,
    RoadworkGPSWeightingConfig,
    fit_gps_centres,
    gps_weights,
    haversine_km,
    make_gps_sampler,
    prepare_gps_weighting,
    validate_gps_weighting,
    weights_for_distances,
)


PITTSBURGH = (40.4406, -79.9959)
SEATTLE = (47.6062, -122.3321)
MIAMI = (25.7617, -80.1918)
BOSTON = (42.3601, -71.0589)
DENVER = (39.7392, -104.9903)
HOUSTON = (29.7604, -95.3698)


def _around(centre, n, spread_deg, rng):
    """n points scattered (normal, `spread_deg` degrees) around `centre`."""
    return np.asarray(centre) + rng.normal(0.0, spread_deg, size=(n, 2))


def _north_of(centre, km):
    """The point `km` due north of `centre` (exact for a sphere: the arc along a meridian)."""
    return (centre[0] + math.degrees(km / EARTH_RADIUS_KM), centre[1])


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "a, b",
    [
        ((40.7128, -74.0060), (34.0522, -118.2437)),  # New York - Los Angeles
        (BOSTON, PITTSBURGH),
        ((39.7684, -86.1581), (39.80, -86.10)),  # ~6 km inside Indianapolis
        (SEATTLE, MIAMI),
        ((-17.7134, 178.0650), (-13.8333, -171.7500)),  # Fiji - Samoa, across the antimeridian
        ((0.0, 179.5), (0.0, -179.5)),  # 1 degree of longitude across the antimeridian
    ],
)
def test_haversine_matches_geodesic(a, b):
    expected = geodesic(a, b).km
    got = haversine_km(np.array([a]), np.array([b]))
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(expected, rel=0.005)


def test_haversine_shapes_and_nan():
    a = np.array([PITTSBURGH, SEATTLE, (np.nan, np.nan)])
    b = np.array([PITTSBURGH, SEATTLE, MIAMI, BOSTON])
    d = haversine_km(a, b)
    assert d.shape == (3, 4)
    assert d[0, 0] == pytest.approx(0.0, abs=1e-9) and d[1, 1] == pytest.approx(0.0, abs=1e-9)
    assert d[0, 1] == pytest.approx(d[1, 0])  # symmetric
    assert np.isnan(d[2]).all() and np.isfinite(d[:2]).all()
    assert haversine_km(PITTSBURGH, SEATTLE).shape == (1, 1)  # a (2,) point counts as one row


# ---------------------------------------------------------------------------------------------- centres


def test_centres_recover_three_cities():
    rng = np.random.default_rng(0)
    cities = [PITTSBURGH, SEATTLE, MIAMI]
    target = np.concatenate([_around(c, 60, 0.1, rng) for c in cities] + [np.full((5, 2), np.nan)])
    centres = fit_gps_centres(target, num_clusters=3, seed=0)
    assert centres.shape == (3, 2)
    dist = haversine_km(np.array(cities), centres)  # (3 cities, 3 centres)
    assert (dist.min(axis=1) < 5.0).all(), dist  # every city has a centre within 5 km
    assert sorted(dist.argmin(axis=1).tolist()) == [0, 1, 2]  # one centre per city


def test_centres_across_antimeridian():
    # A cluster straddling lon = +-180: clustering on raw (lat, lon) would put its centre near lon 0.
    rng = np.random.default_rng(1)
    pts = _around((-17.0, 180.0), 80, 0.2, rng)
    pts[:, 1] = (pts[:, 1] + 180.0) % 360.0 - 180.0
    assert (pts[:, 1] > 0).any() and (pts[:, 1] < 0).any()
    target = np.concatenate([pts, _around(DENVER, 80, 0.2, rng)])
    centres = fit_gps_centres(target, num_clusters=2, seed=0)
    assert haversine_km((-17.0, 180.0), centres).min() < 10.0
    assert haversine_km(DENVER, centres).min() < 10.0


def test_centres_lower_k_with_warning_and_reject_empty():
    target = np.array([PITTSBURGH, PITTSBURGH, SEATTLE, (np.nan, np.nan)])
    with pytest.warns(UserWarning, match="fewer than num_clusters=5"):
        centres = fit_gps_centres(target, num_clusters=5)
    assert centres.shape == (2, 2)
    assert haversine_km(np.array([PITTSBURGH, SEATTLE]), centres).min(axis=1).max() < 1e-6
    with pytest.raises(ValueError, match="no valid"):
        fit_gps_centres(np.full((4, 2), np.nan))


# ---------------------------------------------------------------------------------------------- weights


def test_bracket_edges_map_to_weights():
    cases = {
        0.0: 5.0, 49.999: 5.0, 50.0: 2.5, 50.001: 2.5, 199.999: 2.5, 200.0: 1.0, 200.001: 1.0,
        499.999: 1.0, 500.0: 0.3, 500.001: 0.3, 12000.0: 0.3, math.nan: 0.7,
    }
    got = weights_for_distances(np.array(list(cases)), missing_weight=0.7)
    np.testing.assert_array_equal(got, np.array(list(cases.values())))


def test_gps_weights_geometry_around_edges():
    centre = (40.0, -80.0)
    kms = [1.0, 49.9, 50.1, 199.9, 200.1, 499.9, 500.1, 3000.0]
    train = np.array([_north_of(centre, d) for d in kms] + [(np.nan, np.nan), (np.nan, 5.0)])
    weights, nearest = gps_weights(train, np.array([centre, MIAMI]), missing_weight=0.25)
    np.testing.assert_allclose(nearest[:8], kms, rtol=1e-9)
    np.testing.assert_array_equal(weights, [5.0, 5.0, 2.5, 2.5, 1.0, 1.0, 0.3, 0.3, 0.25, 0.25])
    assert np.isnan(nearest[8:]).all()


def test_gps_weights_custom_brackets_and_out_of_range_rows():
    config = RoadworkGPSWeightingConfig(bracket_edges_km=[100], bracket_weights=[4, 1], missing_weight=0.5)
    centre = (10.0, 10.0)
    train = np.array([_north_of(centre, 99.0), _north_of(centre, 101.0), (-100.0, 40.0)])  # last: lat,lon swapped?
    with pytest.warns(UserWarning, match="outside"):
        weights, nearest = gps_weights(train, [centre], config.brackets, config.missing_weight)
    np.testing.assert_array_equal(weights, [4.0, 1.0, 0.5])
    assert np.isnan(nearest[2])
    with pytest.raises(ValueError, match="inf"):
        gps_weights(train[:2], [centre], brackets=((50, 5.0), (200, 1.0)))


# ---------------------------------------------------------------------------------------------- sampler


def test_sampler_is_seeded():
    weights = np.linspace(0.1, 5.0, 50)
    first = list(make_gps_sampler(weights, num_samples=200, seed=7))
    again = list(make_gps_sampler(weights, num_samples=200, seed=7))  # e.g. another rank
    other = list(make_gps_sampler(weights, num_samples=200, seed=8))
    assert len(first) == 200 and first == again and first != other
    assert len(make_gps_sampler(weights)) == 50  # default: one epoch = dataset length
    sampler = make_gps_sampler(weights, seed=7)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1, "epochs draw different sequences"
    sampler.set_epoch(0)
    assert list(sampler) == epoch0, "a resumed run replays the epoch it stopped in"
    with pytest.raises(ValueError, match="weights"):
        make_gps_sampler(np.zeros(3))


def test_weighting_raises_share_of_near_rows():
    rng = np.random.default_rng(2)
    centres = np.array([PITTSBURGH, SEATTLE])
    train = np.concatenate([_around(PITTSBURGH, 100, 0.1, rng), _around(HOUSTON, 900, 0.5, rng)])
    weights, nearest = gps_weights(train, centres)
    drawn = np.fromiter(make_gps_sampler(weights, num_samples=5000, seed=0), dtype=np.int64) % len(weights)
    uniform_share = (nearest < 50).mean()
    weighted_share = (nearest[drawn] < 50).mean()
    assert uniform_share == pytest.approx(0.1, abs=0.02)
    # expected 500 / (500 + 900 * 0.3) = 0.65
    assert weighted_share == pytest.approx(500 / 770, abs=0.03)


# ---------------------------------------------------------------------------------------------- report


def _dataset(near_fraction, rng, n=1000):
    """Target around Pittsburgh and Seattle; a share of the training rows there, the rest far away."""
    target = np.concatenate([_around(PITTSBURGH, 100, 0.1, rng), _around(SEATTLE, 100, 0.1, rng)])
    n_near = int(n * near_fraction)
    train = np.concatenate(
        [
            _around(PITTSBURGH, n_near // 2, 0.1, rng),
            _around(SEATTLE, n_near - n_near // 2, 0.1, rng),
            _around(HOUSTON, (n - n_near) // 2, 0.3, rng),
            _around(MIAMI, n - n_near - (n - n_near) // 2, 0.3, rng),
            np.full((20, 2), np.nan),  # rows without GPS
        ]
    )
    return train, target


def test_report_passes_on_close_dataset(tmp_path):
    rng = np.random.default_rng(3)
    train, target = _dataset(0.6, rng)
    config = RoadworkGPSWeightingConfig(num_clusters=2, num_validation_samples=4000)
    weights, report = prepare_gps_weighting(train, target, config, output_dir=tmp_path / "gps")
    assert report.passed and report.failures == []
    assert report.fraction_within_50km > report.uniform_fraction_within_50km + 0.2
    assert report.mean_distance_km < 150
    assert report.num_train_missing_gps == 20 and 0 < report.num_sampled_missing_gps < 4000
    assert (weights[-20:] == config.missing_weight).all()
    assert sorted(c.nearest_city for c in report.centres) == ["Pittsburgh, PA", "Seattle, WA"]
    assert all(c.nearest_city_km < 10 for c in report.centres)
    assert sorted(c.num_target_rows for c in report.centres) == [100, 100]
    assert sum(b.num_train_rows for b in report.brackets) == len(train) - 20
    summary = report.summary()
    assert "PASSED" in summary and "Pittsburgh, PA" in summary and "within 50 km" in summary

    for path in (report.report_path, report.histogram_path, report.scatter_path):
        assert path is not None and (tmp_path / "gps").samefile(path.rsplit("/", 1)[0])
    for png in (report.histogram_path, report.scatter_path):
        data = open(png, "rb").read()
        assert data.startswith(b"\x89PNG") and len(data) > 5000

    def no_nan(token):
        raise AssertionError(f"non-JSON constant {token} in gps_report.json")

    saved = json.loads(open(report.report_path).read(), parse_constant=no_nan)
    assert saved["passed"] is True and len(saved["centres"]) == 2
    assert saved["config"]["bracket_weights"] == [5.0, 2.5, 1.0, 0.3]


def test_report_fails_on_far_dataset():
    rng = np.random.default_rng(4)
    train, _ = _dataset(0.0, rng)
    config = RoadworkGPSWeightingConfig(num_validation_samples=2000)
    weights, _ = gps_weights(train, [PITTSBURGH, SEATTLE], config.brackets, config.missing_weight)
    report = validate_gps_weighting(train, weights, np.array([PITTSBURGH, SEATTLE]), config)
    assert not report.passed and len(report.failures) == 3
    assert report.fraction_within_50km == 0.0
    assert any("within 50 km" in f and "min_fraction_within_50km" in f and "0.0%" in f for f in report.failures)
    assert any("mean distance" in f and "max_mean_distance_km" in f for f in report.failures)
    assert all("only 0 training rows" in f for f in report.failures)  # no weight change can help
    assert "FAILED" in report.summary()
    assert report.report_path is None


def test_failure_advice_fixes_the_weighting():
    # 4.5% of rows near the target: the default weights draw ~44% of rows within 50 km, below 50%.
    rng = np.random.default_rng(5)
    train, target = _dataset(0.045, rng, n=2000)
    config = RoadworkGPSWeightingConfig(num_clusters=2, num_validation_samples=4000)
    _, report = prepare_gps_weighting(train, target, config)
    failure = next(f for f in report.failures if "within 50 km" in f)
    assert "bracket_weights[0]" in failure
    suggested = float(re.search(r"bracket_weights\[0\]\) from 5 to ([0-9.]+)", failure).group(1))
    assert suggested > 5.0

    fixed = RoadworkGPSWeightingConfig(
        num_clusters=2, num_validation_samples=4000, bracket_weights=[suggested, 2.5, 1.0, 0.3]
    )
    _, fixed_report = prepare_gps_weighting(train, target, fixed)
    assert fixed_report.fraction_within_50km >= 0.5
    assert not any("within 50 km" in f for f in fixed_report.failures)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"num_clusters": 0}, "num_clusters"),
        ({"bracket_edges_km": [200, 50, 500]}, "bracket_edges_km"),
        ({"bracket_edges_km": [50, 200, math.inf]}, "bracket_edges_km"),
        ({"bracket_edges_km": [-5, 200, 500]}, "bracket_edges_km"),
        ({"bracket_weights": [5.0, 2.5, 1.0]}, "bracket_weights"),
        ({"bracket_weights": [5.0, 0.0, 1.0, 0.3]}, "bracket_weights"),
        ({"missing_weight": -1.0}, "missing_weight"),
        ({"num_validation_samples": 0}, "num_validation_samples"),
        ({"min_fraction_within_50km": 50}, "min_fraction_within_50km"),
        ({"min_fraction_within_100km": -0.1}, "min_fraction_within_100km"),
        ({"max_mean_distance_km": 0}, "max_mean_distance_km"),
    ],
)
def test_config_validation_names_the_field(kwargs, field_name):
    with pytest.raises(ValueError, match=rf"^{field_name} "):
        RoadworkGPSWeightingConfig(**kwargs)


def test_config_brackets_and_round_trip():
    config = RoadworkGPSWeightingConfig(bracket_edges_km=(30, 120), bracket_weights=(8, 2, 1), missing_weight=0)
    assert config.brackets == ((30.0, 8.0), (120.0, 2.0), (math.inf, 1.0))
    assert RoadworkGPSWeightingConfig(**asdict(config)) == config
    assert RoadworkGPSWeightingConfig().brackets == ((50.0, 5.0), (200.0, 2.5), (500.0, 1.0), (math.inf, 0.3))
