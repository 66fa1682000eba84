"""How a setting is declared once, and how declared settings load, check and print.

A setting is a dataclass field made by :func:`setting`: its type (the annotation), its
default, its rule, its help text and whether a resumed run may change it live in that
one declaration. Commands derive their flags from it (``potluck.cli.options``), TOML
files use the field's name as their key, and resumption asks :func:`resume_conflicts`.

Sections (``core/sections.py``) are small frozen dataclasses of such fields; a
command's configuration (``core/config.py``) inherits the sections it uses. Checks run
in three steps, each stopping at the first failure: every field's type, every field's
own rule, then the rules that relate fields (``_rules`` of each section, in order).
"""

from __future__ import annotations

import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any, TypeVar

from potluck.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

S = TypeVar("S", bound="Settings")
Rule = tuple[str, bool, str]  # (field, holds, what it must be)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # TOML's integers (and the wire's sint64)


def setting(default: Any, help: str, *, resumable: bool, check: Callable[[Any], bool] | None = None,
            rule: str = "", shown: str | None = None, flag: str | None = None, short: str | None = None,
            metavar: str | None = None) -> Any:
    """A settings field: ``check(value)`` must hold for the field alone (``rule`` says
    what it must be); ``resumable``: a resumed run may use another value. ``shown`` is
    the default as ``--help`` prints it (default: the value); ``flag``, ``short`` and
    ``metavar`` name the command-line option when its name is not the field's."""
    meta = {"help": help, "resumable": resumable, "check": check, "rule": rule, "shown": shown, "flag": flag,
            "short": short, "metavar": metavar}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: Field[Any]) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def show(value: Any, limit: int = 80) -> str:
    """A short ``repr`` for error messages: never fails, never floods the one line.

    Python refuses ``repr`` of ints over 4300 digits (and of containers holding them),
    so huge integers are shown by their size instead.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"a{' negative' if value < 0 else ''} {value.bit_length()}-bit integer"
    try:
        text = repr(value)
    except ValueError:
        text = f"a {type(value).__name__} holding a huge integer"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_rules(obj: object, rules: list[Rule]) -> None:
    """Raise ConfigError for the first ``(field, holds, rule)`` that does not hold."""
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{name} must be {rule}, got {show(getattr(obj, name))}")


def resume_conflicts(stored: Settings, current: Settings) -> list[str]:
    """The settings a resumed run changed but may not (``resumable=False``), in order."""
    return [f.name for f in fields(current)  # type: ignore[arg-type]
            if not f.metadata.get("resumable", False) and getattr(stored, f.name) != getattr(current, f.name)]


def resumable_names(cls: type[Settings]) -> list[str]:
    return [f.name for f in fields(cls) if f.metadata.get("resumable", False)]  # type: ignore[arg-type]


class Settings:
    """Loading, checking and printing shared by every section and configuration."""

    def __post_init__(self) -> None:
        self._check_types()
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                check_rules(self, [(f.name, bool(check(getattr(self, f.name))), f.metadata["rule"])])
        for cls in reversed(type(self).__mro__):
            own = vars(cls).get("_rules")
            if own is not None:
                check_rules(self, own(self))

    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any], source: str = "config") -> S:
        """Build from plain values (TOML or flags), checking names and types."""
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(show(k) for k in values if k not in known)  # keys of any type sort as text
        if unknown:
            raise ConfigError(f"{source}: unknown setting {unknown[0]}; valid settings: {', '.join(known)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls: type[S], path: Path, overrides: Mapping[str, Any] | None = None,
             defaults: Mapping[str, Any] | None = None) -> S:
        """Read a TOML file; ``overrides`` (from flags) win over the file, the file over ``defaults``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start:,})") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except ValueError as exc:  # a path with a NUL byte
            raise ConfigError(f"cannot read config file {show(str(path))}: {exc}") from None
        try:
            data = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer over 4300 digits
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
        return cls.from_mapping({**(defaults or {}), **data, **(overrides or {})}, source=str(path))

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes``, checked like :meth:`from_mapping` (unknown names too)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return type(self).from_mapping({**current, **changes}, source="replace")

    def _check_types(self) -> None:
        """Check each field's type, widening ints to floats and copying tables and lists
        so later changes to the caller's cannot leak in."""
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            checked = _coerce(value, hint, name)
            if checked is not value:
                object.__setattr__(self, name, checked)

    def to_argv(self) -> list[str]:
        """The flags that give this configuration to the command it belongs to: one per
        setting that differs from its default (``potluck up`` starts its server so)."""
        argv: list[str] = []
        for f in fields(self):  # type: ignore[arg-type]
            value, flag = getattr(self, f.name), f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if value == default_of(f):
                continue
            if isinstance(value, bool):  # a switch turns a setting on; every switch is off by default
                argv.append(flag)
            elif isinstance(value, dict):
                argv += [item for k, v in value.items() for item in (flag, f"{k}={_toml_value(v)}")]
            elif isinstance(value, list):
                argv += [item for v in value for item in (flag, v)]
            else:
                argv += [flag, str(value)]
        return argv

    def to_toml(self) -> str:
        values_of = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        lines = [f"{k} = {_toml_value(v)}" for k, v in values_of.items() if v is not None and not isinstance(v, dict)]
        for table in [k for k, v in values_of.items() if isinstance(v, dict)]:
            values = values_of[table]
            lines += ["", f"[{table}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


def _hints(cls: type) -> dict[str, Any]:
    """Field name → type hint (cached: checked on every construction)."""
    hints = _HINTS.get(cls)
    if hints is None:
        names = {f.name for f in fields(cls)}
        hints = _HINTS[cls] = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
    return hints


_HINTS: dict[type, dict[str, Any]] = {}


def _text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where} must be valid UTF-8 text, got {show(value)}") from None
    return value


def _int64(value: int, where: str) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise ConfigError(f"{where} must be a 64-bit integer (−2**63 … 2**63 − 1), got {show(value)}")
    return value


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {show(value)}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where} keys must be strings, got {show(key)}")
        _text(key, f"{where} key")
        # a plain key as TOML writes it (fit.lr), anything else quoted (fit['a\nb'])
        name = f"{where}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else f"{where}[{show(key)}]"
        if not isinstance(item, (bool, int, float, str)):
            raise ConfigError(f"{name} must be a number, string or boolean, got {show(item)}")
        if isinstance(item, str):
            _text(item, name)
        elif isinstance(item, int):
            _int64(item, name)
    return dict(value)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict or hint is dict:
        return _table(value, where)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {show(value)}")
        return [_text(v, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {show(value)}")
        return _int64(value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {show(value)}")
        try:
            return value if type(value) is float else float(value)
        except OverflowError:
            raise ConfigError(f"{where} is too large for a number, got {show(value)}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {show(value)}")
        return _text(value, where)
    raise ConfigError(f"{where}: unsupported setting type {hint}")  # pragma: no cover


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    # A JSON string is a TOML basic string once DEL, which JSON leaves raw, is escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
