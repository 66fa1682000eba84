"""The simulation configuration: one dataclass, settable from TOML and from flags.

Every field is a TOML key of the same name; ``strategy_options`` and ``fit`` are TOML
tables. Values are checked by type and range here, with messages that name the file
and the key; options of a strategy or fit settings are checked by their owners.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from potluck.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

PARTITIONS = ("iid", "dirichlet", "shards", "natural")
S = TypeVar("S", bound="Settings")


def check_rules(obj: object, rules: list[tuple[str, bool, str]]) -> None:
    """Raise ConfigError for the first ``(field, holds, rule)`` that does not hold."""
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{name} must be {rule}, got {getattr(obj, name)!r}")


class Settings:
    """TOML and flag handling shared by every settings dataclass below."""

    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any], source: str = "config") -> S:
        """Build from plain values (TOML or flags), checking names and types."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}; valid settings: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        checked = {name: _coerce(value, hints[name], f"{source}: {name}") for name, value in values.items()}
        try:
            return cls(**checked)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls: type[S], path: Path, overrides: Mapping[str, Any] | None = None) -> S:
        """Read a TOML file; ``overrides`` (from flags) win over the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        return cls.from_mapping({**data, **(overrides or {})}, source=str(path))

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_toml(self) -> str:
        values_of = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        lines = [f"{k} = {_toml_value(v)}" for k, v in values_of.items() if v is not None and not isinstance(v, dict)]
        for table in [k for k, v in values_of.items() if isinstance(v, dict)]:
            values = values_of[table]
            lines += ["", f"[{table}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SimulationConfig(Settings):
    """All settings of ``potluck simulate`` (see ``potluck simulate --help``)."""

    task: str = "digits"
    data_path: str | None = None
    label_column: str = "label"
    group_column: str | None = None
    nodes: int = 10
    rounds: int = 30
    fraction: float = 1.0
    min_nodes: int = 1
    quorum: float = 0.5
    round_timeout: float = 600.0
    max_retries: int = 2
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    partition: str = "dirichlet"
    alpha: float = 0.5
    seed: int = 0
    workers: int = 1
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    federated_eval_every: int = 0
    run_dir: str | None = None

    def __post_init__(self) -> None:
        rules: list[tuple[str, bool, str]] = [
            ("nodes", self.nodes >= 1, "≥ 1"),
            ("rounds", self.rounds >= 1, "≥ 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("min_nodes", 1 <= self.min_nodes <= self.nodes, f"in [1, nodes={self.nodes}]"),
            ("quorum", 0 < self.quorum <= 1, "in (0, 1]"),
            ("round_timeout", self.round_timeout > 0, "> 0 (seconds)"),
            ("max_retries", self.max_retries >= 0, "≥ 0"),
            ("partition", self.partition in PARTITIONS, f"one of {', '.join(PARTITIONS)}"),
            ("alpha", self.alpha > 0 and math.isfinite(self.alpha), "a finite number > 0"),
            ("workers", self.workers >= 0, "≥ 0 (0: one per core, 1: in-process)"),
            ("test_fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("federated_eval_every", self.federated_eval_every >= 0, "≥ 0"),
        ]
        check_rules(self, rules)

def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        for key, item in value.items():
            if not isinstance(item, (bool, int, float, str)):
                raise ConfigError(f"{where}.{key} must be a number, string or boolean, got {item!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint}")  # pragma: no cover


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    # A JSON string is a TOML basic string once DEL, which JSON leaves raw, is escaped too.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


@dataclass(frozen=True)
class ServerConfig(Settings):
    """All settings of ``potluck server`` (see ``potluck server --help``).

    ``data_path`` is held-out data the server evaluates on (and learns the model's input
    shape from); without it, a task with bundled data holds out ``test_fraction`` of it.
    """

    bind: str = "127.0.0.1:7450"
    tls_dir: str = "tls"
    insecure: bool = False
    run_dir: str = "runs/server"
    task: str = "digits"
    data_path: str | None = None
    test_fraction: float = 0.2
    rounds: int = 30
    fraction: float = 1.0
    min_nodes: int = 2
    quorum: float = 0.5
    round_timeout: float = 120.0
    max_retries: int = 2
    wait_for_nodes: float = 600.0
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    allow: list[str] | None = None
    heartbeat_seconds: float = 2.0
    max_message_mb: float = 8.0
    chunk_mb: float = 2.0
    max_payload_mb: float = 2048.0
    federated_eval_every: int = 0

    def __post_init__(self) -> None:
        rules: list[tuple[str, bool, str]] = [
            ("bind", ":" in self.bind, "host:port"),
            ("rounds", self.rounds >= 1, "≥ 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("min_nodes", self.min_nodes >= 1, "≥ 1"),
            ("quorum", 0 < self.quorum <= 1, "in (0, 1]"),
            ("round_timeout", self.round_timeout > 0, "> 0 (seconds)"),
            ("max_retries", self.max_retries >= 0, "≥ 0"),
            ("wait_for_nodes", self.wait_for_nodes > 0, "> 0 (seconds)"),
            ("test_fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
            ("heartbeat_seconds", self.heartbeat_seconds > 0, "> 0"),
            ("chunk_mb", 0 < self.chunk_mb < self.max_message_mb, f"> 0 and below max_message_mb ({self.max_message_mb})"),
            ("max_payload_mb", self.max_payload_mb > 0, "> 0"),
            ("federated_eval_every", self.federated_eval_every >= 0, "≥ 0"),
        ]
        check_rules(self, rules)
