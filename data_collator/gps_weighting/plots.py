"""The two figures of the GPS weighting report: a distance histogram and a map of rows, weights and centres.

matplotlib is imported inside the functions: it is slow to import and only needed when a report is written.
"""

from __future__ import annotations

import numpy as np


def plot_distance_histogram(path: str, drawn_km: np.ndarray, uniform_km: np.ndarray, config) -> None:
    # Figure without pyplot: no global backend switch, nothing left open in the caller's process.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    # Beyond twice the last edge all rows share one weight; fold them into the last bin.
    x_max = max(2.0 * config.bracket_edges_km[-1], 300.0)
    bins = np.linspace(0.0, x_max, 61)
    for values, label, style in (
        (uniform_km, f"training rows, unweighted (n={len(uniform_km)})", {"color": "tab:gray"}),
        (drawn_km, f"weighted draw (n={len(drawn_km)})", {"color": "tab:blue"}),
    ):
        if len(values):
            ax.hist(
                np.minimum(values, x_max),
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.8,
                label=label,
                **style,
            )
    bounds = [0.0, *config.bracket_edges_km, x_max]
    for i, weight in enumerate(config.bracket_weights):
        if i < len(config.bracket_edges_km):
            ax.axvline(bounds[i + 1], color="tab:red", linestyle="--", linewidth=1)
        ax.text(
            (bounds[i] + bounds[i + 1]) / 2,
            0.98,
            f"w={weight:g}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color="tab:red",
        )
    ax.set_xlabel(f"distance to nearest centre (km; >= {x_max:g} folded into the last bin)")
    ax.set_ylabel("density")
    ax.set_title("GPS weighting: distance to the nearest target centre")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_gps_scatter(path, gps, weights, target_gps, centres, city_names) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100)
    ax = fig.subplots()
    has = ~np.isnan(gps[:, 0])
    if has.any():
        w = weights[has]
        positive = w[w > 0]
        # weights span brackets multiplicatively (0.3 .. 5), so a log colour scale separates them
        norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.01)) if len(positive) else None
        points = ax.scatter(
            gps[has, 1],
            gps[has, 0],
            c=np.maximum(w, 1e-6),
            s=6,
            cmap="viridis",
            norm=norm,
            alpha=0.7,
            label=f"training rows (n={int(has.sum())})",
        )
        colorbar = fig.colorbar(points, ax=ax, label="sampling weight")
        ticks = np.unique(positive)
        if len(ticks) <= 12:  # a handful of bracket weights: label exactly those
            colorbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
            colorbar.ax.minorticks_off()
    if target_gps is not None:
        t = target_gps[~np.isnan(target_gps[:, 0])]
        ax.scatter(t[:, 1], t[:, 0], s=10, marker="x", color="tab:red", alpha=0.6, label=f"target rows (n={len(t)})")
    # hollow stars, so the rows under a centre (the heaviest ones) stay visible
    ax.scatter(
        centres[:, 1],
        centres[:, 0],
        s=300,
        marker="*",
        facecolors="none",
        edgecolors="black",
        linewidths=1.5,
        zorder=5,
        label="centres",
    )
    for (lat, lon), name in zip(centres, city_names):
        ax.annotate(name, (lon, lat), xytext=(6, 6), textcoords="offset points", fontsize=8, zorder=6)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    missing = int((~has).sum())
    ax.set_title(f"GPS weighting ({missing} training rows without GPS not shown)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


__all__ = ["plot_distance_histogram", "plot_gps_scatter"]
