"""The argument layer shared by the scripts: a YAML file of flags (with `base:` includes) under `HfArgumentParser`.

    parser = RoadworkArgumentParser((ModelArguments, DataArguments, TrainingArguments), description=__doc__)
    model_args, data_args, training_args = parser.parse(argv)

Flags on the command line override the YAML file given with `--config`. A library dataclass (for example
`RoadworkGPSWeightingConfig`) is turned into a flag group with `prefixed_arguments`, so its defaults and help texts
are defined once, in the library, and show in `--help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
import sys
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser


# Mappings (JSON on the command line) that a variant file or the command line merges key by key into its base.
MERGED_MAPPINGS = ("model_overrides", "backbone_config", "backbone_kwargs")


def load_config_file(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """
    A YAML file of flags. `base: other.yaml` (relative to the file) is read first and the file's own keys win; the
    mappings `model_overrides` and `backbone_config` are merged key by key, so a variant lists only what it changes.
    """
    path = os.path.abspath(path)
    if path in _seen:
        raise SystemExit(f"{path}: `base` includes form a cycle: {' -> '.join(_seen + (path,))}")
    if not os.path.isfile(path):
        raise SystemExit(f"--config {path}: no such file")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected a mapping of flags, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    merged = load_config_file(os.path.join(os.path.dirname(path), base), _seen + (path,))
    for key, value in values.items():
        if key in MERGED_MAPPINGS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def json_arg(value: str | None, name: str) -> dict:
    """A JSON-object flag (`--model_overrides '{...}'`) -> dict; `None` or empty -> {}."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--{name} must be JSON (or a YAML mapping in --config): {error}") from error
    if not isinstance(parsed, dict):
        raise SystemExit(f"--{name} must be a JSON object, got {value!r}")
    return parsed


def check_config_fields(overrides: dict, config_class: type, flag: str = "model_overrides") -> None:
    """
    `PretrainedConfig` subclasses take **kwargs (transformers stores unknown keys as attributes), so a misspelt field
    would be silently ignored: reject keys that are not fields of `config_class`, naming the closest ones.
    """
    fields = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    fields |= {"id2label", "label2id"}
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise SystemExit(f"--{flag}: {key!r} is not a {config_class.__name__} field{hint}")


def prefixed_arguments(
    config_class: type,
    prefix: str,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    name: str | None = None,
) -> type:
    """
    A dataclass of flags `--{prefix}{field}` for the fields of the library dataclass `config_class` (minus `exclude`),
    with the library's types, defaults and help texts, so nothing is written twice (`include` keeps only the named
    fields; the others keep the library's defaults). `to_config(args, **extra)` builds
    the library object back. The prefix keeps flag groups apart (`seed` exists in several of them) and says on the
    command line which component a flag belongs to (`--gps_bracket_weights`, `--synthetic_num_train`).
    """
    excluded = set(exclude)
    included = None if include is None else set(include)
    specs = []
    for f in dataclasses.fields(config_class):
        if f.name in excluded or not f.init or (included is not None and f.name not in included):
            continue
        kwargs: dict[str, Any] = {"metadata": dict(f.metadata)}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        specs.append((prefix + f.name, f.type, dataclasses.field(**kwargs)))
    # `from __future__ import annotations` leaves the types as strings: resolve them in the library's module.
    hints = _type_hints(config_class)
    specs = [(n, hints.get(n[len(prefix) :], t), f) for n, t, f in specs]  # fmt: skip
    cls = dataclasses.make_dataclass(name or f"{config_class.__name__}Arguments", specs)
    cls.__doc__ = f"Flags `--{prefix}*` of [`{config_class.__name__}`]."
    cls.config_class, cls.prefix = config_class, prefix
    return cls


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_config(arguments: Any, **extra: Any) -> Any:
    """The library object of a `prefixed_arguments` dataclass instance (its `__post_init__` validates it)."""
    prefix = type(arguments).prefix
    values = {f.name[len(prefix) :]: getattr(arguments, f.name) for f in dataclasses.fields(arguments)}
    return type(arguments).config_class(**values, **extra)


def _yaml_default(action, value):
    """A YAML value as the default of `action`. List flags (`nargs`) take a YAML list as a list, each item converted as
    on the command line (argparse re-parses string defaults, so JSON text would fail); string flags such as
    --backbone_config and --model_overrides take mappings and lists as JSON."""
    if isinstance(value, list) and action.nargs not in (None, "?"):
        return [action.type(v) if action.type is not None else v for v in value]
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flags with their defaults (HfArgumentParser's formatter), and the script's docstring as written: its example
    commands and paragraphs keep their lines."""


class RoadworkArgumentParser(HfArgumentParser):
    """
    `HfArgumentParser` over argument dataclasses plus `--config FILE.yaml`: the YAML file's keys become the defaults
    and command-line flags override them. Unknown YAML keys are an error naming the file, except `yaml_only_keys`:
    flags of another script that shares the YAML file (train.py's), accepted in the file and ignored here. JSON
    mappings in `MERGED_MAPPINGS` given on the command line are merged into the YAML's mapping instead of replacing it.
    """

    def __init__(
        self,
        dataclass_types: Sequence[type],
        *,
        description: str | None = None,
        prog: str | None = None,
        yaml_only_keys: Iterable[str] = (),
    ):
        super().__init__(dataclass_types, description=description, prog=prog, formatter_class=HelpFormatter)
        self.yaml_only_keys = frozenset(yaml_only_keys)
        self.add_argument(
            "--config",
            default=None,
            help="YAML file of flags; command-line flags override it. A `base: other.yaml` key reads that file first.",
        )

    def parse(self, argv: Sequence[str] | None = None) -> tuple:
        argv = list(sys.argv[1:] if argv is None else argv)
        known, _ = self.parse_known_args(argv)
        values: dict = {}
        if known.config:
            values = load_config_file(known.config)
            actions = {action.dest: action for action in self._actions}
            values = {k: v for k, v in values.items() if k in actions or k not in self.yaml_only_keys}
            unknown = sorted(set(values) - set(actions))
            if unknown:
                hints = []
                for key in unknown:
                    close = difflib.get_close_matches(key, sorted(actions), n=1)
                    hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
                raise SystemExit(f"{known.config}: unknown keys {', '.join(hints)}; see --help")
            self.set_defaults(**{k: _yaml_default(actions[k], v) for k, v in values.items()})
        parsed = self.parse_args_into_dataclasses(args=argv, look_for_args_file=False)[:-1]  # drop the namespace
        for name in MERGED_MAPPINGS:
            from_yaml = values.get(name)
            if not isinstance(from_yaml, dict):
                continue
            for args in parsed:
                given = getattr(args, name, None)
                if given is not None and given != json.dumps(from_yaml):
                    setattr(args, name, json.dumps({**from_yaml, **json_arg(given, name)}))
        return tuple(parsed)


__all__ = [
    "MERGED_MAPPINGS",
    "RoadworkArgumentParser",
    "check_config_fields",
    "json_arg",
    "load_config_file",
    "prefixed_arguments",
    "to_config",
]
