"""FedAvg, FedAvgM and FedProx, plus the option tables every strategy declares.

All three aggregate with the weighted mean Δ = Σ nᵢ·dᵢ / Σ nᵢ of the nodes' deltas
(``dᵢ = localᵢ − global``, ``nᵢ`` examples) and differ in the server step:

=========  ==========================================  ==================================
strategy   server step                                 reference
=========  ==========================================  ==================================
fedavg     x ← x + η·Δ                                 McMahan et al. 2017
fedavgm    v ← β·v − Δ;  x ← x − η·v                   Hsu et al. 2019 (as in Flower)
fedprox    as fedavg; nodes add (μ/2)·‖w − x‖²          Li et al. 2020
=========  ==========================================  ==================================

Arrays that are not floating point (integer counters such as BatchNorm's
``num_batches_tracked``) always take ``x + Δ``, Δ being their rounded mean delta,
whatever the strategy: learning rates and momentum apply to float arrays only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from potluck.core.errors import ConfigError, SchemaMismatch, StrategyError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind
from potluck.strategies.aggregate import WeightedMean
from potluck.strategies.base import Aggregator, Strategy

# -- declarative options ------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A range rule for a numeric option: ``test`` must hold; ``requirement`` says it."""

    requirement: str
    test: Callable[[float], bool]


POSITIVE = Check("must be > 0", lambda v: v > 0)
NON_NEGATIVE = Check("must be >= 0", lambda v: v >= 0)
UNIT_INTERVAL = Check("must be in [0, 1)", lambda v: 0 <= v < 1)


@dataclass(frozen=True)
class Option:
    """One numeric option of a strategy: its name, default, valid range and meaning."""

    name: str
    default: float
    check: Check
    description: str


def resolve_options(strategy: str, table: Sequence[Option], given: Mapping[str, object]) -> dict[str, float]:
    """Every option of ``table``, from ``given`` or its default, checked.

    Raises ``ConfigError`` naming the strategy and option for an unknown name, a value
    that is not a real number (``bool`` is not one), a non-finite value or one out of
    range, e.g. ``strategy fedadam: option beta1 must be in [0, 1), got 1.5``.
    """
    known = {opt.name: opt for opt in table}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"strategy {strategy}: unknown option {unknown[0]!r}; valid options: {valid}")
    out: dict[str, float] = {}
    for opt in table:
        value = given.get(opt.name, opt.default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"strategy {strategy}: option {opt.name} must be a number, "
                f"got {value!r} ({type(value).__name__})"
            )
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"strategy {strategy}: option {opt.name} must be finite, got {value!r}")
        if not opt.check.test(number):
            raise ConfigError(f"strategy {strategy}: option {opt.name} {opt.check.requirement}, got {value!r}")
        out[opt.name] = number
    return out


SERVER_LR_1 = Option("server_lr", 1.0, POSITIVE, "server learning rate η: x ← x + η·Δ")

# -- shared server-step helpers -------------------------------------------------------


def check_aggregate(strategy: str, global_params: Params, aggregate: Params) -> None:
    """Raise unless ``aggregate`` is a DELTA with the schema of ``global_params``."""
    if aggregate.kind is not ParamsKind.DELTA:
        raise StrategyError(f"strategy {strategy}: the aggregate must be a delta, got {aggregate.kind.value}")
    aggregate.check_schema(global_params.schema, what=f"strategy {strategy}: aggregate")


def add_delta(x: np.ndarray, delta: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A new array ``x + scale·delta`` in ``x``'s dtype (``scale`` ignored for non-floats)."""
    out = np.empty_like(x)
    if x.dtype.kind != "f" or scale == 1.0:
        np.add(x, delta, out=out)
    else:
        np.multiply(delta, x.dtype.type(scale), out=out)
        np.add(out, x, out=out)
    return out


def state_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype of server optimizer state for a float array: at least float32."""
    return np.dtype(np.promote_types(dtype, np.float32))


def check_state_fits(strategy: str, state: Mapping[str, np.ndarray], prefix: str, global_params: Params) -> None:
    """Raise ``SchemaMismatch`` unless ``state`` has one array per float array of the model."""
    want = {f"{prefix}{name}": arr for name, arr in global_params.items() if arr.dtype.kind == "f"}
    have = {key for key in state if key.startswith(prefix)}
    if have != set(want):
        raise SchemaMismatch(
            f"strategy {strategy}: state {prefix}* holds {sorted(have)}, the model needs {sorted(want)}"
        )
    for key, arr in want.items():
        if state[key].shape != arr.shape or state[key].dtype != state_dtype(arr.dtype):
            raise SchemaMismatch(
                f"strategy {strategy}: state {key!r} is {state[key].dtype}{list(state[key].shape)}, "
                f"the model needs {state_dtype(arr.dtype)}{list(arr.shape)}"
            )


def load_prefixed(strategy: str, state: Mapping[str, np.ndarray], prefixes: Sequence[str]) -> dict[str, np.ndarray]:
    """Writable float copies of ``state``; raise ``StrategyError`` for keys without a prefix."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not any(key.startswith(p) and len(key) > len(p) for p in prefixes):
            raise StrategyError(f"strategy {strategy}: unexpected state key {key!r}; keys start with {list(prefixes)}")
        arr = np.array(value, copy=True)
        if arr.dtype.kind != "f":
            raise StrategyError(f"strategy {strategy}: state {key!r} must be floating point, got {arr.dtype}")
        if not np.isfinite(arr).all():
            raise StrategyError(f"strategy {strategy}: state {key!r} holds NaN/Inf")
        out[key] = arr
    return out


def _frozen_copies(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, arr in state.items():
        copy = arr.copy()
        copy.setflags(write=False)
        out[key] = copy
    return out


# -- strategies -----------------------------------------------------------------------


class FedAvg(Strategy):
    """Federated averaging: the next global model is ``x + η·Δ``.

    With the default ``server_lr`` η = 1 the new model is the example-weighted average
    of the nodes' local models. Stateless.
    """

    name: ClassVar[str] = "fedavg"
    options: ClassVar[tuple[Option, ...]] = (SERVER_LR_1,)

    def __init__(self, *, server_lr: float = 1.0) -> None:
        self.server_lr = resolve_options(self.name, self.options, {"server_lr": server_lr})["server_lr"]

    def new_aggregator(self, global_params: Params) -> Aggregator:
        """A :class:`WeightedMean` that accepts only updates with the global schema."""
        return WeightedMean(schema=global_params.schema)

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """``x + η·Δ`` as FULL params in the global dtypes; raises if Δ does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        out = {name: add_delta(x, aggregate[name], self.server_lr) for name, x in global_params.items()}
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)


class FedProx(FedAvg):
    """FedAvg on the server; nodes add the proximal term (μ/2)·‖w − x‖² to their loss.

    ``mu`` reaches nodes as ``proximal_mu`` in :meth:`fit_config`; a Task that ignores
    it trains plain FedAvg. μ = 0 is FedAvg exactly.
    """

    name: ClassVar[str] = "fedprox"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        Option("mu", 0.01, NON_NEGATIVE, "proximal coefficient μ sent to nodes as proximal_mu"),
    )

    def __init__(self, *, server_lr: float = 1.0, mu: float = 0.01) -> None:
        values = resolve_options(self.name, self.options, {"server_lr": server_lr, "mu": mu})
        self.server_lr = values["server_lr"]
        self.mu = values["mu"]

    def fit_config(self, round: int) -> dict[str, Scalar]:
        return {"proximal_mu": self.mu}


class FedAvgM(Strategy):
    """FedAvg with server momentum (Hsu et al. 2019, as in Flower's FedAvgM).

    With pseudo-gradient g = −Δ: ``v ← β·v + g`` then ``x ← x − η·v``; v starts at zero,
    so the first round is FedAvg with learning rate η. v is kept per float array in the
    array's dtype (at least float32) and checkpointed as ``momentum/<name>``.
    :meth:`apply` advances v: call it once per committed round.
    """

    name: ClassVar[str] = "fedavgm"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        Option("momentum", 0.9, UNIT_INTERVAL, "server momentum β: v ← β·v − Δ; x ← x − η·v"),
    )
    PREFIX: ClassVar[str] = "momentum/"

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        values = resolve_options(self.name, self.options, {"server_lr": server_lr, "momentum": momentum})
        self.server_lr = values["server_lr"]
        self.momentum = values["momentum"]
        self._velocity: dict[str, np.ndarray] = {}

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return WeightedMean(schema=global_params.schema)

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The next model; raises ``SchemaMismatch`` if Δ or the loaded state does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        if self._velocity:
            check_state_fits(self.name, self._velocity, self.PREFIX, global_params)
        out: dict[str, np.ndarray] = {}
        for name, x in global_params.items():
            delta = aggregate[name]
            if x.dtype.kind != "f":
                out[name] = add_delta(x, delta)
                continue
            key = self.PREFIX + name
            v = self._velocity.get(key)
            if v is None:
                v = self._velocity[key] = np.zeros(x.shape, state_dtype(x.dtype))
            np.multiply(v, self.momentum, out=v)
            np.subtract(v, delta, out=v)
            new = np.empty_like(v)
            np.multiply(v, v.dtype.type(-self.server_lr), out=new)
            np.add(new, x, out=new)
            out[name] = new.astype(x.dtype, copy=False)
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)

    def state(self) -> dict[str, np.ndarray]:
        """Read-only copies of v, keyed ``momentum/<name>``; empty before the first round."""
        return _frozen_copies(self._velocity)

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore v from :meth:`state`; an empty mapping resets v to zero.

        Raises ``StrategyError`` for a key not starting with ``momentum/`` or a non-float
        or non-finite array; shapes are checked against the model at the next apply.
        """
        self._velocity = load_prefixed(self.name, state, [self.PREFIX])
