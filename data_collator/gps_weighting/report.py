"""The validation report of GPS weighting: draw rows with the weights, check the pass criteria of
[`RoadworkGPSWeightingConfig`], and say what to change when one fails."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import NEAR_KM, REGION_KM, RoadworkGPSWeightingConfig
from .geometry import ArrayLike, clean_gps, nearest_city
from .plots import plot_distance_histogram, plot_gps_scatter
from .sampling import (
    check_centres,
    fit_gps_centres,
    gps_weights,
    make_gps_sampler,
    nearest_centre,
    weights_for_distances,
)


logger = logging.getLogger(__name__)

# Factors tried when suggesting a weight change for a failed criterion.
_ADVICE_FACTORS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0)


@dataclass
class RoadworkGPSCentre:
    """One fitted centre and what lies near it."""

    latitude: float
    longitude: float
    nearest_city: str
    nearest_city_km: float
    num_target_rows: int | None  # target rows whose nearest centre this is (None: target not given)
    num_train_rows: int  # training rows (with GPS) whose nearest centre this is
    num_train_within_50km: int


@dataclass
class RoadworkGPSBracket:
    """One distance bracket: its weight, how many training rows it holds and its share of the draw."""

    label: str
    lower_km: float
    upper_km: float
    weight: float
    num_train_rows: int
    sampled_fraction: float  # share of all validation draws (draws of rows without GPS included)


@dataclass
class RoadworkGPSReport:
    """Result of `validate_gps_weighting`. Distances and fractions are over sampled rows with GPS;
    `uniform_*` are the same statistics over all training rows with GPS, unweighted."""

    passed: bool
    failures: list[str]
    num_train_rows: int
    num_train_missing_gps: int
    missing_weight: float
    num_samples: int
    num_sampled_missing_gps: int
    mean_distance_km: float
    median_distance_km: float
    fraction_within_50km: float
    fraction_within_100km: float
    uniform_mean_distance_km: float
    uniform_median_distance_km: float
    uniform_fraction_within_50km: float
    uniform_fraction_within_100km: float
    centres: list[RoadworkGPSCentre]
    brackets: list[RoadworkGPSBracket]
    config: RoadworkGPSWeightingConfig
    report_path: str | None = None
    histogram_path: str | None = None
    scatter_path: str | None = None

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN and inf become None)."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {key: clean(v) for key, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))

    def summary(self) -> str:
        """Multi-line, human-readable account of the validation."""
        c = self.config

        def pct(x):
            return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"

        def km(x):
            return "n/a" if not math.isfinite(x) else f"{x:.1f}"

        with_gps = self.num_train_rows - self.num_train_missing_gps
        sampled_missing = self.num_sampled_missing_gps / max(self.num_samples, 1)
        lines = [
            f"GPS weighting validation: {'PASSED' if self.passed else 'FAILED'}",
            f"  training rows: {self.num_train_rows} ({with_gps} with GPS, {self.num_train_missing_gps} without, "
            f"weight {self.missing_weight:g})",
            f"  drew {self.num_samples} rows with the weights (seed {c.seed}): "
            f"{self.num_samples - self.num_sampled_missing_gps} with GPS, "
            f"{self.num_sampled_missing_gps} without ({pct(sampled_missing)})",
            f"  {'':24}{'weighted':>10}{'uniform':>10}{'target':>10}",
            f"  {'mean distance (km)':24}{km(self.mean_distance_km):>10}{km(self.uniform_mean_distance_km):>10}"
            f"{'< ' + format(c.max_mean_distance_km, 'g'):>10}",
            f"  {'median distance (km)':24}{km(self.median_distance_km):>10}{km(self.uniform_median_distance_km):>10}",
            f"  {'within 50 km':24}{pct(self.fraction_within_50km):>10}{pct(self.uniform_fraction_within_50km):>10}"
            f"{'>= ' + pct(c.min_fraction_within_50km):>10}",
            f"  {'within 100 km':24}{pct(self.fraction_within_100km):>10}"
            f"{pct(self.uniform_fraction_within_100km):>10}{'>= ' + pct(c.min_fraction_within_100km):>10}",
            "  brackets:",
        ]
        for b in self.brackets:
            lines.append(
                f"    {b.label:>12}  weight {b.weight:<6g} {b.num_train_rows:>7} train rows  "
                f"{pct(b.sampled_fraction):>6} of draws"
            )
        lines.append("  centres (largest target cluster first):")
        for i, ctr in enumerate(self.centres):
            target = "" if ctr.num_target_rows is None else f"{ctr.num_target_rows} target rows, "
            lines.append(
                f"    {i}: ({ctr.latitude:.4f}, {ctr.longitude:.4f}) near {ctr.nearest_city} "
                f"({ctr.nearest_city_km:.0f} km); {target}{ctr.num_train_rows} train rows, "
                f"{ctr.num_train_within_50km} within 50 km"
            )
        if self.failures:
            lines.append("  failures:")
            lines.extend(f"    - {f}" for f in self.failures)
        written = [p for p in (self.report_path, self.histogram_path, self.scatter_path) if p]
        if written:
            lines.append("  written: " + ", ".join(written))
        return "\n".join(lines)


def _bracket_label(lower: float, upper: float) -> str:
    if lower == 0:
        return f"< {upper:g} km"
    if math.isinf(upper):
        return f">= {lower:g} km"
    return f"{lower:g}-{upper:g} km"


def _expected(weights: np.ndarray, nearest_km: np.ndarray, has: np.ndarray) -> dict:
    """Expected statistics of a weighted draw over the rows with GPS (no sampling noise)."""
    w, d = weights[has], nearest_km[has]
    total = w.sum()
    if total <= 0:
        return {"mean": math.nan, "within_50": math.nan, "within_100": math.nan}
    return {
        "mean": float((w * d).sum() / total),
        "within_50": float(w[d < NEAR_KM].sum() / total),
        "within_100": float(w[d < REGION_KM].sum() / total),
    }


def _advice(key: str, radius_km: float, nearest_km: np.ndarray, has: np.ndarray, config) -> str:
    """What to change in the config so that criterion `key` passes, checked on expected statistics."""
    edges, weights = list(config.bracket_edges_km), list(config.bracket_weights)
    target = {
        "within_50": config.min_fraction_within_50km,
        "within_100": config.min_fraction_within_100km,
        "mean": config.max_mean_distance_km,
    }[key]
    # margin, so that the suggestion still passes after the noise of a finite validation draw
    meets = (lambda v: v < 0.97 * target) if key == "mean" else (lambda v: v >= min(target + 0.01, 1.0))
    near = [i for i, e in enumerate(edges) if e <= radius_km] or [0]
    far = len(weights) - 1

    def fmt(xs):
        return ", ".join(f"bracket_weights[{i}]" for i in xs)

    def try_scaling(indices, up: bool):
        for factor in _ADVICE_FACTORS:
            trial = list(weights)
            for i in indices:
                trial[i] = weights[i] * factor if up else weights[i] / factor
            brackets = tuple(zip([*edges, math.inf], trial))
            value = _expected(weights_for_distances(nearest_km, brackets, config.missing_weight), nearest_km, has)[key]
            if meets(value):
                return trial, value
        return None, None

    show = (lambda v: f"{v:.0f} km") if key == "mean" else (lambda v: f"{100 * v:.1f}%")
    options = []
    raised, value = try_scaling(near, up=True)
    if raised is not None:
        changes = ", ".join(f"{weights[i]:g} to {raised[i]:.3g}" for i in near)
        options.append(
            f"raise the {_bracket_label(0, edges[near[-1]])} weight ({fmt(near)}) from {changes} "
            f"(expected {show(value)})"
        )
    if far not in near:
        lowered, value = try_scaling([far], up=False)
        if lowered is not None:
            options.append(
                f"lower the {_bracket_label(edges[-1], math.inf)} weight ({fmt([far])}) from {weights[far]:g} to "
                f"{lowered[far]:.3g} (expected {show(value)})"
            )
    if options:
        text = "; or ".join(options)
        return text[0].upper() + text[1:] + ", then validate again."
    num_near = int((nearest_km[has] < radius_km).sum())
    return (
        f"No weight change up to x{_ADVICE_FACTORS[-1]:g} reaches it on expectation: only {num_near} training rows "
        f"lie within {radius_km:g} km of a centre. Check that the centres come from the target split and that "
        f"GPS columns are (latitude, longitude); otherwise add training data near the centres or relax the criterion."
    )


def validate_gps_weighting(
    train_gps: ArrayLike,
    weights: ArrayLike,
    centres: ArrayLike,
    config: RoadworkGPSWeightingConfig | None = None,
    output_dir: str | Path | None = None,
    *,
    target_gps: ArrayLike | None = None,
) -> RoadworkGPSReport:
    """
    Draws `config.num_validation_samples` training rows with `weights` (seeded, through the same
    `make_gps_sampler` that training uses) and checks the pass criteria of `config` on the drawn rows with GPS:
    share within 50 km, share within 100 km, and mean distance to the nearest centre.

    `train_gps` (N, 2), `weights` (N,), `centres` (K, 2). `target_gps` (M, 2), optional, adds the
    target cluster sizes and the target points in the scatter plot. With `output_dir`, writes
    `gps_report.json`, `gps_distance_histogram.png` and `gps_scatter.png` there.
    """
    config = config or RoadworkGPSWeightingConfig()
    gps = clean_gps(train_gps, "train_gps")
    centres = check_centres(centres)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(gps),):
        raise ValueError(f"weights must have shape ({len(gps)},) like train_gps, got {weights.shape}")
    nearest_km, nearest_index = nearest_centre(gps, centres)
    has = ~np.isnan(nearest_km)

    sampler = make_gps_sampler(weights, num_samples=config.num_validation_samples, seed=config.seed)
    # The sampler encodes repeats of a row as row + k * N (see RoadworkWeightedSampler): the row is the remainder.
    drawn = np.fromiter(iter(sampler), dtype=np.int64, count=config.num_validation_samples) % len(gps)
    drawn_km = nearest_km[drawn][has[drawn]]
    uniform_km = nearest_km[has]

    def stats(d: np.ndarray) -> tuple[float, float, float, float]:
        if len(d) == 0:
            return (math.nan,) * 4
        return float(d.mean()), float(np.median(d)), float((d < NEAR_KM).mean()), float((d < REGION_KM).mean())

    mean_km, median_km, within_50, within_100 = stats(drawn_km)
    u_mean, u_median, u_50, u_100 = stats(uniform_km)

    failures = []
    if len(drawn_km) == 0:
        failures.append(
            "no drawn row has GPS (every training row lacks it, or missing_weight dominates): "
            "GPS weighting cannot work on this data; switch it off or fix the GPS parsing."
        )
    else:
        checks = (
            (
                "within_50",
                NEAR_KM,
                within_50 >= config.min_fraction_within_50km,
                f"within 50 km: {100 * within_50:.1f}% of drawn rows, target >= "
                f"{100 * config.min_fraction_within_50km:g}% (min_fraction_within_50km)",
            ),
            (
                "within_100",
                REGION_KM,
                within_100 >= config.min_fraction_within_100km,
                f"within 100 km: {100 * within_100:.1f}% of drawn rows, target >= "
                f"{100 * config.min_fraction_within_100km:g}% (min_fraction_within_100km)",
            ),
            (
                "mean",
                NEAR_KM,
                mean_km < config.max_mean_distance_km,
                f"mean distance: {mean_km:.1f} km, target < {config.max_mean_distance_km:g} km (max_mean_distance_km)",
            ),
        )
        for key, radius, ok, message in checks:
            if not ok:
                failures.append(f"{message}. {_advice(key, radius, nearest_km, has, config)}")

    city_names, city_km = nearest_city(centres)
    target_sizes: list[int | None] = [None] * len(centres)
    target_clean = None
    if target_gps is not None:
        target_clean = clean_gps(target_gps, "target_gps")
        _, target_index = nearest_centre(target_clean, centres)
        target_sizes = np.bincount(target_index[target_index >= 0], minlength=len(centres)).tolist()
    train_sizes = np.bincount(nearest_index[has], minlength=len(centres))
    train_near = np.bincount(nearest_index[has & (nearest_km < NEAR_KM)], minlength=len(centres))
    centre_infos = [
        RoadworkGPSCentre(
            latitude=float(centres[i, 0]),
            longitude=float(centres[i, 1]),
            nearest_city=city_names[i],
            nearest_city_km=float(city_km[i]),
            num_target_rows=target_sizes[i],
            num_train_rows=int(train_sizes[i]),
            num_train_within_50km=int(train_near[i]),
        )
        for i in range(len(centres))
    ]

    lowers = [0.0, *config.bracket_edges_km]
    uppers = [*config.bracket_edges_km, math.inf]
    bracket_of = np.searchsorted(np.asarray(config.bracket_edges_km), nearest_km[has], side="right")
    bracket_of_drawn = np.searchsorted(np.asarray(config.bracket_edges_km), drawn_km, side="right")
    bracket_infos = [
        RoadworkGPSBracket(
            label=_bracket_label(lo, up),
            lower_km=lo,
            upper_km=up,
            weight=w,
            num_train_rows=int((bracket_of == i).sum()),
            sampled_fraction=float((bracket_of_drawn == i).sum() / len(drawn)),
        )
        for i, (lo, up, w) in enumerate(zip(lowers, uppers, config.bracket_weights))
    ]

    report = RoadworkGPSReport(
        passed=not failures,
        failures=failures,
        num_train_rows=len(gps),
        num_train_missing_gps=int((~has).sum()),
        missing_weight=config.missing_weight,
        num_samples=len(drawn),
        num_sampled_missing_gps=int((~has[drawn]).sum()),
        mean_distance_km=mean_km,
        median_distance_km=median_km,
        fraction_within_50km=within_50,
        fraction_within_100km=within_100,
        uniform_mean_distance_km=u_mean,
        uniform_median_distance_km=u_median,
        uniform_fraction_within_50km=u_50,
        uniform_fraction_within_100km=u_100,
        centres=centre_infos,
        brackets=bracket_infos,
        config=config,
    )
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.histogram_path = str(out / "gps_distance_histogram.png")
        report.scatter_path = str(out / "gps_scatter.png")
        report.report_path = str(out / "gps_report.json")
        plot_distance_histogram(report.histogram_path, drawn_km, uniform_km, config)
        plot_gps_scatter(report.scatter_path, gps, weights, target_clean, centres, city_names)
        Path(report.report_path).write_text(json.dumps(report.to_dict(), indent=2))
    if report.passed:
        logger.info("GPS weighting validation passed")
    else:
        logger.info("GPS weighting validation failed:\n%s", "\n".join(failures))
    return report


def prepare_gps_weighting(
    train_gps: ArrayLike,
    target_gps: ArrayLike,
    config: RoadworkGPSWeightingConfig | None = None,
    output_dir: str | Path | None = None,
) -> tuple[np.ndarray, RoadworkGPSReport]:
    """
    The whole pipeline: fit centres on `target_gps`, weight `train_gps`, validate.

    `train_gps` (N, 2), `target_gps` (M, 2) -> (weights (N,), report). The caller decides what a failed
    report means (train.py stops unless --allow_weak_gps_weighting); the centres are in `report.centres`.
    """
    config = config or RoadworkGPSWeightingConfig()
    # clean once, so that out-of-range warnings are not repeated by every step
    train_gps, target_gps = clean_gps(train_gps, "train_gps"), clean_gps(target_gps, "target_gps")
    centres = fit_gps_centres(target_gps, num_clusters=config.num_clusters, seed=config.seed)
    weights, _ = gps_weights(train_gps, centres, config.brackets, config.missing_weight)
    report = validate_gps_weighting(train_gps, weights, centres, config, output_dir, target_gps=target_gps)
    return weights, report


__all__ = [
    "RoadworkGPSBracket",
    "RoadworkGPSCentre",
    "RoadworkGPSReport",
    "prepare_gps_weighting",
    "validate_gps_weighting",
]
