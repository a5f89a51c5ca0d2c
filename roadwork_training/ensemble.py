"""Ensembles of roadwork checkpoints and adapters: the one ensemble file format, its reader and the combine rules.

`finetune_dora.py` writes `OUT/ensemble.json`; `predict.py --ensemble FILE` and `distill.py --ensemble FILE` read
it (or a hand-written file) with [`load_ensemble`]. This module is self-contained (standard library and numpy;
transformers and peft are imported only by [`RoadworkEnsemble.load_models`]) so that a prediction script needs
nothing else of the training side.

The file (`//` comments are explanations, not JSON):

```json
{
  "format": "roadwork-ensemble",           // optional in a hand-written file; when present it must be this
  "version": 1,                            // optional likewise; when present it must be 1
  "combine": "mean",                       // the rule `combine` uses by default: "mean" | "mcc_weighted" | "stacked"
  "members": [
    {"model": "owner/roadwork-base",        // base checkpoint (Hub id or folder), loaded with trust_remote_code
     "model_revision": "1a2b...",          // optional: the base's Hub revision (branch, tag or commit)
     "adapter": "owner/roadwork-dora-fold3",  // optional: a PEFT (DoRA) adapter on the base, Hub id or folder
     "weight": 0.36,                       // optional (default 1): weight in "mcc_weighted"; normalised to sum 1
     "validation_serving_mcc": 0.81,       // optional: out-of-fold serving MCC (what selected and weighted it)
     "fold": 3,                            // optional: the DoRA fold it came from
     "name": "fold3"}                      // optional: display name (prediction columns); default: the adapter's
  ],                                       // (else the model's) folder or repo name
  "stacking": {"coefficients": [1.2, 0.7, 2.1], "intercept": -1.9,   // the "stacked" meta-learner: logistic
               "features": "probability"}                              // regression on member probabilities
}
```

The file may also be the bare `members` list, and a member may be a bare string (its `model`); the combine rule is
then "mean". `model` and `adapter` paths relative to the file's folder are resolved against it when they exist
there ([`RoadworkEnsemble.resolve`]); anything else is taken as a Hub id. Unknown keys are errors, so that a
misspelt key is not silently ignored.

Combine rules, for member probabilities `P` of shape (N, M) (P(Roadwork) of member m on row n):
- `mean`: `P.mean(axis=1)` (the members' `weight`s play no part);
- `mcc_weighted`: `P @ w` with the members' normalised `weight`s (`finetune_dora.py` writes `weight` =
  `mcc_weights(validation_serving_mcc)`, i.e. proportional to the MCC clipped at 0);
- `stacked`: `sigmoid(intercept + P @ coefficients)`.
Every rule returns P(Roadwork) per row, thresholded like any single model (`round(p)`: 0.5 counts as None).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np


ENSEMBLE_FORMAT = "roadwork-ensemble"
ENSEMBLE_VERSION = 1
COMBINE_METHODS = ("mean", "mcc_weighted", "stacked")
# Spellings of an earlier hand-written format, refused with the key to use instead.
_RENAMED_KEYS = {"revision": "model_revision", "meta_learner": 'stacking {"coefficients": [...], "intercept": x}'}


@dataclass
class RoadworkEnsembleMember:
    """One member: a base checkpoint, optionally a PEFT (DoRA) adapter on it, its weight and the MCC behind it."""

    model: str
    adapter: str | None = None
    weight: float = 1.0
    validation_serving_mcc: float | None = None
    model_revision: str | None = None
    fold: int | None = None
    name: str | None = None

    @property
    def display_name(self) -> str:
        """`name`, else the adapter's (else the model's) last path component, made safe for a column name."""
        if self.name:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        source = self.adapter or self.model
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(source)) or source)


@dataclass
class RoadworkEnsemble:
    """
    Members and the rule that combines their probabilities. `combine(P)` takes P(Roadwork) of shape (N, M), one
    column per member in `members` order, and returns (N,) probabilities. Member weights sum to 1 (the reader
    normalises a file's weights).
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
        valid = np.all(np.isfinite(weights)) and np.all(weights >= 0)
        if not valid or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"member weights must be >= 0 and sum to 1, got {weights.tolist()}")
        if self.stacking_coefficients is not None and len(self.stacking_coefficients) != len(self.members):
            raise ValueError(
                f"{len(self.stacking_coefficients)} stacking coefficients for {len(self.members)} members"
            )
        stacking_missing = self.stacking_coefficients is None or self.stacking_intercept is None
        if self.combine_method == "stacked" and stacking_missing:
            raise ValueError(
                f'combine \'stacked\' needs stacking {{"coefficients": [{len(self.members)} numbers], "intercept": x}}'
            )

    @classmethod
    def equal_weights(cls, members: Sequence[RoadworkEnsembleMember], **kwargs) -> RoadworkEnsemble:
        """An ensemble of `members` with equal weights (whatever their `weight`s were)."""
        members = [replace(m, weight=1.0 / max(len(members), 1)) for m in members]
        return cls(members, **kwargs)

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

    def resolve(self, location: str | None) -> str | None:
        """A member's `model` or `adapter` as `from_pretrained` takes it: a path that exists relative to the ensemble
        file's folder is made absolute (`~` expanded); anything else (a Hub id, an absolute path) is returned as it
        is."""
        if not location:
            return None
        expanded = os.path.expanduser(location)
        if os.path.isabs(expanded):
            return expanded
        if self.path is not None:
            local = os.path.join(os.path.dirname(os.path.abspath(self.path)), expanded)
            if os.path.exists(local):
                return local
        return location

    def resolve_adapter(self, member: RoadworkEnsembleMember) -> str | None:
        return self.resolve(member.adapter)

    def resolved_members(self) -> list[RoadworkEnsembleMember]:
        """The members with `model` and `adapter` resolved against the file ([`resolve`]), in order."""
        return [replace(m, model=self.resolve(m.model), adapter=self.resolve(m.adapter)) for m in self.members]

    def load_models(self, device: str | None = None, **from_pretrained_kwargs) -> list:
        """
        Every member as an eval-mode model: the base with `AutoModelForImageClassification.from_pretrained(model,
        trust_remote_code=True)`, then, when the member has an adapter, `PeftModel.from_pretrained(base, adapter)`
        (`AutoPeftModel` does not load remote-code bases). Members that share a base still load it once each: a
        DoRA adapter changes the base's layers in place.
        """
        from transformers import AutoModelForImageClassification

        models = []
        for member in self.resolved_members():
            kwargs = dict(from_pretrained_kwargs)
            if member.model_revision and "revision" not in kwargs:
                kwargs["revision"] = member.model_revision
            model = AutoModelForImageClassification.from_pretrained(member.model, trust_remote_code=True, **kwargs)
            if member.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, member.adapter)
            model = model.eval()
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


_MEMBER_KEYS = tuple(f.name for f in fields(RoadworkEnsembleMember))


def _read_member(entry, position: int) -> RoadworkEnsembleMember:
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not entry["model"]:
        raise ValueError(f'member {position} needs a "model" (a base checkpoint folder or Hub id), got {entry!r}')
    for old, new in _RENAMED_KEYS.items():
        if old in entry:
            raise ValueError(f'member {position}: the key "{old}" is spelt "{new}" in this format')
    unknown = sorted(set(entry) - set(_MEMBER_KEYS))
    if unknown:
        raise ValueError(f"member {position} has unknown keys {unknown}; known: {list(_MEMBER_KEYS)}")
    weight = entry.get("weight", 1.0)
    if weight is None:
        weight = 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"member {position}: weight must be a number >= 0, got {weight!r}")
    mcc = entry.get("validation_serving_mcc")
    return RoadworkEnsembleMember(**{
        **entry, "weight": float(weight), "validation_serving_mcc": float(mcc) if mcc is not None else None,
    })  # fmt: skip


def load_ensemble(path: str | os.PathLike) -> RoadworkEnsemble:
    """
    Reads an ensemble file (see the module docstring: the object, or the bare members list) -> [`RoadworkEnsemble`]
    with the weights normalised to sum 1. Every error is a `ValueError` that names the file and the bad field.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read ensemble file {path} as JSON: {error}") from error
    if isinstance(data, list):
        data = {"members": data}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected an object {{"members": [...], ...}} or a list of members')
    if data.get("format", ENSEMBLE_FORMAT) != ENSEMBLE_FORMAT:
        raise ValueError(f"{path} is not a roadwork ensemble file (format {data.get('format')!r})")
    if data.get("version", ENSEMBLE_VERSION) != ENSEMBLE_VERSION:
        raise ValueError(
            f"{path}: ensemble file version {data.get('version')!r}; this loader reads {ENSEMBLE_VERSION}"
        )
    unknown = sorted(set(data) - {"format", "version", "combine", "members", "stacking"})
    if unknown:
        renamed = [f'"{key}" is spelt {_RENAMED_KEYS[key]}' for key in unknown if key in _RENAMED_KEYS]
        raise ValueError(f"{path}: unknown keys {unknown}" + (f" ({'; '.join(renamed)})" if renamed else ""))
    entries = data.get("members")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{path}: "members" must be a list with at least one member, got {entries!r}')
    try:
        members = [_read_member(entry, position) for position, entry in enumerate(entries)]
        total = sum(m.weight for m in members)
        if total <= 0:
            raise ValueError(f"member weights must not all be 0, got {[m.weight for m in members]}")
        if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-9):  # a saved file's weights stay bit for bit
            members = [replace(m, weight=m.weight / total) for m in members]
        stacking = data.get("stacking") or {}
        return RoadworkEnsemble(
            members=members,
            combine_method=data.get("combine", "mean"),
            stacking_coefficients=stacking.get("coefficients"),
            stacking_intercept=stacking.get("intercept"),
            path=str(path),
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


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
