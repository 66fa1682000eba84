"""A node's part in the provenance ledger: its signing key, its signatures, its checks.

:class:`NodeProvenance` is what :class:`~potluck.apps.node.NodeAgent` calls: the
public key it registers at join, :meth:`~NodeProvenance.sign` for each update, and
:meth:`~NodeProvenance.check` with every ledger head the server announces (see
:mod:`potluck.ledger.watch` for what is checked). A mismatch is logged at
ERROR with the details; with ``leave_on_mismatch`` the node then leaves the run and
:class:`~potluck.ledger.watch.LedgerMismatch` ends it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from potluck.apps.provenance import node_key_dir
from potluck.core.digests import payload_digest, settings_digest, update_statement
from potluck.core.errors import PotluckError, TransportError, UnknownId
from potluck.core.messages import FitResult
from potluck.core.params import ParamsKind
from potluck.ledger.chain import InclusionProof
from potluck.ledger.signing import load_or_create_key, public_bytes
from potluck.ledger.watch import LedgerMismatch, LedgerWatch
from potluck.transport.client import FleetClient
from potluck.transport.fleet_messages import OutgoingInstruction, Welcome

log = logging.getLogger(__name__)


class NodeProvenance:
    def __init__(self, node_id: str, client: FleetClient, *, tls_dir: str, key_dir: str | None,
                 leave_on_mismatch: bool = False) -> None:
        folder = node_key_dir(tls_dir, key_dir)
        self.node_id, self.client, self.leave_on_mismatch = node_id, client, leave_on_mismatch
        self.key = load_or_create_key(folder / f"{node_id}.signing.key")
        self.public_key = public_bytes(self.key)
        self.watch = LedgerWatch(node_id, self.public_key.hex(), folder / f"{node_id}.ledger-state.json")

    @property
    def head(self) -> str:
        return self.watch.head

    def start(self, welcome: Welcome) -> None:
        self.watch.start(welcome.run_id, welcome.current_round)

    def sign(self, ins: OutgoingInstruction, out: FitResult) -> tuple[bytes, bytes, str]:
        """The update's wire bytes (its canonical DELTA encoding), their signature and digest."""
        update = out.params if out.params.kind is ParamsKind.DELTA else out.params.with_kind(ParamsKind.DELTA)
        payload = update.encode()
        digest = payload_digest(payload)  # = digests.update_digest(update), without encoding twice
        statement = update_statement(ins.run_id, ins.round, digest, out.num_examples, settings_digest(ins.config))
        self.watch.sent(ins.round, digest)
        return payload, self.key.sign(statement), digest

    def check(self, session: str, head: str) -> None:
        """Verify the server's ledger up to ``head`` (see the module docstring)."""
        try:
            for warning in self.watch.observe(head, lambda h: self._since(session, h), lambda r: self._proof(session, r)):
                log.warning("node %s: %s", self.node_id, warning)
        except (TransportError, UnknownId) as exc:  # not a verdict: checked again at the next head
            log.warning("node %s: could not check the server's ledger now: %s", self.node_id, exc)
        except LedgerMismatch as exc:
            log.error("node %s: LEDGER MISMATCH in run %s: %s (last verified head %s, announced %s)", self.node_id,
                      self.watch.state.get("run_id"), exc, self.watch.head or "none", head)
            if self.leave_on_mismatch:
                try:
                    self.client.leave(session, f"ledger mismatch: {exc}")
                except PotluckError:
                    pass  # leaving is a courtesy
                raise

    def acknowledge(self, session: str, reported: str) -> None:
        """After the last heartbeat: tell the server which head this node verified, if it
        is newer than the one that heartbeat reported (the server waits for it)."""
        if self.watch.head and self.watch.head != reported:
            try:
                self.client.heartbeat(session, self.watch.head)
            except PotluckError:
                pass  # the run is over; the server stops waiting by itself

    def _since(self, session: str, head: str) -> tuple[Sequence[bytes], bool]:
        found = self.client.ledger_since(session, head)
        return found.headers, found.more

    def _proof(self, session: str, rnd: int) -> InclusionProof | None:
        found = self.client.inclusion_proof(session, rnd)
        if not found.included:
            return None
        try:
            contribution = json.loads(found.contribution)
        except ValueError:
            raise LedgerMismatch(f"round {rnd}: the server's inclusion proof holds no valid contribution") from None
        if not isinstance(contribution, dict):
            raise LedgerMismatch(f"round {rnd}: the server's inclusion proof holds no valid contribution")
        return InclusionProof(rnd, found.index, found.tree_size, contribution, found.path)
