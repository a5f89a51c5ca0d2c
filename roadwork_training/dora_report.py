"""The ensembles of the DoRA folds and the report that compares them with the single folds (serving condition).

Which rows are out-of-fold for what:
- a single fold's adapter never trained on its own fold of the target split: its fold is its out-of-fold data, and
  the five folds together give one out-of-fold prediction per target row (`pooled out-of-fold`);
- an ensemble of several folds has no target row that none of its members trained on (each fold model trained on
  the other 4 folds). Its out-of-fold data are rows outside the target split that no adapter trained on: the
  holdout (`--ensemble_split`, the train split's held-out share). The stacking meta-learner is fitted on the
  members' holdout probabilities and scored there by cross-fitting (each holdout row predicted by a meta-learner
  fitted without it); top-3 selection and MCC weights come from the target-split folds, so the holdout scores
  of `mean` and `mcc_weighted` are not fitted to it at all.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .ensemble import (
    RoadworkEnsemble,
    RoadworkEnsembleMember,
    combine_mean,
    combine_stacked,
    combine_weighted,
    mcc_weights,
)
from .metrics import PRIMARY_CONDITION, classification_metrics, format_metric


REPORT_METRICS = ("mcc", "accuracy", "f1", "roc_auc", "streetvision_reward")


def _sort_key(record: Mapping) -> tuple[float, int]:
    mcc = record["metrics"].get(f"validation_{PRIMARY_CONDITION}_mcc")
    return (-(mcc if mcc is not None and math.isfinite(mcc) else -math.inf), record["fold"])


def select_members(records: Sequence[Mapping], size: int) -> list[Mapping]:
    """The `size` folds with the best out-of-fold serving MCC (undefined MCC last; ties: lower fold first)."""
    return sorted(records, key=_sort_key)[:size]


def fit_stacking(probabilities: np.ndarray, labels: np.ndarray, c: float = 1.0, seed: int = 42):
    """
    Logistic regression on member probabilities (N, M) -> ((coefficients, intercept), cross-fitted (N,) predictions),
    or (None, None) when the rows hold one class only (nothing to fit). Cross-fitting: stratified folds (up to 5, at
    least 2 rows of the rarer class each); each row is predicted by a model fitted without it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        return None, None
    model = LogisticRegression(C=c).fit(probabilities, labels)
    crossfit = np.zeros(len(labels))
    splitter = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    for train, test in splitter.split(probabilities, labels):
        part = LogisticRegression(C=c).fit(probabilities[train], labels[train])
        crossfit[test] = combine_stacked(probabilities[test], part.coef_[0], float(part.intercept_[0]))
    return (model.coef_[0].tolist(), float(model.intercept_[0])), crossfit


def _metrics(probabilities, labels) -> dict[str, float]:
    return {k: v for k, v in classification_metrics(probabilities, labels).items() if k in REPORT_METRICS}


def build_ensembles(
    records: Sequence[Mapping], *, base_model: str, base_revision: str | None, size: int, adapters: Mapping[int, str],
    stacking_c: float = 1.0, seed: int = 42,
) -> tuple[RoadworkEnsemble, dict]:  # fmt: skip
    """
    The ensemble of the best `size` folds and the report. `records` are the folds' records (`train_fold`, with a
    `fold` key); `adapters` maps fold -> the adapter as the ensemble file names it (a folder relative to the file,
    or a Hub id). The file's `combine` is the rule with the best holdout serving MCC (ties: the simpler rule).
    """
    members = select_members(records, size)
    mccs = [m["metrics"].get(f"validation_{PRIMARY_CONDITION}_mcc") for m in members]
    weights = mcc_weights(mccs)
    report: dict = {"condition": PRIMARY_CONDITION, "folds": [], "ensembles": {}}

    for record in sorted(records, key=lambda r: r["fold"]):
        entry = {
            "fold": record["fold"],
            "rows": len(record["validation_labels"]),
            "out_of_fold": {k: record["metrics"].get(f"validation_{PRIMARY_CONDITION}_{k}") for k in REPORT_METRICS},
        }
        if record.get("holdout"):
            entry["holdout"] = _metrics(record["holdout"]["probabilities"], record["holdout"]["labels"])
        report["folds"].append(entry)
    pooled_p = np.concatenate([r["validation_probabilities"][PRIMARY_CONDITION] for r in records])
    pooled_y = np.concatenate([r["validation_labels"] for r in records])
    report["pooled_out_of_fold"] = {"rows": len(pooled_y), **_metrics(pooled_p, pooled_y)}

    coefficients = intercept = None
    holdouts = [m.get("holdout") for m in members]
    if all(holdouts):
        ids = holdouts[0]["ids"]
        if any(h["ids"] != ids for h in holdouts):
            raise ValueError(
                "the members predicted different holdout rows; retrain the folds with one --ensemble_split"
            )
        P = np.stack([np.asarray(h["probabilities"]) for h in holdouts], axis=1)  # (N, M)
        y = np.asarray(holdouts[0]["labels"])
        report["holdout_rows"] = len(y)
        combined = {"mean": combine_mean(P), "mcc_weighted": combine_weighted(P, weights)}
        fitted, crossfit = fit_stacking(P, y, stacking_c, seed)
        if fitted is not None:
            coefficients, intercept = fitted
            combined["stacked"] = crossfit
        else:
            report["ensembles"]["stacked"] = {"skipped": "the holdout rows hold one class: nothing to fit"}
        for name, probabilities in combined.items():
            report["ensembles"][name] = {"holdout": _metrics(probabilities, y)}
        scores = {n: report["ensembles"][n]["holdout"].get("mcc", -math.inf) for n in combined}
        combine = max(combined, key=lambda n: (scores[n], -list(combined).index(n)))
    else:
        combine = "mean"
        report["ensembles"]["note"] = "no holdout predictions: the ensembles could not be compared; combine = mean"

    ensemble = RoadworkEnsemble(
        members=[
            RoadworkEnsembleMember(
                model=base_model, model_revision=base_revision, adapter=adapters[m["fold"]], weight=w,
                validation_serving_mcc=mcc, fold=m["fold"],
            )
            for m, w, mcc in zip(members, weights, mccs)
        ],
        combine_method=combine, stacking_coefficients=coefficients, stacking_intercept=intercept,
    )  # fmt: skip
    report["members"] = [m["fold"] for m in members]
    report["combine"] = combine
    return ensemble, report


def report_markdown(report: Mapping) -> str:
    """The report as markdown: single folds and the ensembles, serving condition."""
    names = REPORT_METRICS
    header = "| model | data | rows | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 3) + "|"
    lines = [
        f"# DoRA folds and ensembles ({report['condition']} condition)",
        "",
        "Out-of-fold data: a fold's own rows of the target split (its adapter trained on the others); the holdout: "
        "rows of the train split's held-out share, which no adapter trained on. Ensembles have no target rows that "
        "none of their members trained on, so they are compared on the holdout only; the stacked score is "
        "cross-fitted.",
        "",
        header,
    ]

    def row(model, data, rows, metrics):
        return f"| {model} | {data} | {rows} | " + " | ".join(format_metric(metrics.get(n), n) for n in names) + " |"

    holdout_rows = report.get("holdout_rows", "-")
    for fold in report["folds"]:
        lines.append(row(f"fold {fold['fold']}", "own fold", fold["rows"], fold["out_of_fold"]))
        if "holdout" in fold:
            lines.append(row(f"fold {fold['fold']}", "holdout", holdout_rows, fold["holdout"]))
    pooled = report["pooled_out_of_fold"]
    lines.append(row("folds pooled", "all folds, out-of-fold", pooled["rows"], pooled))
    for name in ("mean", "mcc_weighted", "stacked"):
        entry = report["ensembles"].get(name)
        if entry and "holdout" in entry:
            lines.append(row(f"ensemble {name}", "holdout", holdout_rows, entry["holdout"]))
        elif entry:
            lines.append(f"| ensemble {name} | - | - | {entry.get('skipped', '')} |")
    lines += ["", f"Members (best out-of-fold serving MCC): folds {report['members']}; `ensemble.json` combines with "
              f"`{report['combine']}`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(report: Mapping, output_dir: str | os.PathLike) -> None:
    output_dir = Path(output_dir)
    with open(output_dir / "dora_report.json", "w") as f:
        json.dump(report, f, indent=2, default=float)
    (output_dir / "dora_report.md").write_text(report_markdown(report))


__all__ = ["REPORT_METRICS", "build_ensembles", "fit_stacking", "report_markdown", "select_members", "write_report"]
