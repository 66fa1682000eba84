"""Handing instructions to nodes, and waiting for what becomes of them.

A dispatch puts one instruction in each asked node's inbox; nodes long-poll their
inbox (:meth:`Dispatcher.next_instruction`). The dispatch then yields one outcome per
node as results arrive: the result, or ``NodeLeft`` (not connected, or left), or
``NodeFailed`` as soon as its node is noticed silent for ``node_ttl`` seconds, or
``NodeTimedOut`` once the deadline passes. When it ends, early or not, it closes every
instruction it opened, so none stays open after its dispatch.

The end of the run goes out the same way: :meth:`Dispatcher.finish` makes every
heartbeat report it, and :meth:`Dispatcher.linger` waits until every live node heard.
"""

from __future__ import annotations

import collections
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence

from potluck.backends.fleet.instructions import Arrival, InstructionBook, OpenInstruction, Outcome, Send
from potluck.backends.fleet.ledger_service import LedgerService
from potluck.backends.fleet.registry import NodeEntry, NodeRegistry
from potluck.core.digests import settings_digest
from potluck.core.errors import NodeFailed, NodeLeft, NodeTimedOut, UnknownId
from potluck.transport.fleet_messages import OutgoingInstruction

POLL_SECONDS = 0.2  # the longest a dispatch sleeps before it looks for silent nodes again


class Dispatcher:
    """Inboxes, long polls and dispatches; shares the pool's lock (``cond``)."""

    def __init__(self, *, run_id: str, registry: NodeRegistry, book: InstructionBook, ledger: LedgerService,
                 cond: threading.Condition, clock: Callable[[], float]) -> None:
        self.run_id, self.registry, self.book, self.ledger = run_id, registry, book, ledger
        self.cond, self.clock = cond, clock
        self.current_round = 0
        self.finished = False
        self.told: set[str] = set()  # nodes that heard the run is over (bounded by the registry: keep_only)

    # -- the nodes' side ----------------------------------------------------------------

    def next_instruction(self, session: str, wait: float, peer: str | None) -> OutgoingInstruction | None:
        """The node's next instruction, waiting up to ``wait`` seconds; None if none came,
        the run finished, or the node joined again meanwhile."""
        deadline = self.clock() + wait
        with self.cond:
            node = self.registry.node_for(session, peer)
            while not node.inbox and not self.finished:
                left = deadline - self.clock()
                if left <= 0 or not self.registry.holds_session(node):
                    return None
                self.cond.wait(min(left, 1.0))
                node.last_seen = self.clock()
            if not node.inbox:
                return None
            ins = node.inbox.popleft()
            node.pulled[ins.instruction_id] = ins
            return ins

    def pulled_payload(self, node: NodeEntry, instruction_id: str) -> bytes | memoryview:
        ins = node.pulled.get(instruction_id)
        if ins is None:
            self.registry.rejections.note("unknown_instruction")
            raise UnknownId(f"no pulled instruction {instruction_id!r} is waiting for this node")
        return ins.payload

    def hand_over(self, joined: NodeEntry, replaced: NodeEntry | None) -> None:
        """A rejoin (restart, reconnect): resend what the node had not answered, pulled or
        not, since a restarted node lost what it held."""
        if replaced is not None:
            joined.inbox.extend(i for i in replaced.pulled.values() if i.instruction_id in self.book.open)
            joined.inbox.extend(replaced.inbox)

    def leave(self, node: NodeEntry, reason: str) -> None:
        """``node`` left on purpose: its open instructions end with ``NodeLeft``."""
        self.registry.remove(node)
        for iid, ins in list(self.book.open.items()):
            if ins.node_id == node.node_id:
                self.book.settle(iid, NodeLeft(ins.node_id, f"left the run: {reason or 'no reason given'}"),
                                 "the node left")
        self.cond.notify_all()

    # -- the coordinator's side ----------------------------------------------------------

    def send(self, sends: Sequence[Send], timeout: float) -> Iterator[Outcome]:
        """Hand out ``sends``, then yield one outcome per send until ``timeout`` seconds pass."""
        deadline = self.clock() + timeout
        arrivals: collections.deque[Arrival] = collections.deque()
        waiting: dict[str, str] = {}  # instruction id -> node id
        try:
            yield from self._hand_out(sends, arrivals, waiting)
            while waiting and self.clock() < deadline:
                yield from self._collect(arrivals, waiting, deadline)
            with self.cond:
                late, waiting = waiting, {}
                for iid in late:
                    self._close(iid, "the round deadline passed")
            for node_id in late.values():
                yield NodeTimedOut(node_id, f"no result within the round deadline of {timeout:g} s")
        finally:
            with self.cond:  # the coordinator stopped reading early: what it asked for ends here
                for iid in waiting:
                    self._close(iid, "its dispatch was abandoned")

    def _hand_out(self, sends: Sequence[Send], arrivals: collections.deque[Arrival],
                  waiting: dict[str, str]) -> list[Outcome]:
        """Put each send in its node's inbox; ``NodeLeft`` for nodes not connected."""
        early: list[Outcome] = []
        head = self.ledger.head()
        with self.cond:
            for send in sends:
                self.current_round = max(self.current_round, send.round)
                node = self.registry.get(send.node_id)
                if node is None:
                    early.append(NodeLeft(send.node_id, "not connected"))
                    continue
                iid = secrets.token_hex(12)
                node.inbox.append(OutgoingInstruction(
                    iid, self.run_id, send.round, send.kind, send.config, send.seed, send.model.payload,
                    send.model.digest, head.hash if head else "", head.round if head else 0))
                self.book.open[iid] = OpenInstruction(send.node_id, send.round, send.kind,
                                                      settings_digest(send.config), arrivals)
                waiting[iid] = send.node_id
            self.cond.notify_all()
        return early

    def _collect(self, arrivals: collections.deque[Arrival], waiting: dict[str, str],
                 deadline: float) -> list[Outcome]:
        """The outcomes that arrived and the silent nodes noticed; waits a little for them."""
        ready: list[Outcome] = []
        with self.cond:
            now = self.clock()
            while arrivals:
                arrival = arrivals.popleft()
                if waiting.pop(arrival.instruction_id, None) is not None:
                    ready.append(arrival.outcome)
            for iid, node_id in list(waiting.items()):
                node = self.registry.get(node_id)
                if node is None or not self.registry.is_live(node, now):
                    del waiting[iid]
                    self._close(iid, "the node went silent")
                    ready.append(NodeFailed(node_id, f"lost: no call from it for over {self.registry.node_ttl:g} s"))
            if not ready and waiting:
                self.cond.wait(min(POLL_SECONDS, max(0.0, deadline - now)))
        return ready

    def _close(self, iid: str, why: str) -> None:
        self.book.close(iid, why)
        for node in self.registry.entries():
            if any(i.instruction_id == iid for i in node.inbox):
                node.inbox = collections.deque(i for i in node.inbox if i.instruction_id != iid)
            node.pulled.pop(iid, None)

    # -- the end of the run ------------------------------------------------------------

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def linger(self, seconds: float) -> None:
        """Wait up to ``seconds`` until every live node heard the run is over."""
        deadline = self.clock() + seconds
        with self.cond:
            while self.clock() < deadline:
                if set(self.registry.live_ids()) <= self.told:
                    break
                self.cond.wait(0.1)
