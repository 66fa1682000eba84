"""The simulation configuration: one dataclass, settable from TOML and from flags.

Every field is a TOML key of the same name; ``strategy_options`` and ``fit`` are TOML
tables. Values are checked by type and range here, with messages that name the file
and the key; options of a strategy or fit settings are checked by their owners.
"""

from __future__ import annotations

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

PARTITIONS = ("iid", "dirichlet", "shards", "natural", "contiguous")
LOG_FORMATS = ("text", "json")
ATTACKS = ("none", "sign-flip", "scale", "random")  # simulated Byzantine nodes: runtime/attacks.py
COMPRESSIONS = ("none", "quantize", "topk", "topk+quantize")  # node→server updates: docs/compression.md
DP_MODES = ("none", "central", "local", "distributed")  # differential privacy: docs/privacy.md
S = TypeVar("S", bound="Settings")

# Limits that keep accepted values usable downstream: an infinite wait, or one beyond
# threading.TIMEOUT_MAX, raises OverflowError in the pools (30 days is far below that and
# far above any real round); gRPC caps one message below 2 GiB; the wire carries rounds
# as uint32; TOML's integers are 64-bit, and so are those a config holds.
MAX_WAIT_SECONDS = 30 * 86400.0
MAX_MESSAGE_MB = 2047.0
MIN_CHUNK_MB = 1 / 1024  # 1 KiB: smaller chunks round down to zero bytes
MAX_ROUNDS = 2**32 - 1
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # TOML's integers (and the wire's sint64)
_WAIT_RULE = f"in (0, {MAX_WAIT_SECONDS:,.0f}] (seconds; 30 days at most)"


def _show(value: Any, limit: int = 80) -> str:
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


def _is_bulk_setting(value: str) -> bool:
    if value in ("auto", "off"):
        return True
    host, sep, port = value.rpartition(":")
    return bool(sep and host) and port.isdigit() and int(port) <= 65535


def check_rules(obj: object, rules: list[tuple[str, bool, str]]) -> None:
    """Raise ConfigError for the first ``(field, holds, rule)`` that does not hold."""
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{name} must be {rule}, got {_show(getattr(obj, name))}")


class Settings:
    """TOML and flag handling shared by every settings dataclass below."""

    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any], source: str = "config") -> S:
        """Build from plain values (TOML or flags), checking names and types."""
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(_show(k) for k in values if k not in known)  # keys of any type sort as text
        if unknown:
            raise ConfigError(f"{source}: unknown setting {unknown[0]}; valid settings: {', '.join(known)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls: type[S], path: Path, overrides: Mapping[str, Any] | None = None) -> S:
        """Read a TOML file; ``overrides`` (from flags) win over the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start:,})") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except ValueError as exc:  # a path with a NUL byte
            raise ConfigError(f"cannot read config file {_show(str(path))}: {exc}") from None
        try:
            data = tomllib.loads(text)
        except ValueError as exc:  # TOMLDecodeError, or an integer over 4300 digits
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
        return cls.from_mapping({**data, **(overrides or {})}, source=str(path))

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes``, checked like :meth:`from_mapping` (unknown names too)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return type(self).from_mapping({**current, **changes}, source="replace")

    def _check_types(self) -> None:
        """Check each field's type (first thing in ``__post_init__``), widening ints to
        floats and copying tables and lists so later changes to the caller's cannot leak in."""
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            checked = _coerce(value, hint, name)
            if checked is not value:
                object.__setattr__(self, name, checked)

    def to_toml(self) -> str:
        values_of = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        lines = [f"{k} = {_toml_value(v)}" for k, v in values_of.items() if v is not None and not isinstance(v, dict)]
        for table in [k for k, v in values_of.items() if isinstance(v, dict)]:
            values = values_of[table]
            lines += ["", f"[{table}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunSettings(Settings):
    """Settings ``potluck simulate`` and ``potluck server`` share: monitoring, and the
    protections a run applies (compression, differential privacy, secure aggregation).
    Each command checks them with the same rules (``_monitoring_rules`` and the others)."""

    metrics_port: int | None = None  # serve Prometheus metrics on this port (0: any free one)
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"
    compression: str = "none"  # node→server update compression: none, quantize, topk, topk+quantize
    compression_bits: int = 8  # bits per value when compression quantizes (1–8)
    compression_ratio: float = 0.01  # fraction of entries topk sends
    dp: str = "none"  # differential privacy: none, central, local, distributed (docs/privacy.md)
    dp_noise_multiplier: float = 1.0  # σ: noise std is σ·C on the sum of a round's updates
    dp_clip: float = 1.0  # C: L2 norm each update is clipped to (the initial C when adaptive)
    dp_adaptive_clip: bool = False  # central only: move C toward dp_target_quantile of the norms
    dp_target_quantile: float = 0.5
    dp_delta: float = 1e-5  # δ at which ε is reported; must be below 1 / nodes
    dp_epsilon_budget: float = 0.0  # stop before ε would exceed this (0: no budget)
    secagg: bool = False  # secure aggregation: the server learns only the sum (docs/secure-aggregation.md)
    secagg_neighbours: int = 0  # k: neighbours each node masks with (even; 0: 2·⌈log2 n⌉)
    secagg_threshold: int = 0  # t: shares that rebuild a node's masks, > k/2 (0: ⌊k/2⌋ + 1)
    secagg_clip: float = 1.0  # c: each value is clipped to [−c, c] before quantising
    secagg_bits: int = 16  # b: bits per value; nodes per round · (2^b − 1) must stay below 2^32


@dataclass(frozen=True)
class SimulationConfig(RunSettings):
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
    attack: str = "none"
    attack_fraction: float = 0.0
    run_dir: str | None = None
    secagg_dropout: float = 0.0  # simulation: fraction of a round's nodes that drop out of secure aggregation
    secagg_dropout_at: str = "unmask"  # when they drop: masked-input (before sending it) or unmask (after)

    def __post_init__(self) -> None:
        self._check_types()
        rules: list[tuple[str, bool, str]] = [
            ("nodes", self.nodes >= 1, "≥ 1"),
            ("rounds", self.rounds >= 1, "≥ 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("min_nodes", 1 <= self.min_nodes <= self.nodes, f"in [1, nodes={_show(self.nodes)}]"),
            ("quorum", 0 < self.quorum <= 1, "in (0, 1]"),
            ("round_timeout", 0 < self.round_timeout <= MAX_WAIT_SECONDS, _WAIT_RULE),
            ("max_retries", self.max_retries >= 0, "≥ 0"),
            ("partition", self.partition in PARTITIONS, f"one of {', '.join(PARTITIONS)}"),
            ("alpha", self.alpha > 0 and math.isfinite(self.alpha), "a finite number > 0"),
            ("workers", self.workers >= 0, "≥ 0 (0: one per core, 1: in-process)"),
            ("test_fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
            ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
            ("federated_eval_every", self.federated_eval_every >= 0, "≥ 0"),
            ("seed", self.seed >= 0, "≥ 0"),
            ("attack", self.attack in ATTACKS, f"one of {', '.join(ATTACKS)}"),
            ("attack_fraction", 0 <= self.attack_fraction <= 1, "in [0, 1]"),
            ("attack_fraction", self.attack != "none" or self.attack_fraction == 0,
             "0 when attack is none (choose an attack too)"),
            ("attack_fraction", self.attack == "none" or self.attack_fraction * self.nodes >= 0.5,
             f"large enough for at least one of the {_show(self.nodes)} nodes to attack (≥ 0.5 / nodes) "
             f"when attack is {_show(self.attack)}"),
        ]
        check_rules(self, rules + _monitoring_rules(self) + _compression_rules(self) + _privacy_rules(self, self.nodes)
                    + _secagg_rules(self, self.nodes))


def _compression_rules(c: SimulationConfig | ServerConfig) -> list[tuple[str, bool, str]]:
    """Rules for node→server update compression, the same for simulate and server.

    A bits or ratio setting that the chosen compression would not use is refused, so a
    forgotten ``compression`` cannot silently leave updates uncompressed."""
    quantizes, sparsifies = c.compression in ("quantize", "topk+quantize"), c.compression.startswith("topk")
    return [
        ("compression", c.compression in COMPRESSIONS, f"one of {', '.join(COMPRESSIONS)}"),
        ("compression_bits", 1 <= c.compression_bits <= 8, "in [1, 8]"),
        ("compression_ratio", 0 < c.compression_ratio <= 1, "in (0, 1]"),
        ("compression_bits", quantizes or c.compression_bits == 8,
         f"left at 8 unless compression quantizes (quantize, topk+quantize); compression is {_show(c.compression)}"),
        ("compression_ratio", sparsifies or c.compression_ratio == 0.01,
         f"left at 0.01 unless compression is topk or topk+quantize; compression is {_show(c.compression)}"),
    ]


def _privacy_rules(c: SimulationConfig | ServerConfig, population: int) -> list[tuple[str, bool, str]]:
    """Rules for differential privacy (docs/privacy.md), the same for simulate and server;
    ``population`` is the number of nodes in the federation.

    A dp_* setting given while ``dp`` is none is refused, so a forgotten ``dp`` cannot
    silently leave a run without privacy."""
    on = c.dp != "none"
    rules = [
        ("dp", c.dp in DP_MODES, f"one of {', '.join(DP_MODES)}"),
        ("dp_noise_multiplier", 0 < c.dp_noise_multiplier < math.inf, "a finite number > 0"),
        ("dp_clip", 0 < c.dp_clip < math.inf, "a finite number > 0"),
        ("dp_target_quantile", 0 < c.dp_target_quantile < 1, "in (0, 1)"),
        ("dp_delta", 0 < c.dp_delta < 1, "in (0, 1)"),
        ("dp_epsilon_budget", 0 <= c.dp_epsilon_budget < math.inf, "a finite number ≥ 0 (0: no budget)"),
        ("dp_adaptive_clip", not c.dp_adaptive_clip or c.dp == "central", f"false unless dp is central; dp is {_show(c.dp)}"),
        ("dp_target_quantile", c.dp_adaptive_clip or c.dp_target_quantile == 0.5,
         "left at 0.5 unless dp_adaptive_clip is true"),
        ("dp_delta", not on or c.dp_delta * population < 1,
         f"below 1 / nodes = 1 / {_show(population)} (a δ of 1/nodes allows one node's data to leak whole)"),
    ]
    for f in fields(c):
        if f.name.startswith("dp_") and not on:
            rules.append((f.name, getattr(c, f.name) == f.default,
                          f"left at {_show(f.default)} unless dp is set (central, local or distributed)"))
    return rules


SECAGG_DROPOUT_AT = ("masked-input", "unmask")


def _secagg_rules(c: SimulationConfig | ServerConfig, population: int | None) -> list[tuple[str, bool, str]]:
    """Rules for secure aggregation (docs/secure-aggregation.md); ``population``: nodes in
    the federation when known (simulate), for the no-wrap check n·(2^b − 1) < 2^32.

    A secagg_* setting given while ``secagg`` is false is refused, like dp_*."""
    k, t = c.secagg_neighbours, c.secagg_threshold
    rules = [
        ("secagg_neighbours", k >= 0, "≥ 0 (0: automatic)"),
        ("secagg_threshold", t >= 0, "≥ 0 (0: automatic)"),
        ("secagg_threshold", not (k and t) or k / 2 < t <= k,
         f"above half of secagg_neighbours and at most it ({_show(k)}), so the server can never unmask one update"),
        ("secagg_clip", 0 < c.secagg_clip < math.inf, "a finite number > 0"),
        ("secagg_bits", 1 <= c.secagg_bits <= 31, "in [1, 31]"),
        ("secagg_bits", population is None or population * (2**c.secagg_bits - 1) < 2**32,
         f"small enough that the sum of {_show(population)} values cannot wrap around 2^32 "
         f"(nodes · (2^bits − 1) < 2^32)"),
        ("secagg", not c.secagg or c.compression == "none",
         f"false when compression is set (a masked update cannot be compressed); compression is {_show(c.compression)}"),
        ("secagg", not c.secagg or c.dp in ("none", "local", "distributed"),
         "false with dp = central (the server cannot clip updates it cannot see); use dp = distributed"),
    ]
    if isinstance(c, SimulationConfig):
        rules += [
            ("secagg_dropout", 0 <= c.secagg_dropout < 1, "in [0, 1)"),
            ("secagg_dropout_at", c.secagg_dropout_at in SECAGG_DROPOUT_AT, f"one of {', '.join(SECAGG_DROPOUT_AT)}"),
        ]
    for f in fields(c):
        if f.name.startswith("secagg_") and not c.secagg:
            rules.append((f.name, getattr(c, f.name) == f.default, f"left at {_show(f.default)} unless secagg is true"))
    return rules


def _monitoring_rules(c: SimulationConfig | ServerConfig) -> list[tuple[str, bool, str]]:
    """Rules for the settings every command that runs rounds shares: metrics and logs."""
    return [
        ("metrics_port", c.metrics_port is None or 0 <= c.metrics_port <= 65535, "in [0, 65535] (0: any free port)"),
        ("metrics_host", bool(c.metrics_host.strip()), "a host name or address, e.g. 127.0.0.1"),
        ("log_format", c.log_format in LOG_FORMATS, f"one of {', '.join(LOG_FORMATS)}"),
    ]


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
        raise ConfigError(f"{where} must be valid UTF-8 text, got {_show(value)}") from None
    return value


def _int64(value: int, where: str) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise ConfigError(f"{where} must be a 64-bit integer (−2**63 … 2**63 − 1), got {_show(value)}")
    return value


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
            raise ConfigError(f"{where} must be a table, got {_show(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} keys must be strings, got {_show(key)}")
            _text(key, f"{where} key")
            # a plain key as TOML writes it (fit.lr), anything else quoted (fit['a\nb'])
            name = f"{where}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else f"{where}[{_show(key)}]"
            if not isinstance(item, (bool, int, float, str)):
                raise ConfigError(f"{name} must be a number, string or boolean, got {_show(item)}")
            if isinstance(item, str):
                _text(item, name)
            elif isinstance(item, int):
                _int64(item, name)
        return dict(value)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {_show(value)}")
        return [_text(v, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {_show(value)}")
        return _int64(value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_show(value)}")
        try:
            return value if type(value) is float else float(value)
        except OverflowError:
            raise ConfigError(f"{where} is too large for a number, got {_show(value)}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_show(value)}")
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


@dataclass(frozen=True)
class ServerConfig(RunSettings):
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
    bulk: str = "auto"  # the bulk lane for payloads: auto (gRPC port + 1), off, or HOST:PORT
    federated_eval_every: int = 0
    dp_nodes: int | None = None  # nodes in the federation, for DP accounting (default: min_nodes)

    def __post_init__(self) -> None:
        self._check_types()
        rules: list[tuple[str, bool, str]] = [
            ("bind", ":" in self.bind, "host:port"),
            ("rounds", 1 <= self.rounds <= MAX_ROUNDS, f"in [1, {MAX_ROUNDS}]"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("min_nodes", self.min_nodes >= 1, "≥ 1"),
            ("quorum", 0 < self.quorum <= 1, "in (0, 1]"),
            ("round_timeout", 0 < self.round_timeout <= MAX_WAIT_SECONDS, _WAIT_RULE),
            ("max_retries", self.max_retries >= 0, "≥ 0"),
            ("wait_for_nodes", 0 < self.wait_for_nodes <= MAX_WAIT_SECONDS, _WAIT_RULE),
            ("test_fraction", 0 <= self.test_fraction < 1, "in [0, 1)"),
            ("heartbeat_seconds", 0 < self.heartbeat_seconds <= MAX_WAIT_SECONDS, _WAIT_RULE),
            ("max_message_mb", 0 < self.max_message_mb <= MAX_MESSAGE_MB, f"in (0, {MAX_MESSAGE_MB:g}] (gRPC's limit)"),
            ("chunk_mb", MIN_CHUNK_MB <= self.chunk_mb < self.max_message_mb,
             f"≥ {MIN_CHUNK_MB} (1 KiB) and below max_message_mb ({self.max_message_mb})"),
            ("max_payload_mb", 0 < self.max_payload_mb < math.inf, "a finite number > 0"),
            ("bulk", _is_bulk_setting(self.bulk), "auto, off or HOST:PORT (port 0–65535)"),
            ("federated_eval_every", self.federated_eval_every >= 0, "≥ 0"),
            ("seed", self.seed >= 0, "≥ 0"),
            ("dp_nodes", self.dp_nodes is None or self.dp_nodes >= self.min_nodes,
             f"≥ min_nodes ({_show(self.min_nodes)}); it defaults to min_nodes"),
        ]
        population = self.dp_nodes or self.min_nodes
        check_rules(self, rules + _monitoring_rules(self) + _compression_rules(self) + _privacy_rules(self, population)
                    + _secagg_rules(self, None))
