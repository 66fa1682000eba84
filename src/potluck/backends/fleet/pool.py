"""The server-side NodePool over gRPC, composed of its parts.

:class:`FleetPool` is both what the coordinator drives (``fit``, ``evaluate``,
``exchange``: a :class:`~potluck.runtime.pool.ExchangePool`) and what the servicer calls
when nodes call in (a ``FleetHandler`` and a ``LedgerHandler``, see
``transport/fleet_messages.py``). It holds one lock, shared by its parts, and does
little of its own: the registry admits and tracks nodes, the dispatcher hands
instructions out and collects outcomes, the admission checks each result, and the
ledger service answers ledger queries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Union, cast

from potluck.backends.fleet.admission import ResultAdmission, ResultHeader
from potluck.backends.fleet.bounded import RejectionCounts
from potluck.backends.fleet.dispatch import Dispatcher
from potluck.backends.fleet.instructions import DEFAULT_REMEMBER, EncodedModel, InstructionBook, Outcome, Send
from potluck.backends.fleet.ledger_service import LedgerService
from potluck.backends.fleet.registry import JoinRules, NodeRegistry
from potluck.core.digests import payload_digest
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.core.params import SchemaEntry, schema_digest
from potluck.ledger.chain import Ledger
from potluck.ledger.signing import NodeKeys
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, FitOutcome
from potluck.transport.chunks import DEFAULT_MAX_PAYLOAD_BYTES
from potluck.transport.fleet_messages import (
    HeartbeatInfo,
    IncomingResult,
    InstructionKind,
    JoinInfo,
    LedgerHeaders,
    OutgoingInstruction,
    ProofInfo,
    Welcome,
)

Instruction = Union[FitInstruction, EvaluateInstruction]
# Seconds a silent node is kept (see registry.py); ten node_ttl when that is longer.
DEFAULT_FORGET_AFTER = 600.0


class FleetPool:
    """Real nodes over gRPC. ``allow`` (node ids) limits who may join; ``node_ttl``
    (seconds, default three heartbeats and one second) is how long a node stays live
    after its last call; ``forget_after`` (seconds) how long a silent node is kept at
    all. ``update_schema`` is what result payloads must look like when it is not the
    model's own (a compressed form, decoded by the coordinator). ``remember`` caps the
    answered and closed instruction ids kept to tell repeats from replays. A node may
    declare at most ``max_examples`` training examples at join, and a fit result may
    report no more than its node declared. Refusals are counted by reason in
    :attr:`rejections`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        model_id: str,
        schema: tuple[SchemaEntry, ...],
        data_info_json: bytes,
        allow: set[str] | None = None,
        heartbeat_seconds: float = 2.0,
        node_ttl: float | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        update_schema: tuple[SchemaEntry, ...] | None = None,
        require_signatures: bool = True,
        keys: NodeKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
        forget_after: float | None = None,
        remember: int = DEFAULT_REMEMBER,
        max_examples: int = JoinRules.max_examples,
    ) -> None:
        self.run_id, self.model_id, self.schema = run_id, model_id, schema
        self.schema_digest = schema_digest(schema)
        self.data_info_json, self.heartbeat_seconds = data_info_json, heartbeat_seconds
        self.max_payload_bytes, self.clock = max_payload_bytes, clock
        self.rejections = RejectionCounts()
        self._cond = threading.Condition()  # re-entrant: the parts lock it too
        ttl = node_ttl if node_ttl is not None else 3 * heartbeat_seconds + 1
        self.registry = NodeRegistry(
            JoinRules(model_id, self.schema_digest, require_signatures, max_examples), allow=allow,
            keys=keys if keys is not None else NodeKeys(), node_ttl=ttl,
            forget_after=forget_after if forget_after is not None else max(DEFAULT_FORGET_AFTER, 10 * ttl),
            clock=clock, rejections=self.rejections)
        self.book = InstructionBook(remember)
        self.ledger_service = LedgerService()
        self.dispatcher = Dispatcher(run_id=run_id, registry=self.registry, book=self.book,
                                     ledger=self.ledger_service, cond=self._cond, clock=clock)
        self.admission = ResultAdmission(
            run_id=run_id, update_schema=update_schema if update_schema is not None else schema,
            require_signatures=require_signatures, registry=self.registry, book=self.book,
            rejections=self.rejections, max_payload_bytes=max_payload_bytes)

    # Settings the server and tests read or change while the pool runs.
    @property
    def ledger(self) -> Ledger | None:
        """The run's ledger, once the server attached one: nodes are shown its head."""
        return self.ledger_service.ledger

    @ledger.setter
    def ledger(self, ledger: Ledger | None) -> None:
        self.ledger_service.ledger = ledger

    @property
    def current_round(self) -> int:
        return self.dispatcher.current_round

    @current_round.setter
    def current_round(self, rnd: int) -> None:
        self.dispatcher.current_round = rnd

    @property
    def finished(self) -> bool:
        return self.dispatcher.finished

    @property
    def allow(self) -> set[str] | None:
        return self.registry.allow

    @allow.setter
    def allow(self, allow: set[str] | None) -> None:
        with self._cond:
            self.registry.allow = allow

    @property
    def keys(self) -> NodeKeys:
        return self.registry.keys

    # -- handler side: called from gRPC threads ---------------------------------------

    def join(self, info: JoinInfo, peer: str | None) -> Welcome:
        with self._cond:
            self.registry.check(info)
            session = ""
            if info.schema_digest:  # an empty digest only asks what to build
                self._forget_silent()
                joined = self.registry.join(info)
                self.dispatcher.hand_over(joined.entry, joined.replaced)
                session = joined.entry.session
                self._cond.notify_all()
            return Welcome(self.run_id, self.model_id, self.schema_digest, self.current_round, session,
                           self.heartbeat_seconds, self.data_info_json)

    def next_instruction(self, session: str, wait: float, peer: str | None) -> OutgoingInstruction | None:
        return self.dispatcher.next_instruction(session, wait, peer)

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview:
        """The payload of an instruction this node pulled and has not answered (the bulk lane's fetch)."""
        with self._cond:
            return self.dispatcher.pulled_payload(self.registry.node_for(session, peer), instruction_id)

    def allows(self, peer: str) -> bool:
        """Whether ``peer`` (a proven identity) may call at all: on the allow-list, if any."""
        with self._cond:
            return self.registry.allow is None or peer in self.registry.allow

    def check_result(self, session: str, instruction_id: str, rnd: int, run_id: str, peer: str | None) -> int:
        """The error :meth:`submit` would raise for a result with this header, before its
        payload is received; else the largest payload the result may carry (see
        :meth:`ResultAdmission.payload_limit`)."""
        with self._cond:
            admitted = self.admission.admit(ResultHeader(session, instruction_id, rnd, run_id), peer)
            return self.admission.payload_limit(admitted)

    def submit(self, result: IncomingResult, peer: str | None) -> bool:
        """Take a node's result; True for a repeat of an accepted one (acknowledged, ignored)."""
        with self._cond:
            admitted = self.admission.admit(ResultHeader.of(result), peer)
            if admitted is None:
                self.rejections.note("duplicate")
                return True
            key = self.keys.key_of(admitted.node_id)
        outcome = self.admission.judge(result, admitted, key)  # outside the lock: decoding can be slow
        with self._cond:
            try:
                return self.admission.record(result.instruction_id, outcome)
            finally:
                self._cond.notify_all()

    def count_refusal(self, reason: str) -> None:
        with self._cond:
            self.rejections.note(reason)

    def heartbeat(self, session: str, peer: str | None) -> HeartbeatInfo:
        head = self.ledger_service.head()
        with self._cond:
            node_id = self.registry.node_for(session, peer).node_id
            if self.finished and self.ledger_service.heard_end(node_id, head):
                self.dispatcher.told.add(node_id)
                self._cond.notify_all()
            return HeartbeatInfo(self.current_round, self.finished, head.hash if head else "", head.round if head else 0)

    def leave(self, session: str, reason: str, peer: str | None) -> None:
        with self._cond:
            self.dispatcher.leave(self.registry.node_for(session, peer), reason)

    # -- ledger queries (LedgerHandler) ---------------------------------------------------

    def ledger_head(self) -> tuple[int, str] | None:
        head = self.ledger_service.head()
        return None if head is None else (head.round, head.hash)

    def _caller(self, session: str, peer: str | None) -> str:
        with self._cond:
            return self.registry.node_for(session, peer).node_id

    def ledger_since(self, session: str, head: str, limit: int, peer: str | None) -> LedgerHeaders:
        self._caller(session, peer)
        return self.ledger_service.headers_since(head, limit)

    def ledger_proof(self, session: str, rnd: int, peer: str | None) -> ProofInfo:
        """Only the caller's own contribution: nodes do not learn each other's updates or weights."""
        return self.ledger_service.proof(self._caller(session, peer), rnd)

    def ledger_seen(self, session: str, head: str, peer: str | None) -> None:
        with self._cond:
            self.ledger_service.note_seen(self.registry.node_for(session, peer).node_id, head)

    # -- pool side: called by the coordinator -------------------------------------------

    def node_ids(self) -> Sequence[str]:
        with self._cond:
            self._forget_silent()
            return self.registry.live_ids()

    def node_info(self, node_id: str) -> JoinInfo | None:
        """What a connected node reported at join (examples, CPUs, memory, GPUs)."""
        with self._cond:
            node = self.registry.get(node_id)
            return None if node is None else node.info

    def wait_for_nodes(self, count: int, timeout: float) -> bool:
        """Block until ``count`` nodes are live; False if ``timeout`` passes first."""
        deadline = self.clock() + timeout
        while len(self.node_ids()) < count:
            if self.clock() >= deadline:
                return False
            with self._cond:
                self._cond.wait(0.2)
        return True

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        return cast(Iterator[FitOutcome], self._dispatch("fit", instructions, timeout))

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return cast(Iterator[EvaluateOutcome], self._dispatch("evaluate", instructions, timeout))

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """One step of a multi-message protocol (secure aggregation) for each node in
        ``payloads``: an EXCHANGE instruction whose answer is the node's reply bytes."""
        rnd = self.current_round
        sends = [Send(node, rnd, "exchange", {"step": step}, 0, EncodedModel(payload, payload_digest(payload)))
                 for node, payload in payloads.items()]
        return cast(Iterator[ExchangeOutcome], self.dispatcher.send(sends, timeout))

    def _dispatch(self, kind: InstructionKind, instructions: Sequence[Instruction], timeout: float) -> Iterator[Outcome]:
        encoded: dict[str, EncodedModel] = {}  # params digest -> wire form: each model encoded once
        sends = []
        for ins in instructions:
            if ins.params.digest not in encoded:
                data = ins.params.encode()
                encoded[ins.params.digest] = EncodedModel(data, payload_digest(data))
            seed = ins.seed if isinstance(ins, FitInstruction) else 0
            sends.append(Send(ins.node_id, ins.round, kind, dict(ins.config), seed, encoded[ins.params.digest]))
        return self.dispatcher.send(sends, timeout)

    def _forget_silent(self) -> None:
        """Forget silent nodes, and what other parts keep of nodes no longer held."""
        if self.registry.forget_silent() is not None:
            held = {node.node_id for node in self.registry.entries()}
            self.ledger_service.keep_only(held)
            self.dispatcher.told &= held

    def close(self, linger: float = 0.0) -> None:
        """Tell every node the run is over (heartbeats report it); wait up to ``linger``
        seconds until every live node has heard, so nodes exit by themselves."""
        self.dispatcher.finish()
        self.dispatcher.linger(linger)
