"""The server's driver of secure aggregation: the extra message rounds around a fit.

A round with secure aggregation runs, over the pool's ``exchange`` capability
(``runtime/pool.ExchangePool``):

1. ``secagg/advertise``, ``secagg/share``, ``secagg/deliver`` with the sampled nodes:
   key agreement and encrypted Shamir shares, relayed (``updates/secagg/protocol.py``);
2. the fit, whose last update stage (``secagg``) clips, quantises and masks, so each
   result is a uint32 ring vector; the masked vectors are summed mod 2^32 as they come
   (the sum is exact, so arrival order cannot change it);
3. ``secagg/unmask`` with the survivors: their self-masks and the masks of nodes that
   dropped after sharing keys are rebuilt from t shares and removed;
4. the plain integer sum is dequantised and divided by the number of survivors (an
   UNWEIGHTED mean: examples counts would need the nodes to pre-scale), or by a fixed
   denominator with distributed DP.

Too many dropouts for the threshold raise ``StrategyError``: the coordinator counts
the attempt as failed and retries with a fresh sample, then fails the round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from potluck.core.errors import (
    ConfigError,
    NodeError,
    NodeLeft,
    NodeResultInvalid,
    NodeTimedOut,
    ParamsError,
    StrategyError,
)
from potluck.core.messages import FitResult, Scalar
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.core.seeds import derive_seed
from potluck.runtime.pool import ExchangeReply, NodePool
from potluck.updates.secagg.graph import default_degree
from potluck.updates.secagg.masking import check_no_wrap, dequantise_sum
from potluck.updates.secagg.protocol import ServerSession
from potluck.updates.secagg.stage import SecureMask

Schema = tuple[SchemaEntry, ...]


def absence(error: NodeError) -> str:
    """The failure bucket of a node error, as the coordinator counts them."""
    if isinstance(error, NodeResultInvalid):
        return "rejected"  # its result came and was refused (a bad signature, NaN/Inf): as the coordinator's own refusals
    return "left" if isinstance(error, NodeLeft) else "timed_out" if isinstance(error, NodeTimedOut) else "failed"


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
    """

    def __init__(self, *, degree: int = 0, threshold: int = 0, clip: float = 1.0, bits: int = 16, seed: int = 0,
                 denominator: float | None = None) -> None:
        if degree < 0 or threshold < 0:
            raise ConfigError("secagg_neighbours and secagg_threshold must be ≥ 0")
        self.degree, self.threshold, self.clip, self.bits = degree, threshold, float(clip), bits
        self.seed, self.denominator = seed, denominator
        self.stage = SecureMask(self.clip, bits)
        self._session: ServerSession | None = None

    def setup(self, pool: NodePool, rnd: int, attempt: int, sampled: Sequence[str],
              timeout: float) -> tuple[list[str], list[tuple[str, str]]]:
        """Steps advertise → share → deliver. Returns the nodes ready to fit and the
        (node, reason) of those that dropped out; raises StrategyError if too few remain."""
        exchange = getattr(pool, "exchange", None)
        if exchange is None:
            raise ConfigError(f"secure aggregation needs a backend that can relay protocol messages; "
                              f"{type(pool).__name__} cannot")
        check_no_wrap(len(sampled), self.bits)
        k, t = resolve(len(sampled), self.degree, self.threshold)
        s = self._session = ServerSession(f"{rnd}.{attempt}", sampled, degree=k, threshold=t,
                                          seed=derive_seed(self.seed, "secagg", rnd, attempt))
        dropped: list[tuple[str, str]] = []

        def step(name: str, payloads: dict[str, bytes]) -> dict[str, bytes]:
            replies = {}
            for outcome in exchange(f"secagg/{name}", payloads, timeout):
                if isinstance(outcome, ExchangeReply) and outcome.node_id in payloads:
                    replies[outcome.node_id] = outcome.payload
                elif isinstance(outcome, NodeError):
                    dropped.append((outcome.node_id, absence(outcome)))
            return replies

        refused = s.collect_advertise(step("advertise", s.advertise_requests()))
        refused.update(s.collect_share(step("share", s.share_requests())))
        dropped.extend((node, "failed") for node in refused)
        acked = step("deliver", s.deliver_requests())
        return [v for v in sampled if v in acked], dropped

    def fit_config(self) -> dict[str, Scalar]:
        """Settings added to this attempt's fit config: the session the nodes must mask with."""
        assert self._session is not None
        return {"update.secagg.session": self._session.session}

    def fold(self, result: FitResult, schema: Schema) -> None:
        """Add one masked result to the ring sum; ParamsError when it does not fit."""
        assert self._session is not None
        result.params.check_schema(self.stage.wire_schema(schema), what="masked update")
        flat = np.concatenate([a.reshape(-1) for a in result.params.values()])
        try:
            self._session.add(result.node_id, flat)
        except StrategyError as exc:
            raise ParamsError(str(exc)) from None

    @property
    def count(self) -> int:
        return len(self._session.u3) if self._session else 0

    def survivors(self) -> Iterable[str]:
        return list(self._session.u3) if self._session else []

    def finish(self, pool: NodePool, schema: Schema, timeout: float) -> Params:
        """Step unmask; the mean (or sum over ``denominator``) of the survivors' clipped,
        quantised updates as a DELTA. Raises StrategyError when it cannot be unmasked."""
        s = self._session
        assert s is not None
        replies = {}
        for outcome in pool.exchange("secagg/unmask", s.unmask_requests(), timeout):  # type: ignore[attr-defined]
            if isinstance(outcome, ExchangeReply):
                replies[outcome.node_id] = outcome.payload
        codes = s.collect_unmask(replies)
        self.last_codes = codes  # the plain integer sum, for tests and benchmarks
        total = dequantise_sum(codes, self.count, self.clip, self.bits)
        denominator = self.denominator or self.count
        out, start = {}, 0
        for name, shape, dtype in schema:
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = (total[start:start + size] / denominator).reshape(shape).astype(dtype)
            start += size
        return Params.from_arrays(out, ParamsKind.DELTA, copy=False)
