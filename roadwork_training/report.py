"""Error analysis of labelled predictions: metrics, per-group MCC, worst predictions, plots, `report.html`.

Predictions are thresholded as the StreetVision validators do (`round(p)`, 0.5 counts as None). Under `--serving`
the report adds the subnet's reward formula on a 50/50 label mix: the validators draw labels 50/50, so the majority
class is subsampled (seeded) until both classes have the minority's count, and the reward
`(0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3` is computed (a) on that whole balanced set and (b) as the validators
do it, MCC over the last 100 and accuracy over the last 10 challenges, averaged over every position of a seeded
shuffle of the balanced set.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data_collator.metadata import normalize_category, parse_gps, parse_tag_list

from .metrics import classification_metrics


NUM_WORST = 10
GPS_CLUSTERS = 8


def _group_value(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name == "weather":
        tags = parse_tag_list(value)
        return ", ".join(tags) if tags else None
    return normalize_category(value) if name in ("daytime", "scene") else (str(value) or None)


def gps_clusters(records: Sequence[dict], num_clusters: int = GPS_CLUSTERS, seed: int = 42) -> list[str | None]:
    """A GPS cluster name per record (KMeans on the unit sphere, `fit_gps_centres`), None without GPS."""
    from data_collator.gps_weighting.sampling import fit_gps_centres, nearest_centre

    gps = np.array([parse_gps(r.get("gps")) or (np.nan, np.nan) for r in records], dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(gps[:, 0]).any():
        return [None] * len(records)
    centres = fit_gps_centres(gps, num_clusters=num_clusters, seed=seed)
    _, index = nearest_centre(gps, centres)
    names = [f"cluster {i} ({lat:.2f}, {lon:.2f})" for i, (lat, lon) in enumerate(centres)]
    return [names[i] if i >= 0 else None for i in index]


def group_metrics(records: Sequence[dict], seed: int = 42) -> dict[str, list[dict]]:
    """MCC (with counts) per value of weather, daytime, scene, city and GPS cluster, for the fields the data has."""
    names = ("weather", "daytime", "scene", "city")
    fields = {name: [_group_value(name, r.get(name)) for r in records] for name in names}
    fields["gps_cluster"] = gps_clusters(records, seed=seed)
    probabilities = np.array([r["prob_roadwork"] for r in records])
    labels = np.array([r["true_label"] for r in records])
    out = {}
    for name, values in fields.items():
        if all(v is None for v in values):
            continue
        rows = []
        for value in sorted({v for v in values if v is not None}):
            mask = np.array([v == value for v in values])
            metrics = classification_metrics(probabilities[mask], labels[mask])
            rows.append({"value": value, "count": int(mask.sum()), "num_positive": metrics["num_positive"],
                         "num_negative": metrics["num_negative"], "mcc": metrics.get("mcc"),
                         "accuracy": metrics["accuracy"]})  # fmt: skip
        out[name] = rows
    return out


def balanced_indices(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of a 50/50 label mix: every row of the minority class and a seeded subsample of the majority."""
    rng = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    count = min(len(positive), len(negative))
    kept = [rng.choice(positive, count, replace=False), rng.choice(negative, count, replace=False)]
    return np.sort(np.concatenate(kept))


def windowed_reward(probabilities: np.ndarray, labels: np.ndarray, seed: int, mcc_window: int = 100,
                    accuracy_window: int = 10) -> float | None:  # fmt: skip
    """Mean of the validators' per-challenge reward over a seeded shuffle: MCC of the last 100, accuracy of the last
    10 (positions with a full MCC window and both classes in it)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    predictions = (probabilities[order] > 0.5).astype(int)
    truth = labels[order].astype(int)
    if len(truth) < mcc_window:
        return None
    cells = {name: np.concatenate([[0], np.cumsum(mask)]) for name, mask in (
        ("tp", (predictions == 1) & (truth == 1)), ("tn", (predictions == 0) & (truth == 0)),
        ("fp", (predictions == 1) & (truth == 0)), ("fn", (predictions == 0) & (truth == 1)))}  # fmt: skip
    ends = np.arange(mcc_window, len(truth) + 1)
    tp, tn, fp, fn = (cells[k][ends] - cells[k][ends - mcc_window] for k in ("tp", "tn", "fp", "fn"))
    denominator = np.sqrt((tp + fp).astype(float) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)
    correct = np.concatenate([[0], np.cumsum(predictions == truth)])
    accuracy = (correct[ends] - correct[ends - accuracy_window]) / accuracy_window
    return float(np.mean((0.5 * np.clip(mcc, 0, None) + 0.5 * accuracy) ** 3))


def evaluate_records(records: Sequence[dict], *, serving: bool, seed: int = 42, members: Sequence[str] = ()) -> dict:
    """Metrics of the labelled records (those with a true label): overall, confusion matrix, groups, members."""
    labelled = [r for r in records if r.get("true_label") is not None]
    if not labelled:
        return {}
    probabilities = np.array([r["prob_roadwork"] for r in labelled], dtype=np.float64)
    labels = np.array([int(r["true_label"]) for r in labelled])
    predictions = (probabilities > 0.5).astype(int)
    metrics: dict[str, Any] = {
        "condition": "serving (validator challenge transform, no metadata)" if serving else "as given",
        "num_labelled": len(labelled),
        "overall": classification_metrics(probabilities, labels),
        "confusion_matrix": {
            "true_none_pred_none": int(((labels == 0) & (predictions == 0)).sum()),
            "true_none_pred_roadwork": int(((labels == 0) & (predictions == 1)).sum()),
            "true_roadwork_pred_none": int(((labels == 1) & (predictions == 0)).sum()),
            "true_roadwork_pred_roadwork": int(((labels == 1) & (predictions == 1)).sum()),
        },
        "groups": group_metrics(labelled, seed),
    }
    if len(members) > 1:
        metrics["members"] = {
            column: classification_metrics(np.array([r[column] for r in labelled]), labels) for column in members
        }
    if serving and len(set(labels.tolist())) == 2:
        keep = balanced_indices(labels, seed)
        balanced = classification_metrics(probabilities[keep], labels[keep])
        metrics["serving_balanced"] = {
            "note": f"majority class subsampled with seed {seed} to a 50/50 label mix, as the validators draw labels",
            "num_rows": int(len(keep)),
            "mcc": balanced.get("mcc"),
            "accuracy": balanced["accuracy"],
            "streetvision_reward": balanced.get("streetvision_reward"),
            "streetvision_reward_windowed": windowed_reward(probabilities[keep], labels[keep], seed),
        }
    return metrics


# --- plots ---------------------------------------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(path: str, probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> None:
    """Reliability diagram (share of roadwork per probability bin) with the bin counts."""
    plt = _figure()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centres.append(probabilities[mask].mean())
            observed.append(labels[mask].mean())
            counts.append(int(mask.sum()))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    top.plot(centres, observed, "o-", label="model")
    top.set_ylabel("share of roadwork")
    top.set_title("Calibration")
    top.legend(loc="upper left")
    bottom.bar((edges[:-1] + edges[1:]) / 2, np.bincount(which, minlength=bins), width=1 / bins, color="tab:blue")
    bottom.set_xlabel("predicted P(roadwork)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(path: str, confusion: dict) -> None:
    plt = _figure()
    matrix = np.array([[confusion["true_none_pred_none"], confusion["true_none_pred_roadwork"]],
                       [confusion["true_roadwork_pred_none"], confusion["true_roadwork_pred_roadwork"]]])  # fmt: skip
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="black", fontsize=14)
    ax.set_xticks([0, 1], ["None", "Roadwork"])
    ax.set_yticks([0, 1], ["None", "Roadwork"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_groups(path: str, groups: dict) -> None:
    """Horizontal bars of MCC per group value (n in the label); undefined (one-class) values shown at 0, hatched."""
    plt = _figure()
    labels, values, undefined = [], [], []
    for name, rows in groups.items():
        for row in rows:
            labels.append(f"{name}: {row['value']} (n={row['count']})")
            values.append(row["mcc"] if row["mcc"] is not None else 0.0)
            undefined.append(row["mcc"] is None)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1.2))
    bars = ax.barh(range(len(labels)), values, color=["lightgrey" if u else "tab:blue" for u in undefined])
    for bar, u in zip(bars, undefined):
        if u:
            bar.set_hatch("//")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ax.set_xlabel("MCC (grey: one class only, undefined)")
    ax.set_title("MCC per group")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_histogram(path: str, probabilities: np.ndarray, labels: np.ndarray) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, 1, 21)
    ax.hist(probabilities[labels == 0], bins=bins, alpha=0.6, label="true None")
    ax.hist(probabilities[labels == 1], bins=bins, alpha=0.6, label="true Roadwork")
    ax.axvline(0.5, color="black", linestyle="--")
    ax.set_xlabel("predicted P(roadwork)")
    ax.set_ylabel("images")
    ax.legend()
    ax.set_title("Scores by true label")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- report ----------------------------------------------------------------------------------------------------------


def worst_predictions(records: Sequence[dict], count: int = NUM_WORST) -> list[dict]:
    """The `count` labelled records with the largest |p - true label| (most confidently wrong first)."""
    labelled = [r for r in records if r.get("true_label") is not None]
    return sorted(labelled, key=lambda r: -abs(r["prob_roadwork"] - int(r["true_label"])))[:count]


def _fmt(value: Any) -> str:
    if value is None:
        return "undefined"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def write_report(
    output_dir: str,
    records: Sequence[dict],
    metrics: dict,
    *,
    thumbnail: Callable[[dict], Any] | None = None,
    title: str = "roadwork predictions",
    settings: dict | None = None,
) -> str:
    """Plots (PNG, in `output_dir/plots`), thumbnails of the worst predictions and `report.html`; returns its path.
    `thumbnail(record)` gives the PIL image the model saw for a record (None when it cannot be read again)."""
    from .predict import atomic_write

    plots = os.path.join(output_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if settings:
        parts.append("<h2>Settings</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
            for k, v in settings.items()) + "</table>")  # fmt: skip
    labelled = [r for r in records if r.get("true_label") is not None]
    images = []
    if metrics:
        overall = metrics["overall"]
        parts.append(f"<h2>Metrics ({html.escape(metrics['condition'])}, {metrics['num_labelled']} labelled images, "
                     "threshold round(p))</h2><table>")  # fmt: skip
        for name in ("mcc", "accuracy", "f1", "precision", "recall", "roc_auc", "streetvision_reward", "num_positive",
                     "num_negative"):  # fmt: skip
            parts.append(f"<tr><th>{name}</th><td>{_fmt(overall.get(name))}</td></tr>")
        parts.append("</table>")
        if "serving_balanced" in metrics:
            sb = metrics["serving_balanced"]
            parts.append(
                f"<h2>Subnet reward on a 50/50 label mix</h2><p>{html.escape(sb['note'])}: {sb['num_rows']} images. "
                "Reward = (0.5 &middot; max(MCC, 0) + 0.5 &middot; accuracy)<sup>3</sup>.</p><table>"
                f"<tr><th>MCC</th><td>{_fmt(sb['mcc'])}</td></tr><tr><th>accuracy</th><td>{_fmt(sb['accuracy'])}</td></tr>"
                f"<tr><th>reward (whole balanced set)</th><td>{_fmt(sb['streetvision_reward'])}</td></tr>"
                f"<tr><th>reward (validators' windows: MCC of last 100, accuracy of last 10, mean over a seeded "
                f"order)</th><td>{_fmt(sb['streetvision_reward_windowed'])}</td></tr></table>"
            )  # fmt: skip
        probabilities = np.array([r["prob_roadwork"] for r in labelled])
        labels = np.array([int(r["true_label"]) for r in labelled])
        plot_confusion(os.path.join(plots, "confusion_matrix.png"), metrics["confusion_matrix"])
        plot_calibration(os.path.join(plots, "calibration.png"), probabilities, labels)
        plot_histogram(os.path.join(plots, "score_histogram.png"), probabilities, labels)
        images += [("confusion_matrix.png", "Confusion matrix"), ("calibration.png", "Calibration"),
                   ("score_histogram.png", "Scores by true label")]  # fmt: skip
        if metrics.get("groups"):
            plot_groups(os.path.join(plots, "group_mcc.png"), metrics["groups"])
            images.append(("group_mcc.png", "MCC per group"))
        parts.append("<h2>Plots</h2>" + "".join(
            f'<figure><img class="plot" src="plots/{name}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}'
            "</figcaption></figure>" for name, alt in images))  # fmt: skip
        for name, rows in metrics.get("groups", {}).items():
            parts.append(f"<h3>MCC by {html.escape(name)}</h3><table><tr><th>value</th><th>images</th><th>roadwork"
                         "</th><th>none</th><th>MCC</th><th>accuracy</th></tr>")  # fmt: skip
            for row in rows:
                parts.append(f"<tr><td>{html.escape(str(row['value']))}</td><td>{row['count']}</td>"
                             f"<td>{row['num_positive']}</td><td>{row['num_negative']}</td><td>{_fmt(row['mcc'])}</td>"
                             f"<td>{_fmt(row['accuracy'])}</td></tr>")  # fmt: skip
            parts.append("</table>")
        if metrics.get("members"):
            parts.append("<h2>Members</h2><table><tr><th>member</th><th>MCC</th><th>accuracy</th><th>ROC-AUC</th></tr>")
            for column, m in metrics["members"].items():
                parts.append(f"<tr><td>{html.escape(column)}</td><td>{_fmt(m.get('mcc'))}</td>"
                             f"<td>{_fmt(m['accuracy'])}</td><td>{_fmt(m.get('roc_auc'))}</td></tr>")  # fmt: skip
            parts.append("</table>")
        worst = worst_predictions(records)
        parts.append(f"<h2>The {len(worst)} worst predictions</h2><table><tr><th>image</th><th>input</th>"
                     "<th>P(roadwork)</th><th>true</th></tr>")  # fmt: skip
        for rank, record in enumerate(worst, 1):
            cell = "(not readable)"
            image = thumbnail(record) if thumbnail is not None else None
            if image is not None:
                name = f"worst_{rank:02d}.png"
                image = image.copy()
                image.thumbnail((160, 160))
                image.save(os.path.join(plots, name))
                cell = f'<img class="thumbnail" src="plots/{name}" alt="worst prediction {rank}">'
            parts.append(f"<tr><td>{cell}</td><td>{html.escape(record['input'])}</td>"
                         f"<td>{record['prob_roadwork']:.4f}</td><td>{record['true_label']}</td></tr>")  # fmt: skip
        parts.append("</table>")
    else:
        parts.append(f"<p>No labels: {len(records)} predictions, no metrics.</p>")
    # Marks each image once the browser has decoded it, so a headless render can prove the plots show.
    script = ("<script>window.addEventListener('load', () => { for (const img of document.images) "
              "img.dataset.rendered = String(img.complete && img.naturalWidth > 0); "
              "document.body.dataset.loaded = 'true'; });</script>")  # fmt: skip
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:0.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}figure{display:inline-block}</style>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}</head>"
            f"<body>{''.join(parts)}{script}</body></html>")  # fmt: skip
    path = os.path.join(output_dir, "report.html")
    atomic_write(path, page)
    return path


__all__ = [
    "NUM_WORST",
    "balanced_indices",
    "evaluate_records",
    "gps_clusters",
    "group_metrics",
    "plot_calibration",
    "plot_confusion",
    "plot_groups",
    "plot_histogram",
    "windowed_reward",
    "worst_predictions",
    "write_report",
]
