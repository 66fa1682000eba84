"""The server's driver of secure aggregation: a fold with steps before and after the fit.

A round with secure aggregation runs, over the pool's ``exchange`` (``runtime/pool.py``),
as a :class:`SecureFold` the coordinator's one collect loop (``runtime/collect.py``)
drives:

1. ``setup``: ``secagg/advertise``, ``secagg/share``, ``secagg/deliver`` with the
   sampled nodes: key agreement and encrypted Shamir shares, relayed
   (``updates/secagg/protocol.py``);
2. ``add``: the fit's last update stage (``secagg``) clips, quantises and masks, so each
   result is a uint32 ring vector; the masked vectors are summed mod 2^32 (the sum is
   exact, so the order they come in cannot change it);
3. ``finish``: ``secagg/unmask`` with the survivors: their self-masks and the masks of
   nodes that dropped after sharing keys are rebuilt from t shares and removed; the
   plain integer sum is dequantised and divided by the number of survivors (an
   UNWEIGHTED mean: examples counts would need the nodes to pre-scale), or by a fixed
   denominator with distributed DP.

Too many dropouts for the threshold raise ``StrategyError``: the coordinator counts
the attempt as failed and retries with a fresh sample, then fails the round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from potluck.core.errors import ConfigError, NodeError, ParamsError, StrategyError
from potluck.core.messages import FitResult, Scalar
from potluck.core.params import Params, ParamsKind
from potluck.core.records import Failure
from potluck.core.seeds import derive_seed
from potluck.runtime.collect import Schema, failure, failure_kind
from potluck.runtime.pool import ExchangeReply, NodePool
from potluck.updates.secagg.graph import default_degree
from potluck.updates.secagg.masking import check_no_wrap, dequantise_sum
from potluck.updates.secagg.protocol import ServerSession
from potluck.updates.secagg.stage import SecureMask


def resolve(nodes: int, degree: int, threshold: int) -> tuple[int, int]:
    """(k, t) for a round of ``nodes``: k = ``degree`` or Bell et al.'s 2⌈log2 n⌉, at most
    n − 1; t = ``threshold`` or ⌊k/2⌋ + 1 (a majority, so the server can never collect both
    shares of one node from honest neighbours)."""
    k = min(degree or default_degree(nodes), max(nodes - 1, 0))
    t = threshold or k // 2 + 1
    if t > k:
        raise StrategyError(f"secure aggregation: threshold {t} exceeds the {k} neighbours a node has "
                            f"in a round of {nodes} nodes")
    return k, t


class SecureAggregation:
    """One run's secure aggregation (settings: docs/secure-aggregation.md).

    ``degree`` k (0: automatic), ``threshold`` t (0: automatic), values clipped to
    [−``clip``, ``clip``] and quantised to ``bits``; ``denominator`` None divides the sum
    by the survivors, a number divides by it (distributed DP's expected nodes).
    ``last_codes`` is the plain integer sum of the last unmasked attempt (for tests and
    benchmarks).
    """

    def __init__(self, *, degree: int = 0, threshold: int = 0, clip: float = 1.0, bits: int = 16, seed: int = 0,
                 denominator: float | None = None) -> None:
        if degree < 0 or threshold < 0:
            raise ConfigError("secagg_neighbours and secagg_threshold must be ≥ 0")
        self.degree, self.threshold, self.clip, self.bits = degree, threshold, float(clip), bits
        self.seed, self.denominator = seed, denominator
        self.stage = SecureMask(self.clip, bits)
        self.last_codes: np.ndarray | None = None

    def fold(self, pool: NodePool, rnd: int, attempt: int, schema: Schema, timeout: float) -> SecureFold:
        """The fold of one attempt at round ``rnd``; each protocol step has ``timeout`` seconds."""
        return SecureFold(self, pool, f"{rnd}.{attempt}", derive_seed(self.seed, "secagg", rnd, attempt), schema,
                          timeout)


class SecureFold:
    """One attempt's secure aggregation (a ``runtime.collect.Fold``): key agreement before
    the fit, masked results summed in the ring, unmasking after."""

    def __init__(self, secure: SecureAggregation, pool: NodePool, session: str, seed: int, schema: Schema,
                 timeout: float) -> None:
        self.secure, self.pool, self.session_id, self.seed = secure, pool, session, seed
        self.schema, self.timeout = schema, timeout
        self._session: ServerSession | None = None

    @property
    def session(self) -> ServerSession:
        if self._session is None:
            raise StrategyError("secure aggregation: a fold was used before its setup")
        return self._session

    def setup(self, sampled: Sequence[str]) -> tuple[list[str], list[Failure]]:
        """Steps advertise → share → deliver. Returns the nodes ready to fit and those
        that dropped out; raises StrategyError if too few remain."""
        secure = self.secure
        check_no_wrap(len(sampled), secure.bits)
        k, t = resolve(len(sampled), secure.degree, secure.threshold)
        s = self._session = ServerSession(self.session_id, sampled, degree=k, threshold=t, seed=self.seed)
        dropped: list[Failure] = []
        refused = s.collect_advertise(self._step("advertise", s.advertise_requests(), dropped))
        refused.update(s.collect_share(self._step("share", s.share_requests(), dropped)))
        dropped.extend(failure(node, "failed", f"secagg refused: {why}") for node, why in refused.items())
        acked = self._step("deliver", s.deliver_requests(), dropped)
        return [v for v in sampled if v in acked], dropped

    def _step(self, name: str, payloads: Mapping[str, bytes], dropped: list[Failure]) -> dict[str, bytes]:
        replies = {}
        for outcome in self.pool.exchange(f"secagg/{name}", payloads, self.timeout):
            if isinstance(outcome, ExchangeReply) and outcome.node_id in payloads:
                replies[outcome.node_id] = outcome.payload
            elif isinstance(outcome, NodeError):
                dropped.append(failure(outcome.node_id, failure_kind(outcome), f"secagg/{name}: {outcome.reason}"))
        return replies

    def fit_config(self) -> dict[str, Scalar]:
        """Settings added to this attempt's fit config: the session the nodes must mask with."""
        return {"update.secagg.session": self.session.session}

    def add(self, result: FitResult) -> None:
        """Add one masked result to the ring sum; ParamsError when it does not fit."""
        result.params.check_schema(self.secure.stage.wire_schema(self.schema), what="masked update")
        flat = np.concatenate([a.reshape(-1) for a in result.params.values()])
        try:
            self.session.add(result.node_id, flat)
        except StrategyError as exc:
            raise ParamsError(str(exc)) from None

    def finish(self) -> Params:
        """Step unmask; the mean (or sum over ``denominator``) of the survivors' clipped,
        quantised updates as a DELTA. Raises StrategyError when it cannot be unmasked."""
        s, secure = self.session, self.secure
        replies = {}
        for outcome in self.pool.exchange("secagg/unmask", s.unmask_requests(), self.timeout):
            if isinstance(outcome, ExchangeReply):
                replies[outcome.node_id] = outcome.payload
        codes = secure.last_codes = s.collect_unmask(replies)
        count = len(s.u3)
        total = dequantise_sum(codes, count, secure.clip, secure.bits)
        denominator = secure.denominator or count
        out, start = {}, 0
        for name, shape, dtype in self.schema:
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = (total[start:start + size] / denominator).reshape(shape).astype(dtype)
            start += size
        return Params.from_arrays(out, ParamsKind.DELTA, copy=False)
