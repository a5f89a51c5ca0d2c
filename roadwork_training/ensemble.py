"""Ensembles of roadwork DoRA adapters: the `ensemble.json` format, its loader and the combine rules.

`finetune_dora.py` writes `OUT/ensemble.json`; `predict.py --ensemble OUT/ensemble.json` reads it with
[`load_ensemble`]. This module is self-contained (standard library and numpy; transformers and peft are imported
only by [`RoadworkEnsemble.load_models`]) so that a prediction script needs nothing else of the training side.

The file:

```json
{
  "format": "roadwork-ensemble",
  "version": 1,
  "combine": "mean",                       // the rule `combine` uses by default: "mean" | "mcc_weighted" | "stacked"
  "members": [
    {"model": "owner/roadwork-base",        // base checkpoint (Hub id or folder), loaded with trust_remote_code
     "model_revision": "1a2b...",          // optional: the base's commit
     "adapter": "owner/roadwork-dora-fold3",  // DoRA adapter: Hub id, or a folder (relative to this file)
     "weight": 0.36,                       // weight in the "mcc_weighted" mean (weights sum to 1)
     "validation_serving_mcc": 0.81}       // the member's out-of-fold serving MCC (what selected and weighted it)
  ],
  "stacking": {"coefficients": [1.2, 0.7, 2.1], "intercept": -1.9,   // the "stacked" meta-learner: logistic
               "features": "probability"}                              // regression on member probabilities
}
```

Combine rules, for member probabilities `P` of shape (N, M) (P(Roadwork) of member m on row n):
- `mean`: `P.mean(axis=1)`;
- `mcc_weighted`: `P @ w` with the members' `weight`s;
- `stacked`: `sigmoid(intercept + P @ coefficients)`.
Every rule returns P(Roadwork) per row, thresholded like any single model (`round(p)`: 0.5 counts as None).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


ENSEMBLE_FORMAT = "roadwork-ensemble"
ENSEMBLE_VERSION = 1
COMBINE_METHODS = ("mean", "mcc_weighted", "stacked")


@dataclass
class RoadworkEnsembleMember:
    """One member: a base checkpoint plus a DoRA adapter, its weight and the out-of-fold MCC behind it."""

    model: str
    adapter: str
    weight: float
    validation_serving_mcc: float | None = None
    model_revision: str | None = None
    fold: int | None = None


@dataclass
class RoadworkEnsemble:
    """
    Members and the rule that combines their probabilities. `combine(P)` takes P(Roadwork) of shape (N, M), one
    column per member in `members` order, and returns (N,) probabilities.
    """

    members: list[RoadworkEnsembleMember]
    combine_method: str = "mean"
    stacking_coefficients: list[float] | None = None
    stacking_intercept: float | None = None
    path: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if self.combine_method not in COMBINE_METHODS:
            raise ValueError(f"combine must be one of {COMBINE_METHODS}, got {self.combine_method!r}")
        weights = np.asarray([m.weight for m in self.members], dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"member weights must be >= 0 and sum to 1, got {weights.tolist()}")
        if self.stacking_coefficients is not None and len(self.stacking_coefficients) != len(self.members):
            raise ValueError(
                f"{len(self.stacking_coefficients)} stacking coefficients for {len(self.members)} members"
            )
        if self.combine_method == "stacked" and self.stacking_coefficients is None:
            raise ValueError("combine 'stacked' needs stacking coefficients and an intercept")

    @property
    def weights(self) -> np.ndarray:
        return np.asarray([m.weight for m in self.members], dtype=np.float64)

    def combine(self, probabilities, method: str | None = None) -> np.ndarray:
        """(N, M) member probabilities -> (N,) ensemble probability, by `method` (default: the file's `combine`)."""
        method = method or self.combine_method
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.members):
            raise ValueError(
                f"expected probabilities of shape (N, {len(self.members)}) (one column per member), "
                f"got {probabilities.shape}"
            )
        if method == "mean":
            return combine_mean(probabilities)
        if method == "mcc_weighted":
            return combine_weighted(probabilities, self.weights)
        if method == "stacked":
            if self.stacking_coefficients is None:
                raise ValueError("this ensemble has no stacking meta-learner")
            return combine_stacked(probabilities, self.stacking_coefficients, self.stacking_intercept or 0.0)
        raise ValueError(f"combine method must be one of {COMBINE_METHODS}, got {method!r}")

    def resolve_adapter(self, member: RoadworkEnsembleMember) -> str:
        """The member's adapter as `PeftModel.from_pretrained` takes it: a folder relative to the ensemble file is
        made absolute; anything else (a Hub id, an absolute path) is returned as it is."""
        if self.path is not None and not os.path.isabs(member.adapter):
            local = Path(self.path).parent / member.adapter
            if local.is_dir():
                return str(local)
        return member.adapter

    def load_models(self, device: str | None = None, **from_pretrained_kwargs) -> list:
        """
        Every member as an eval-mode `PeftModel`: the base with `AutoModelForImageClassification.from_pretrained(
        model, trust_remote_code=True)`, then `PeftModel.from_pretrained(base, adapter)` (`AutoPeftModel` does not
        load remote-code bases). Members that share a base still load it once each: a DoRA adapter changes the
        base's layers in place.
        """
        from peft import PeftModel
        from transformers import AutoModelForImageClassification

        models = []
        for member in self.members:
            kwargs = dict(from_pretrained_kwargs)
            if member.model_revision and "revision" not in kwargs:
                kwargs["revision"] = member.model_revision
            base = AutoModelForImageClassification.from_pretrained(member.model, trust_remote_code=True, **kwargs)
            model = PeftModel.from_pretrained(base, self.resolve_adapter(member)).eval()
            models.append(model.to(device) if device else model)
        return models

    def to_dict(self) -> dict:
        data = {
            "format": ENSEMBLE_FORMAT,
            "version": ENSEMBLE_VERSION,
            "combine": self.combine_method,
            "members": [{k: v for k, v in asdict(m).items() if v is not None} for m in self.members],
        }
        if self.stacking_coefficients is not None:
            data["stacking"] = {
                "coefficients": [float(c) for c in self.stacking_coefficients],
                "intercept": float(self.stacking_intercept or 0.0),
                "features": "probability",
            }
        return data

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


def combine_mean(probabilities: np.ndarray) -> np.ndarray:
    """(N, M) -> (N,): the unweighted mean of the members' probabilities."""
    return np.asarray(probabilities, dtype=np.float64).mean(axis=1)


def combine_weighted(probabilities: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(N, M) -> (N,): the weighted mean (weights normalised to sum 1)."""
    weights = np.asarray(weights, dtype=np.float64)
    return np.asarray(probabilities, dtype=np.float64) @ (weights / weights.sum())


def combine_stacked(probabilities: np.ndarray, coefficients: Sequence[float], intercept: float) -> np.ndarray:
    """(N, M) -> (N,): the logistic-regression meta-learner, `sigmoid(intercept + P @ coefficients)`."""
    z = float(intercept) + np.asarray(probabilities, dtype=np.float64) @ np.asarray(coefficients, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def mcc_weights(mccs: Sequence[float]) -> list[float]:
    """Weights proportional to each member's MCC clipped at 0 (the validators clip it too); uniform when no member
    has a positive MCC."""
    clipped = np.clip(np.nan_to_num(np.asarray(mccs, dtype=np.float64), nan=0.0), 0.0, None)
    if clipped.sum() <= 0:
        return [1.0 / len(clipped)] * len(clipped)
    return (clipped / clipped.sum()).tolist()


def load_ensemble(path: str | os.PathLike) -> RoadworkEnsemble:
    """Reads an `ensemble.json` (see the module docstring) -> [`RoadworkEnsemble`]; errors name the bad field."""
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != ENSEMBLE_FORMAT:
        raise ValueError(f"{path} is not a roadwork ensemble file (format {data.get('format')!r})")
    if data.get("version") != ENSEMBLE_VERSION:
        raise ValueError(f"{path}: ensemble file version {data.get('version')!r}; this loader reads {ENSEMBLE_VERSION}")
    try:
        members = [RoadworkEnsembleMember(**member) for member in data["members"]]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: bad `members` entry: {error}") from error
    stacking = data.get("stacking") or {}
    return RoadworkEnsemble(
        members=members,
        combine_method=data.get("combine", "mean"),
        stacking_coefficients=stacking.get("coefficients"),
        stacking_intercept=stacking.get("intercept"),
        path=str(path),
    )


__all__ = [
    "COMBINE_METHODS",
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_VERSION",
    "RoadworkEnsemble",
    "RoadworkEnsembleMember",
    "combine_mean",
    "combine_stacked",
    "combine_weighted",
    "load_ensemble",
    "mcc_weights",
]
