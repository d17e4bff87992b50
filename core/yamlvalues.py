"""The values of experiment.yaml and of `key=value` overrides: read into the config's field types.

    build(TrainConfig, {"epochs": 2, "seed": 1}, "train")     # a dataclass from a mapping, or ConfigError
    apply_override(raw, "train.epochs=2")                      # raw["train"]["epochs"] = 2 (a YAML scalar)

An unknown key, a missing required key or a value of the wrong type raises ConfigError with one
line that names the key (an unknown key also names its nearest known key and that key's help). The
checks of single values every section shares (one_of, positive) are here too; the rules of each
section are in its check() (core/config.py, core/objective.py).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing

import yaml


class ConfigError(ValueError):
    """A problem in experiment.yaml or an override; the message names the key."""


def build(cls, data, key: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(fields)}){_near(unknown[0], fields)}")
    values = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            values[name] = convert(hints[name], data[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: missing (required)")
    return cls(**values)


def _near(name, fields: dict) -> str:
    """'; did you mean epochs: passes over the training split (or max_steps)' for a misspelt key, else ''."""
    close = difflib.get_close_matches(str(name), list(fields), n=1)
    if not close:
        return ""
    help_text = fields[close[0]].metadata.get("help")
    return f"; did you mean {close[0]}" + (f": {help_text}" if help_text else "?")


def convert(hint, value, key: str):
    """`value` as type `hint` (a field's annotation), or ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:  # e.g. list[str] | str: the first that fits
            try:
                return convert(alternative, value, key)
            except ConfigError:
                pass
        return convert(inner[-1], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and isinstance(value, hint):  # built by its own reader (core.space.SearchSpace)
        return value
    raise TypeError(f"no converter for {hint} at {key}")  # a bug in a config class, not in the config


def apply_override(raw: dict, item: str) -> None:
    """Set raw[a][b] = value for an override `a.b=value` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def env_overrides() -> list[str]:
    """Overrides handed down by `python -m bbo run` (JSON list in BBO_OVERRIDES), so the
    blackbox processes NOMAD starts see the same config as the command that started NOMAD."""
    text = os.environ.get("BBO_OVERRIDES", "").strip()
    if not text:
        return []
    try:
        items = json.loads(text)
    except ValueError:
        raise ConfigError(f"BBO_OVERRIDES: not a JSON list of key=value strings: {text!r}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"BBO_OVERRIDES: not a JSON list of key=value strings: {text!r}")
    return items


def one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def positive(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")
