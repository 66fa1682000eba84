"""Adaptive server steps: Adam, Yogi, Adagrad, as in FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021).

"Adaptive Federated Optimization", Algorithm 2, without bias correction. Each round,
with Δ the round's aggregate (a negated pseudo-gradient; the example-weighted mean of
the nodes' deltas in the FedOpt presets, any rule's aggregate with ``--server-opt``)::

    m ← β₁·m + (1 − β₁)·Δ
    v ← v + Δ²                                    FedAdagrad
    v ← β₂·v + (1 − β₂)·Δ²                         FedAdam
    v ← v − (1 − β₂)·Δ²·sign(v − Δ²)               FedYogi
    x ← x + η·m / (√v + τ)

State starts at ``m = 0`` and ``v = τ²``, following the paper's requirement v₋₁ ≥ τ²
(Flower starts v at 0 instead). v stays ≥ 0 under all
three rules. State is kept per float array in the array's dtype (at least float32, so
it costs two model copies) and is checkpointed as ``m/<name>`` and ``v/<name>``.
The step is computed in cache-sized blocks, so no model-sized temporary is made.

Non-float arrays (integer counters) take ``x + Δ`` and have no optimizer state.
:meth:`~AdaptiveStep.apply` advances the state: call it once per committed round.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from potluck.core.errors import StrategyError
from potluck.core.params import Params, ParamsKind
from potluck.strategies.base import ServerStep
from potluck.strategies.options import POSITIVE, UNIT_INTERVAL, Option
from potluck.strategies.steps import (
    add_delta,
    check_aggregate,
    check_state_fits,
    frozen_copies,
    load_prefixed,
    state_dtype,
)

_BLOCK = 1 << 15  # elements per block of the step (≈ 128-256 KiB per buffer)

_SERVER_LR = Option("server_lr", 0.01, POSITIVE, "server learning rate η")
_BETA1 = Option("beta1", 0.9, UNIT_INTERVAL, "first-moment decay β₁ (0 disables momentum)")
_BETA2 = Option("beta2", 0.99, UNIT_INTERVAL, "second-moment decay β₂")
_TAU = Option("tau", 1e-3, POSITIVE, "adaptivity τ: added to √v; v starts at τ²")


class AdaptiveStep(ServerStep):
    """Shared state handling and step of the adaptive family; subclasses update ``v``."""

    options: ClassVar[tuple[Option, ...]] = (_SERVER_LR, _BETA1, _BETA2, _TAU)

    def __init__(self, **given: float) -> None:
        super().__init__(**given)
        self.server_lr = self.settings["server_lr"]
        self.beta1 = self.settings["beta1"]
        self.beta2 = self.settings.get("beta2", 0.0)
        self.tau = self.settings["tau"]
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    @abc.abstractmethod
    def _update_v(self, v: np.ndarray, d2: np.ndarray, scratch: np.ndarray) -> None:
        """Update the block ``v`` in place from ``d2`` = Δ² (which may be overwritten); each optimizer's rule."""

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """The next model; raises ``SchemaMismatch`` if Δ or the loaded state does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        if self._m or self._v:
            check_state_fits(self.name, self._m, "m/", global_params)
            check_state_fits(self.name, self._v, "v/", global_params)
        out: dict[str, np.ndarray] = {}
        for name, x in global_params.items():
            delta = aggregate[name]
            if x.dtype.kind != "f":
                out[name] = add_delta(x, delta)
                continue
            sdt = state_dtype(x.dtype)
            m = self._m.get("m/" + name)
            v = self._v.get("v/" + name)
            if m is None or v is None:
                m = self._m["m/" + name] = np.zeros(x.shape, sdt)
                v = self._v["v/" + name] = np.full(x.shape, sdt.type(self.tau) ** 2, sdt)
            new = np.empty_like(x)
            self._step(x.reshape(-1), delta.reshape(-1), m.reshape(-1), v.reshape(-1), new.reshape(-1))
            out[name] = new
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)

    def _step(self, x: np.ndarray, d: np.ndarray, m: np.ndarray, v: np.ndarray, new: np.ndarray) -> None:
        """One optimizer step on flat arrays, block by block; ``m``, ``v`` in place."""
        t = m.dtype.type
        beta1, keep1 = t(self.beta1), t(1.0 - self.beta1)
        lr, tau = t(self.server_lr), t(self.tau)
        n = min(_BLOCK, x.size)
        a, b, c = (np.empty(n, m.dtype) for _ in range(3))
        for start in range(0, x.size, _BLOCK):
            stop = min(start + _BLOCK, x.size)
            k = stop - start
            mb, vb, db = m[start:stop], v[start:stop], d[start:stop]
            ta, tb, tc = a[:k], b[:k], c[:k]
            np.multiply(mb, beta1, out=mb)  # m ← β₁·m + (1 − β₁)·Δ
            np.multiply(db, keep1, out=ta)
            np.add(mb, ta, out=mb)
            np.multiply(db, db, out=tb, dtype=m.dtype)  # Δ² in the state dtype
            self._update_v(vb, tb, tc)
            np.sqrt(vb, out=ta)  # x ← x + η·m / (√v + τ)
            np.add(ta, tau, out=ta)
            np.divide(mb, ta, out=ta)
            np.multiply(ta, lr, out=ta)
            np.add(x[start:stop], ta, out=new[start:stop], casting="same_kind")

    def state(self) -> dict[str, np.ndarray]:
        """Read-only copies of the moments, keyed ``m/<name>`` and ``v/<name>``.

        Empty before the first round.
        """
        return {**frozen_copies(self._m), **frozen_copies(self._v)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned; an empty mapping resets the moments.

        Raises ``StrategyError`` for keys other than ``m/<name>``/``v/<name>``, names
        with only one of the two, or arrays that are not float, finite, and (for v) ≥ 0.
        Shapes and dtypes are checked against the model at the next :meth:`apply`.
        """
        arrays = load_prefixed(self.name, state, ["m/", "v/"])
        m = {k: a for k, a in arrays.items() if k.startswith("m/")}
        v = {k: a for k, a in arrays.items() if k.startswith("v/")}
        m_names, v_names = {k[2:] for k in m}, {k[2:] for k in v}
        if m_names != v_names:
            raise StrategyError(
                f"server step {self.name}: state has m and v for different arrays: "
                f"only m for {sorted(m_names - v_names)}, only v for {sorted(v_names - m_names)}"
            )
        for key, arr in v.items():
            if (arr < 0).any():
                raise StrategyError(f"server step {self.name}: state {key!r} holds negative values")
        self._m, self._v = m, v


class AdagradStep(AdaptiveStep):
    """FedAdagrad's step: ``v ← v + Δ²``; β₁ = 0 gives plain Adagrad (no first moment)."""

    name: ClassVar[str] = "fedadagrad"
    options: ClassVar[tuple[Option, ...]] = (_SERVER_LR, _BETA1, _TAU)

    def __init__(self, *, server_lr: float = 0.01, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, tau=tau)

    def _update_v(self, v: np.ndarray, d2: np.ndarray, scratch: np.ndarray) -> None:
        np.add(v, d2, out=v)


class AdamStep(AdaptiveStep):
    """FedAdam's step: ``v ← β₂·v + (1 − β₂)·Δ²``."""

    name: ClassVar[str] = "fedadam"

    def __init__(
        self, *, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)

    def _update_v(self, v: np.ndarray, d2: np.ndarray, scratch: np.ndarray) -> None:
        np.multiply(v, v.dtype.type(self.beta2), out=v)
        np.multiply(d2, v.dtype.type(1.0 - self.beta2), out=d2)
        np.add(v, d2, out=v)


class YogiStep(AdamStep):
    """FedYogi's step: Adam's, but ``v ← v − (1 − β₂)·Δ²·sign(v − Δ²)``; v grows slower.

    Same options, constructor and state as :class:`AdamStep`; only v's update differs.
    """

    name: ClassVar[str] = "fedyogi"

    def _update_v(self, v: np.ndarray, d2: np.ndarray, scratch: np.ndarray) -> None:
        np.subtract(v, d2, out=scratch)
        np.sign(scratch, out=scratch)
        np.multiply(d2, v.dtype.type(1.0 - self.beta2), out=d2)
        np.multiply(d2, scratch, out=d2)
        np.subtract(v, d2, out=v)
