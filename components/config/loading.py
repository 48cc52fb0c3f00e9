"""Reading ``params.yaml`` sections into their frozen dataclasses.

``params.yaml`` holds one top-level section per stage; :func:`load_section` turns a section into its
dataclass (``components/config/<section>.py``) and refuses unknown keys and values of the wrong type, naming
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
log = logging.getLogger(__name__)

RENAMED_SECTIONS: dict[str, str] = {"ppo": "policy"}
"""Sections renamed since an earlier release, old name -> new name. A params file that still uses the old name is
read as the new one, with a warning; both at once is an error; asking for the old name is an error naming the new."""


class ConfigError(ValueError):
    """A params file or section that does not match its dataclass."""


def read_params(path: Path) -> dict[str, Any]:
    """Read a params YAML file into a dict; a missing or malformed file is a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root, or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        choices = ", ".join(repr(a) for a in get_args(tp))
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, item_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, f"{key} key"): _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def from_dict(cls: type[T], values: dict[str, Any] | None, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``values``; unknown keys and wrong types raise ``ConfigError``."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {values!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known keys: {known})")
    kwargs = {name: _coerce(v, hints[name], f"{prefix}{name}") for name, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc
    return obj


def read_section(raw: dict[str, Any], section: str) -> Any:
    """The mapping of ``section`` in a read params file, also where the file still uses its old name."""
    old = next((o for o, new in RENAMED_SECTIONS.items() if new == section), None)
    if old is None or old not in raw:
        return raw.get(section)
    if section in raw:
        raise ConfigError(f"params have both {old!r} and {section!r}: {old!r} is the old name of {section!r}; keep one")
    log.warning(
        "params section %r is now called %r: read as %r (rename it in params.yaml and dvc.yaml)", old, section, section
    )
    return raw[old]


def load_section(cls: type[T], section: str, params: Path | dict[str, Any]) -> T:
    """Load the ``section`` of a params file (or an already-read dict) as ``cls``."""
    if section in RENAMED_SECTIONS:
        raise ConfigError(f"params section {section!r} is now called {RENAMED_SECTIONS[section]!r}: load that one")
    raw = read_params(params) if isinstance(params, (str, Path)) else params
    return from_dict(cls, read_section(raw, section), prefix=f"{section}.")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}
