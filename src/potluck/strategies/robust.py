"""Byzantine-robust strategies: median, trimmed mean, Krum, Multi-Krum, norm bounding.

A minority of nodes may send arbitrary updates (sign-flipped, scaled, random). The
plain weighted mean follows a single update scaled by 100 wherever it points; these
strategies bound what a minority can do. All of them take the server step of FedAvg,
``x ← x + η·Δ``, with Δ the robust aggregate (rules in :mod:`robust_rules`).

=============  =========================================  ==========  ===============
strategy       aggregate Δ                                memory      num_examples
=============  =========================================  ==========  ===============
median         coordinate-wise median                     O(n×model)  ignored
trimmed-mean   coordinate-wise mean without the ⌊β·n⌋     O(n×model)  ignored
               lowest and highest values
krum           the one update with the lowest Krum score  O(n×model)  ignored
multi-krum     weighted mean of the ``select`` updates    O(n×model)  weights the mean
               with the lowest Krum scores
norm-bound     weighted mean of updates clipped to        O(model),   weights the mean
               ‖dᵢ‖₂ ≤ ``max_norm``                        streaming
=============  =========================================  ==========  ===============

Every strategy but norm-bound buffers all of a round's updates before it can
aggregate, so the server holds O(nodes × model) memory (references to the received
updates, plus float64 temporaries of ``n`` × the largest array): fine for simulation
and for hundreds of nodes with small models, not for thousands of large ones.

Weights: median, trimmed mean and Krum are unweighted by definition — giving
``num_examples`` a say would let one node that claims many examples move the median
or the trimmed range. Multi-Krum and norm-bound average the updates they keep
weighted by ``num_examples`` like FedAvg; the number is reported by the node and is
trusted, so pair them with a cap on it where nodes are not trusted.

Each aggregator follows the ``Aggregator`` contract: :meth:`add` validates an update
(type, weight, schema, finiteness) and leaves the aggregator unchanged when it
raises; :meth:`result` raises ``StrategyError`` when nothing was added or too few
updates arrived for the rule (Krum needs ``n > 2f + 2``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from potluck.core.errors import StrategyError
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.strategies.aggregate import WeightedMean, _check_weight, weighted_mean
from potluck.strategies.base import Aggregator, Strategy
from potluck.strategies.fedavg import (
    POSITIVE,
    SERVER_LR_1,
    Check,
    Option,
    add_delta,
    check_aggregate,
    resolve_options,
)
from potluck.strategies.robust_rules import (
    clip_to_norm,
    coordinate_median,
    krum_select,
    trimmed_mean,
)

Rule = Callable[[Sequence[Params], Sequence[float]], Params]

COUNT = Check("must be a whole number >= 0", lambda v: v >= 0 and v == int(v))
HALF = Check("must be in [0, 0.5)", lambda v: 0 <= v < 0.5)

_BYZANTINE = Option("byzantine", 1.0, COUNT, "assumed number f of Byzantine nodes; the round needs n > 2f + 2 updates")


class BufferedAggregator:
    """Keeps every update of a round, then applies ``rule`` to all of them; an ``Aggregator``.

    Memory O(nodes × model): updates are kept by reference (``Params`` are immutable)
    until :meth:`result`. ``too_few(n)`` returns why ``n`` updates are too few for the
    rule, or ``None`` when they are enough.
    """

    def __init__(
        self,
        rule: Rule,
        *,
        name: str,
        schema: tuple[SchemaEntry, ...] | None = None,
        too_few: Callable[[int], str | None] = lambda n: None,
    ) -> None:
        self._rule, self._name, self._schema, self._too_few = rule, name, schema, too_few
        self._updates: list[Params] = []
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        """Number of updates accepted so far."""
        return len(self._updates)

    def add(self, update: Params, weight: float) -> None:
        """Keep ``update``; raises like ``WeightedMean.add`` and then keeps nothing."""
        if not isinstance(update, Params):
            raise StrategyError(f"update must be Params, got {type(update).__name__}")
        w = _check_weight(weight)
        if self._schema is not None:
            update.check_schema(self._schema, what="update")
        update.check_finite(what="update")
        if self._schema is None:
            self._schema = update.schema
        self._updates.append(update.with_kind(ParamsKind.DELTA))
        self._weights.append(w)

    def result(self) -> Params:
        """The rule applied to every update so far, as a DELTA.

        Raises ``StrategyError`` when no update was added or too few for the rule.
        """
        if not self._updates:
            raise StrategyError(f"{self._name}: no updates to aggregate")
        reason = self._too_few(len(self._updates))
        if reason:
            raise StrategyError(f"{self._name}: {reason}")
        return self._rule(self._updates, self._weights)


class NormBounded:
    """Streaming weighted mean of updates clipped to ‖dᵢ‖₂ ≤ ``max_norm``; an ``Aggregator``.

    O(model) memory, like :class:`WeightedMean`: each update is checked, clipped
    (:func:`~potluck.strategies.robust_rules.clip_to_norm`, float arrays only) and
    folded in. Clipping is done in float64 and rounded back, so a clipped update's norm
    can exceed ``max_norm`` by a rounding error.
    """

    def __init__(self, max_norm: float, *, schema: tuple[SchemaEntry, ...] | None = None) -> None:
        self.max_norm = max_norm
        self._mean = WeightedMean(schema=schema, check_finite=False)
        self._schema = schema
        self.clipped = 0  # updates that were scaled down

    @property
    def count(self) -> int:
        return self._mean.count

    def add(self, update: Params, weight: float) -> None:
        """Clip and fold in ``update``; raises like ``WeightedMean.add``, leaving it unchanged."""
        if not isinstance(update, Params):
            raise StrategyError(f"update must be Params, got {type(update).__name__}")
        _check_weight(weight)
        if self._schema is not None:
            update.check_schema(self._schema, what="update")
        update.check_finite(what="update")
        bounded = clip_to_norm(update, self.max_norm)
        self._mean.add(bounded, weight)
        self.clipped += bounded is not update

    def result(self) -> Params:
        if self._mean.count == 0:
            raise StrategyError("norm-bound: no updates to aggregate")
        return self._mean.result()


# -- strategies -------------------------------------------------------------------------


class RobustStrategy(Strategy):
    """Shared server step of the robust strategies: ``x ← x + η·Δ`` (as FedAvg). Stateless."""

    options: ClassVar[tuple[Option, ...]] = (SERVER_LR_1,)
    server_lr: float

    @property
    def min_updates(self) -> int:
        """Fewest updates a round needs for this rule (checked up front by ``simulate``)."""
        return 1

    def _resolve(self, given: dict[str, float]) -> dict[str, float]:
        values = resolve_options(self.name, self.options, given)
        self.server_lr = values["server_lr"]
        return values

    def apply(self, global_params: Params, aggregate: Params) -> Params:
        """``x + η·Δ`` as FULL params in the global dtypes; raises if Δ does not fit."""
        check_aggregate(self.name, global_params, aggregate)
        out = {name: add_delta(x, aggregate[name], self.server_lr) for name, x in global_params.items()}
        return Params.from_arrays(out, ParamsKind.FULL, copy=False)


class Median(RobustStrategy):
    """Coordinate-wise median of the updates (Yin et al. 2018); unweighted. O(n×model) memory."""

    name: ClassVar[str] = "median"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        self._resolve({"server_lr": server_lr})

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return BufferedAggregator(lambda ups, _: coordinate_median(ups), name=self.name, schema=global_params.schema)


class TrimmedMean(RobustStrategy):
    """Coordinate-wise β-trimmed mean (Yin et al. 2018); unweighted. O(n×model) memory.

    With ``n`` updates, ``⌊β·n⌋`` values are dropped at each end of every coordinate:
    β = 0.2 with 20 nodes drops 4 on each side, so 4 attackers are always removed.
    """

    name: ClassVar[str] = "trimmed-mean"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        Option("trim", 0.1, HALF, "fraction β of values dropped at each end of every coordinate: ⌊β·n⌋"),
    )

    def __init__(self, *, server_lr: float = 1.0, trim: float = 0.1) -> None:
        self.trim = self._resolve({"server_lr": server_lr, "trim": trim})["trim"]

    def new_aggregator(self, global_params: Params) -> Aggregator:
        trim = self.trim
        return BufferedAggregator(lambda ups, _: trimmed_mean(ups, trim), name=self.name, schema=global_params.schema)


def _krum_too_few(byzantine: int, select: int) -> Callable[[int], str | None]:
    def check(n: int) -> str | None:
        if n <= 2 * byzantine + 2:
            return (f"with byzantine = f = {byzantine} it needs more than 2f + 2 = {2 * byzantine + 2} "
                    f"updates, got {n}")
        if select > n:
            return f"select = {select} but only {n} updates arrived"
        return None

    return check


class Krum(RobustStrategy):
    """Krum (Blanchard et al. 2017): Δ is the single update with the lowest score, the
    sum of squared distances to its ``n − f − 2`` nearest neighbours. Unweighted.

    A round needs ``n > 2f + 2`` updates, else :meth:`result` raises ``StrategyError``.
    O(n×model) memory and O(n²×model) time.
    """

    name: ClassVar[str] = "krum"
    options: ClassVar[tuple[Option, ...]] = (SERVER_LR_1, _BYZANTINE)

    def __init__(self, *, server_lr: float = 1.0, byzantine: float = 1.0) -> None:
        self.byzantine = int(self._resolve({"server_lr": server_lr, "byzantine": byzantine})["byzantine"])

    @property
    def min_updates(self) -> int:
        return 2 * self.byzantine + 3

    def new_aggregator(self, global_params: Params) -> Aggregator:
        f = self.byzantine

        def rule(updates: Sequence[Params], weights: Sequence[float]) -> Params:
            return updates[krum_select(updates, f, 1)[0]]

        return BufferedAggregator(rule, name=self.name, schema=global_params.schema, too_few=_krum_too_few(f, 1))


class MultiKrum(RobustStrategy):
    """Multi-Krum: the example-weighted mean of the ``select`` updates with the lowest
    Krum scores (scores computed once, over all ``n``); ``select = 0`` keeps ``n − f``.

    ``select = 1`` is Krum; ``byzantine = 0`` with ``select = n`` is FedAvg. A round needs
    ``n > 2f + 2`` updates and ``select ≤ n``. O(n×model) memory.
    """

    name: ClassVar[str] = "multi-krum"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        _BYZANTINE,
        Option("select", 0.0, COUNT, "updates m averaged each round; 0 keeps n − f"),
    )

    def __init__(self, *, server_lr: float = 1.0, byzantine: float = 1.0, select: float = 0.0) -> None:
        values = self._resolve({"server_lr": server_lr, "byzantine": byzantine, "select": select})
        self.byzantine = int(values["byzantine"])
        self.select = int(values["select"])

    @property
    def min_updates(self) -> int:
        return max(2 * self.byzantine + 3, self.select)

    def new_aggregator(self, global_params: Params) -> Aggregator:
        f, m = self.byzantine, self.select

        def rule(updates: Sequence[Params], weights: Sequence[float]) -> Params:
            keep = krum_select(updates, f, m or len(updates) - f)
            return weighted_mean([updates[i] for i in keep], [weights[i] for i in keep])

        return BufferedAggregator(rule, name=self.name, schema=global_params.schema, too_few=_krum_too_few(f, m))


class NormBound(RobustStrategy):
    """Norm bounding (Sun et al. 2019): each update is clipped to ‖dᵢ‖₂ ≤ ``max_norm``,
    then averaged weighted by examples, streaming in O(model) memory.

    Bounds what any one node can move the model by, but does not remove a bounded
    update pointing the wrong way. Pick ``max_norm`` near the honest updates' typical
    norm (digits MLP, 1 local epoch of batch size 8: about 0.6–0.8 in the first round).
    """

    name: ClassVar[str] = "norm-bound"
    options: ClassVar[tuple[Option, ...]] = (
        SERVER_LR_1,
        Option("max_norm", 1.0, POSITIVE, "largest L2 norm C of one update (float arrays); longer ones are scaled to C"),
    )

    def __init__(self, *, server_lr: float = 1.0, max_norm: float = 1.0) -> None:
        self.max_norm = self._resolve({"server_lr": server_lr, "max_norm": max_norm})["max_norm"]

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return NormBounded(self.max_norm, schema=global_params.schema)


ROBUST_STRATEGIES: tuple[type[Strategy], ...] = (Median, TrimmedMean, Krum, MultiKrum, NormBound)
