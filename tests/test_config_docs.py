"""docs/experiments.md's block of all experiment.yaml keys against the config's dataclasses: every key
is documented, every documented key exists, the block is a valid config, and each documented value is
the field's default (but for the examples: EXAMPLES). Every field carries its help text, which an
unknown key's error quotes for the nearest key."""
import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, ExperimentConfig, from_dict

REPO = Path(__file__).resolve().parent.parent
# values that are examples, not defaults: required keys, the sources and constraints (lists of examples), the space
EXAMPLES = ("name", "model.path", "data.sources", "objective.constraints", "space")


def _documented() -> dict:
    """The ```yaml block of docs/experiments.md's section "experiment.yaml", as a mapping."""
    text = (REPO / "docs" / "experiments.md").read_text()
    section = text.split("\n## experiment.yaml\n", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def _section_class(hint):
    """The dataclass a field holds: itself, or the one in `X | None` and `list[X]`; None for plain values."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType, list):
        return next((c for c in map(_section_class, typing.get_args(hint)) if c), None)
    return None


def _fields(cls, prefix="") -> dict:
    """Dotted key -> Field of every field of `cls`, nested sections (and list items' fields) included."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        out[prefix + f.name] = f
        inner = _section_class(hints[f.name])
        if inner:
            out.update(_fields(inner, f"{prefix}{f.name}."))
    return out


def _keys(node, cls, prefix="") -> set:
    """Dotted keys of a documented mapping, descending where the config has a section (or a list of them)."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for name, value in node.items():
        keys.add(prefix + name)
        inner = _section_class(hints[name]) if name in hints else None
        for item in (value if isinstance(value, list) else [value]) if inner else []:
            if isinstance(item, dict):
                keys |= _keys(item, inner, f"{prefix}{name}.")
    return keys


def _example(key: str) -> bool:
    return any(key == e or key.startswith(e + ".") for e in EXAMPLES)


def test_every_key_is_documented_and_every_documented_key_exists():
    config_keys = set(_fields(ExperimentConfig))
    doc_keys = _keys(_documented(), ExperimentConfig)
    doc_keys = {k for k in doc_keys if not k.startswith("space.")}  # the hyperparameters: core/space.py's
    assert not config_keys - doc_keys, f"keys missing in docs/experiments.md: {sorted(config_keys - doc_keys)}"
    assert not doc_keys - config_keys, f"documented keys the config does not have: {sorted(doc_keys - config_keys)}"


def test_the_documented_values_are_the_defaults():
    built = from_dict(_documented())  # a valid config, read as experiment.yaml is
    fields = _fields(ExperimentConfig)
    wrong = []
    for key, f in fields.items():
        section = any(k.startswith(key + ".") for k in fields)  # its own keys are compared
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if _example(key) or section or required:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = built
        for part in key.split("."):
            value = getattr(value, part)
        if value != default:
            wrong.append(f"{key}: documented {value!r}, default {default!r}")
    assert not wrong, "docs/experiments.md differs from the defaults:\n" + "\n".join(wrong)


def test_every_field_has_its_help():
    missing = [key for key, f in _fields(ExperimentConfig).items() if not f.metadata.get("help", "").strip()]
    assert not missing, f"fields without metadata['help']: {missing}"


def test_an_unknown_key_names_the_nearest_key_and_its_help():
    raw = _documented()
    raw["train"]["epochz"] = 2
    with pytest.raises(ConfigError, match=r"^train\.epochz: unknown key \(known: epochs, .*\); did you mean "
                                          r"epochs: passes over the training split"):
        from_dict(raw)
