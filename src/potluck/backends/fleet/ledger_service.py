"""What nodes may ask of the run's ledger, and which head each says it verified.

The head (round and hash of the latest entry) goes out with every instruction and
heartbeat; a node may then fetch the headers since the last head it verified, and the
inclusion proofs of its own contributions only: nodes do not learn each other's
updates or weights. The server attaches the run's
:class:`~potluck.ledger.chain.Ledger` once it has one; until then (and in runs without
one) the head is empty and queries are refused with ``LedgerError``.

Bound: one verified head per node id, and only for ids the registry still holds (the
pool calls :meth:`LedgerService.keep_only` whenever the registry forgets nodes).
"""

from __future__ import annotations

from collections.abc import Collection

from potluck.core.errors import LedgerError
from potluck.ledger.chain import Head, Ledger, canonical
from potluck.transport.fleet_messages import LedgerHeaders, ProofInfo


class LedgerService:
    """The ledger queries of :class:`~potluck.transport.fleet_messages.LedgerHandler`,
    for nodes whose identity the caller has checked."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self._seen: dict[str, str] = {}  # node id -> the ledger head it last reported verified

    def head(self) -> Head | None:
        return self.ledger.head() if self.ledger is not None else None

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise LedgerError("this server keeps no ledger")
        return self.ledger

    def headers_since(self, head: str, limit: int) -> LedgerHeaders:
        headers, more = self._ledger().headers_since(head, limit)
        return LedgerHeaders(tuple(headers), more)

    def proof(self, node_id: str, rnd: int) -> ProofInfo:
        proof = self._ledger().proof(rnd, node_id)
        if proof is None:
            return ProofInfo(False)
        return ProofInfo(True, canonical(proof.contribution), proof.index, proof.size, proof.path)

    def note_seen(self, node_id: str, head: str) -> None:
        self._seen[node_id] = head

    def heard_end(self, node_id: str, head: Head | None) -> bool:
        """Whether a node heard that the run is over: it verified the last head, or it
        does not check the ledger at all (it never reported a head)."""
        seen = self._seen.get(node_id)
        return seen is None or head is None or seen == head.hash

    def keep_only(self, node_ids: Collection[str]) -> None:
        """Drop what is remembered of nodes not in ``node_ids``."""
        self._seen = {n: h for n, h in self._seen.items() if n in node_ids}
