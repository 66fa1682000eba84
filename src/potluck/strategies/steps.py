"""The plain and momentum server steps, and what every server step shares.

With Δ the round's aggregate (a delta, the negated pseudo-gradient):

============  ==========================================  ==============================
step          update                                      reference
============  ==========================================  ==============================
fedavg        x ← x + η·Δ                                 McMahan et al. 2017
fedavgm       v ← β·v − Δ;  x ← x − η·v                   Hsu et al. 2019 (as in Flower)
============  ==========================================  ==============================

The adaptive steps (Adam, Yogi, Adagrad) are in :mod:`potluck.strategies.fedopt`.
Arrays that are not floating point (integer counters such as BatchNorm's
``num_batches_tracked``) always take ``x + Δ`` whatever the step: learning rates and
momentum apply to float arrays only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from potluck.core.errors import SchemaMismatch, StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies.base import ServerStep
from potluck.strategies.options import SERVER_LR_1, UNIT_INTERVAL, Option


def check_aggregate(step: str, global_params: Params, aggregate: Params) -> None:
    """Raise unless ``aggregate`` is a DELTA with the schema of ``global_params``."""
    if aggregate.kind is not ParamsKind.DELTA:
        raise StrategyError(f"server step {step}: the aggregate must be a delta, got {aggregate.kind.value}")
    aggregate.check_schema(global_params.schema, what=f"server step {step}: aggregate")


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


def check_state_fits(step: str, state: Mapping[str, np.ndarray], prefix: str, global_params: Params) -> None:
    """Raise ``SchemaMismatch`` unless ``state`` has one array per float array of the model."""
    want = {f"{prefix}{name}": arr for name, arr in global_params.items() if arr.dtype.kind == "f"}
    have = {key for key in state if key.startswith(prefix)}
    if have != set(want):
        raise SchemaMismatch(f"server step {step}: state {prefix}* holds {sorted(have)}, the model needs {sorted(want)}")
    for key, arr in want.items():
        if state[key].shape != arr.shape or state[key].dtype != state_dtype(arr.dtype):
            raise SchemaMismatch(
                f"server step {step}: state {key!r} is {state[key].dtype}{list(state[key].shape)}, "
                f"the model needs {state_dtype(arr.dtype)}{list(arr.shape)}"
            )


def load_prefixed(step: str, state: Mapping[str, np.ndarray], prefixes: Sequence[str]) -> dict[str, np.ndarray]:
    """Writable float copies of ``state``; raise ``StrategyError`` for keys without a prefix."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not any(key.startswith(p) and len(key) > len(p) for p in prefixes):
            raise StrategyError(f"server step {step}: unexpected state key {key!r}; keys start with {list(prefixes)}")
        arr = np.array(value, copy=True)
        if arr.dtype.kind != "f":
            raise StrategyError(f"server step {step}: state {key!r} must be floating point, got {arr.dtype}")
        if not np.isfinite(arr).all():
            raise StrategyError(f"server step {step}: state {key!r} holds NaN/Inf")
        out[key] = arr
    return out


def frozen_copies(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read-only copies of ``state``'s arrays (what ``state()`` hands out)."""
    out = {}
    for key, arr in state.items():
        copy = arr.copy()
        copy.setflags(write=False)
        out[key] = copy
    return out


class PlainStep(ServerStep):
    """``x ← x + η·Δ``: FedAvg's server step (η = 1: the new model is the mean). Stateless."""

    name: ClassVar[str] = "fedavg"
    options: ClassVar[tuple[Option, ...]] = (SERVER_LR_1,)

    def __init__(self, *, server_lr: float = 1.0) -> None:
        super().__init__(server_lr=server_lr)
        self.server_lr = self.settings["server_lr"]

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """``x + η·Δ`` as FULL params in the global dtypes; raises if Δ does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        out = {name: add_delta(x, aggregate[name], self.server_lr) for name, x in global_params.items()}
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)


class MomentumStep(ServerStep):
    """Server momentum (Hsu et al. 2019, as in Flower's FedAvgM).

    With pseudo-gradient g = −Δ: ``v ← β·v + g`` then ``x ← x − η·v``; v starts at zero,
    so the first round is the plain step with learning rate η. v is kept per float array
    in the array's dtype (at least float32) and checkpointed as ``momentum/<name>``.
    """

    name: ClassVar[str] = "fedavgm"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        Option("momentum", 0.9, UNIT_INTERVAL, "server momentum β: v ← β·v − Δ; x ← x − η·v"),
    )
    PREFIX: ClassVar[str] = "momentum/"

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr=server_lr, momentum=momentum)
        self.server_lr, self.momentum = self.settings["server_lr"], self.settings["momentum"]
        self._velocity: dict[str, np.ndarray] = {}

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The next model; raises ``SchemaMismatch`` if Δ or the loaded state does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        if self._velocity:
            check_state_fits(self.name, self._velocity, self.PREFIX, global_params)
        out = {name: self._step(name, x, aggregate[name]) for name, x in global_params.items()}
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)

    def _step(self, name: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "f":
            return add_delta(x, delta)
        key = self.PREFIX + name
        v = self._velocity.get(key)
        if v is None:
            v = self._velocity[key] = np.zeros(x.shape, state_dtype(x.dtype))
        np.multiply(v, self.momentum, out=v)
        np.subtract(v, delta, out=v)
        new = np.empty_like(v)
        np.multiply(v, v.dtype.type(-self.server_lr), out=new)
        np.add(new, x, out=new)
        return new.astype(x.dtype, copy=False)

    def state(self) -> dict[str, np.ndarray]:
        """Read-only copies of v, keyed ``momentum/<name>``; empty before the first round."""
        return frozen_copies(self._velocity)

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore v from :meth:`state`; an empty mapping resets v to zero.

        Raises ``StrategyError`` for a key not starting with ``momentum/`` or a non-float
        or non-finite array; shapes are checked against the model at the next apply.
        """
        self._velocity = load_prefixed(self.name, state, [self.PREFIX])
