"""Typed configuration: dataclasses with defaults, loaded from TOML, overridden on the command line.

A config is a dataclass whose fields are sections (dataclasses themselves) of scalar options.
Each option is declared with :func:`option`, whose ``help`` text doubles as ``--help``.
Overrides are written ``--section.key=value`` (or ``--section.key value``). An unknown key, a
value of the wrong type or one outside its choices raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from thrifty.errors import ConfigError

T = TypeVar("T")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A config field with its help text and, optionally, the values it may take."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def section(cls: type) -> Any:
    """A config field holding a sub-dataclass, built with its own defaults."""
    return dataclasses.field(default_factory=cls)


def _field_types(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, kind: type, from_text: bool) -> Any:
    """Turn ``value`` (parsed TOML, or command-line text) into ``kind`` or raise naming ``key``."""
    if from_text:
        text = str(value).strip()
        try:
            if kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError
            if kind is int:
                return int(text.replace("_", ""))
            if kind is float:
                return float(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got {text!r}") from None
        return text
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _build(cls: type[T], data: dict[str, Any], prefix: str, from_text: set[str]) -> T:
    types = _field_types(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown config key {prefix}{key}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        kind = types[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table")
            kwargs[name] = _build(kind, value, f"{key}.", from_text)
            continue
        coerced = _coerce(key, value, kind, key in from_text)
        choices = known[name].metadata.get("choices")
        if choices and coerced not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {coerced!r}")
        kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from already-parsed values (a TOML table, a saved config)."""
    return _build(cls, data, "", set())


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--train.lr=3e-4", "--model.n_layer", "6"]`` -> ``{"train.lr": "3e-4", ...}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unrecognised argument {arg}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(args):
            key, value = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg[2:]}: missing value")
        out[key] = value
        i += 1
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: dict[str, str] | None = None) -> T:
    """Defaults of ``cls``, then the TOML file at ``path``, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    overrides = overrides or {}
    for dotted, value in overrides.items():
        *sections, leaf = dotted.split(".")
        table = data
        for name in sections:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"unknown config key {dotted}")
        table[leaf] = value
    return _build(cls, data, "", set(overrides))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump(config: Any) -> str:
    """The config as TOML text that :func:`load` reads back to an equal config."""
    return tomli_w.dumps(to_dict(config))


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """One line per option: ``--section.key=DEFAULT  help [choices]``."""
    lines = []
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        kind = types[f.name]
        if dataclasses.is_dataclass(kind):
            lines.append(f"[{prefix}{f.name}]")
            lines.extend(help_lines(kind, f"{prefix}{f.name}."))
            continue
        default = f.default
        shown = str(default).lower() if isinstance(default, bool) else repr(default)
        text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            text += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        lines.append(f"  --{prefix}{f.name}={shown}".ljust(36) + f" {text}")
    return lines
