"""Aggregation rules: how one round's updates become one aggregate Δ.

A minority of nodes may send arbitrary updates (sign-flipped, scaled, random). The
plain weighted mean follows a single update scaled by 100 wherever it points; the
robust rules bound what a minority can do (the pure functions are in
:mod:`robust_rules`). Any rule composes with any server step (:mod:`steps`,
:mod:`fedopt`).

=============  =========================================  ==========  ===============
rule           aggregate Δ                                memory      num_examples
=============  =========================================  ==========  ===============
mean           Σ nᵢ·dᵢ / Σ nᵢ (:class:`WeightedMean`)     O(model)    weights the mean
median         coordinate-wise median                     O(n×model)  ignored
trimmed-mean   coordinate-wise mean without the ⌊β·n⌋     O(n×model)  ignored
               lowest and highest values
krum           the one update with the lowest Krum score  O(n×model)  ignored
multi-krum     weighted mean of the ``select`` updates    O(n×model)  weights the mean
               with the lowest Krum scores
norm-bound     weighted mean of updates clipped to        O(model),   weights the mean
               ‖dᵢ‖₂ ≤ ``max_norm``                        streaming
=============  =========================================  ==========  ===============

Median, trimmed mean and (Multi-)Krum buffer all of a round's updates before they can
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
from potluck.strategies.base import AggregationRule, Aggregator
from potluck.strategies.options import COUNT, HALF, POSITIVE, Option
from potluck.strategies.robust_rules import clip_to_norm, coordinate_median, krum_select, trimmed_mean

Rule = Callable[[Sequence[Params], Sequence[float]], Params]

_BYZANTINE = Option("byzantine", 1.0, COUNT, "assumed number f of Byzantine nodes; the round needs n > 2f + 2 updates")


def _check_update(update: object, weight: object, schema: tuple[SchemaEntry, ...] | None) -> float:
    """``weight`` as a float once ``update`` is Params that fit ``schema`` and hold no NaN/Inf."""
    if not isinstance(update, Params):
        raise StrategyError(f"update must be Params, got {type(update).__name__}")
    w = _check_weight(weight)
    if schema is not None:
        update.check_schema(schema, what="update")
    update.check_finite(what="update")
    return w


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
        w = _check_update(update, weight, self._schema)
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
        _check_update(update, weight, self._schema)
        bounded = clip_to_norm(update, self.max_norm)
        self._mean.add(bounded, weight)
        self.clipped += bounded is not update

    def result(self) -> Params:
        if self._mean.count == 0:
            raise StrategyError("norm-bound: no updates to aggregate")
        return self._mean.result()


# -- rules ------------------------------------------------------------------------------


class MeanRule(AggregationRule):
    """The example-weighted mean Δ = Σ nᵢ·dᵢ / Σ nᵢ, streaming in O(model) memory.

    The only rule that needs no single update, just their weighted sum, so it is the
    one secure aggregation and differential privacy can stand in for.
    """

    name: ClassVar[str] = "mean"

    @property
    def needs_each_update(self) -> bool:
        return False

    def new_aggregator(self, global_params: Params) -> Aggregator:
        """A :class:`WeightedMean` that accepts only updates with the global schema."""
        return WeightedMean(schema=global_params.schema)


class MedianRule(AggregationRule):
    """Coordinate-wise median of the updates (Yin et al. 2018); unweighted. O(n×model) memory."""

    name: ClassVar[str] = "median"

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return BufferedAggregator(lambda ups, _: coordinate_median(ups), name=self.name, schema=global_params.schema)


class TrimmedMeanRule(AggregationRule):
    """Coordinate-wise β-trimmed mean (Yin et al. 2018); unweighted. O(n×model) memory.

    With ``n`` updates, ``⌊β·n⌋`` values are dropped at each end of every coordinate:
    β = 0.2 with 20 nodes drops 4 on each side, so 4 attackers are always removed.
    """

    name: ClassVar[str] = "trimmed-mean"
    options: ClassVar[tuple[Option, ...]] = (
        Option("trim", 0.1, HALF, "fraction β of values dropped at each end of every coordinate: ⌊β·n⌋"),
    )

    def __init__(self, *, trim: float = 0.1) -> None:
        super().__init__(trim=trim)
        self.trim = self.settings["trim"]

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


class KrumRule(AggregationRule):
    """Krum (Blanchard et al. 2017): Δ is the single update with the lowest score, the
    sum of squared distances to its ``n − f − 2`` nearest neighbours. Unweighted.

    A round needs ``n > 2f + 2`` updates, else :meth:`result` raises ``StrategyError``.
    O(n×model) memory and O(n²×model) time.
    """

    name: ClassVar[str] = "krum"
    options: ClassVar[tuple[Option, ...]] = (_BYZANTINE,)

    def __init__(self, *, byzantine: float = 1.0) -> None:
        super().__init__(byzantine=byzantine)
        self.byzantine = int(self.settings["byzantine"])

    @property
    def min_updates(self) -> int:
        return 2 * self.byzantine + 3

    def new_aggregator(self, global_params: Params) -> Aggregator:
        f = self.byzantine

        def rule(updates: Sequence[Params], weights: Sequence[float]) -> Params:
            return updates[krum_select(updates, f, 1)[0]]

        return BufferedAggregator(rule, name=self.name, schema=global_params.schema, too_few=_krum_too_few(f, 1))


class MultiKrumRule(AggregationRule):
    """Multi-Krum: the example-weighted mean of the ``select`` updates with the lowest
    Krum scores (scores computed once, over all ``n``); ``select = 0`` keeps ``n − f``.

    ``select = 1`` is Krum; ``byzantine = 0`` with ``select = n`` is the mean. A round
    needs ``n > 2f + 2`` updates and ``select ≤ n``. O(n×model) memory.
    """

    name: ClassVar[str] = "multi-krum"
    options: ClassVar[tuple[Option, ...]] = (
        _BYZANTINE,
        Option("select", 0.0, COUNT, "updates m averaged each round; 0 keeps n − f"),
    )

    def __init__(self, *, byzantine: float = 1.0, select: float = 0.0) -> None:
        super().__init__(byzantine=byzantine, select=select)
        self.byzantine, self.select = int(self.settings["byzantine"]), int(self.settings["select"])

    @property
    def min_updates(self) -> int:
        return max(2 * self.byzantine + 3, self.select)

    def new_aggregator(self, global_params: Params) -> Aggregator:
        f, m = self.byzantine, self.select

        def rule(updates: Sequence[Params], weights: Sequence[float]) -> Params:
            keep = krum_select(updates, f, m or len(updates) - f)
            return weighted_mean([updates[i] for i in keep], [weights[i] for i in keep])

        return BufferedAggregator(rule, name=self.name, schema=global_params.schema, too_few=_krum_too_few(f, m))


class NormBoundRule(AggregationRule):
    """Norm bounding (Sun et al. 2019): each update is clipped to ‖dᵢ‖₂ ≤ ``max_norm``,
    then averaged weighted by examples, streaming in O(model) memory.

    Bounds what any one node can move the model by, but does not remove a bounded
    update pointing the wrong way. Pick ``max_norm`` near the honest updates' typical
    norm (digits MLP, 1 local epoch of batch size 8: about 0.6–0.8 in the first round).
    """

    name: ClassVar[str] = "norm-bound"
    options: ClassVar[tuple[Option, ...]] = (
        Option("max_norm", 1.0, POSITIVE, "largest L2 norm C of one update (float arrays); longer ones are scaled to C"),
    )

    def __init__(self, *, max_norm: float = 1.0) -> None:
        super().__init__(max_norm=max_norm)
        self.max_norm = self.settings["max_norm"]

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return NormBounded(self.max_norm, schema=global_params.schema)


RULES: dict[str, type[AggregationRule]] = {
    cls.name: cls for cls in (MeanRule, MedianRule, TrimmedMeanRule, KrumRule, MultiKrumRule, NormBoundRule)
}
