"""Real nodes over gRPC: the server-side NodePool, and the handler nodes call into.

Nodes join, then long-poll for instructions; ``fit``/``evaluate`` put one instruction in
each sampled node's inbox and yield results as nodes push them. A node is *live* while
it has called in within ``node_ttl`` seconds; one that goes silent mid-round is
reported as ``NodeFailed`` as soon as that is noticed, not only at the deadline.

Every result is checked before it counts: the session and certificate identity, that
the instruction was given to this node, for this round, and is still open; then the
payload's schema and finiteness, then the node's signature over the update (with the
key it registered at join, see :class:`~potluck.ledger.signing.NodeKeys`). A repeated
push of an accepted result is acknowledged and ignored. Refusals are counted by reason
in :attr:`FleetPool.rejections`.

The pool also answers the nodes' ledger queries (it is a ``LedgerHandler``) from the
run's :class:`~potluck.ledger.chain.Ledger`, set as :attr:`FleetPool.ledger`: the
head every instruction and heartbeat carries, the headers since a node's last head,
and a node's own inclusion proofs.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from potluck.core.digests import payload_digest, settings_digest, update_digest, update_statement
from potluck.core.errors import (
    AccessDenied,
    LedgerError,
    NodeError,
    NodeFailed,
    NodeLeft,
    NodeResultInvalid,
    NodeTimedOut,
    ParamsError,
    PotluckError,
    SchemaMismatch,
    SignatureError,
    UnexpectedResult,
    UnknownId,
)
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind, SchemaEntry, schema_digest
from potluck.ledger.chain import Ledger, canonical
from potluck.ledger.signing import NodeKeys, check_signature
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, ExchangeReply, FitOutcome
from potluck.transport.chunks import DEFAULT_MAX_PAYLOAD_BYTES
from potluck.transport.fleet_messages import (
    HeartbeatInfo,
    IncomingResult,
    JoinInfo,
    LedgerHeaders,
    OutgoingInstruction,
    ProofInfo,
    Welcome,
)

log = logging.getLogger(__name__)

Instruction = Union[FitInstruction, EvaluateInstruction]
Outcome = Union[FitResult, EvaluateResult, ExchangeReply, NodeError]


@dataclass
class _Node:
    info: JoinInfo
    session: str
    last_seen: float
    inbox: collections.deque[OutgoingInstruction] = field(default_factory=collections.deque)
    pulled: dict[str, OutgoingInstruction] = field(default_factory=dict)  # handed out, not yet answered


@dataclass
class _Open:
    """An instruction handed out and not yet answered."""

    node_id: str
    round: int
    kind: str
    settings: str = ""  # digest of the instruction's config, which the node's signature covers


class FleetPool:
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
    ) -> None:
        self.run_id, self.model_id, self.schema = run_id, model_id, schema
        # what a result's payload must look like: the model's schema, or the run's
        # compressed form (the coordinator decodes it; see updates/pipeline.py)
        self.update_schema = update_schema if update_schema is not None else schema
        self.schema_digest = schema_digest(schema)
        self.data_info_json = data_info_json
        self.allow = allow
        self.heartbeat_seconds = heartbeat_seconds
        self.node_ttl = node_ttl if node_ttl is not None else 3 * heartbeat_seconds + 1
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.require_signatures = require_signatures  # False only for tests of the transport itself
        self.keys = keys if keys is not None else NodeKeys()
        self.ledger: Ledger | None = None  # the run's ledger, once the server attached one
        self._seen: dict[str, str] = {}  # node id -> the ledger head it last reported verified
        self.current_round = 0
        self.finished = False
        self.rejections: collections.Counter[str] = collections.Counter()
        self._told_finished: set[str] = set()
        self._cond = threading.Condition()
        self._nodes: dict[str, _Node] = {}
        self._sessions: dict[str, str] = {}  # session -> node id
        self._open: dict[str, _Open] = {}
        self._done: set[str] = set()  # instruction ids whose result was accepted
        self._closed: dict[str, str] = {}  # instruction id -> why it no longer takes results
        self._outcomes: collections.deque[tuple[str, Outcome]] = collections.deque()

    # -- handler side: called from gRPC threads -------------------------------------

    def join(self, info: JoinInfo, peer: str | None) -> Welcome:
        with self._cond:
            if self.allow is not None and info.node_id not in self.allow:
                self.rejections["not_allowed"] += 1
                raise AccessDenied(f"node {info.node_id!r} is not on this server's allow-list")
            if info.task_name != self.model_id:
                self.rejections["model_id"] += 1
                raise SchemaMismatch(f"this server trains model {self.model_id!r}, node {info.node_id!r} runs {info.task_name!r}")
            session = ""
            if info.schema_digest:  # an empty digest only asks what to build
                if info.schema_digest != self.schema_digest:
                    self.rejections["schema"] += 1
                    raise SchemaMismatch(
                        f"node {info.node_id!r} builds parameters with schema {info.schema_digest[:12]}…, "
                        f"this run's model has {self.schema_digest[:12]}…"
                    )
                self._register_key(info)
                session = secrets.token_hex(16)
                old = self._nodes.get(info.node_id)
                node = _Node(info, session, self.clock())
                if old is not None:  # a rejoin (restart, reconnect): resend what it had not answered,
                    self._sessions.pop(old.session, None)  # pulled or not: a restarted node lost what it held
                    node.inbox.extend(i for i in old.pulled.values() if i.instruction_id in self._open)
                    node.inbox.extend(old.inbox)
                self._nodes[info.node_id] = node
                self._sessions[session] = info.node_id
                self._cond.notify_all()
                log.info("node %s %s: %d examples, %d CPUs, %.1f GiB, %d GPUs", info.node_id,
                         "rejoined" if old else "joined", info.num_examples, info.cpus, info.memory_bytes / 2**30,
                         info.gpus)
            return Welcome(self.run_id, self.model_id, self.schema_digest, self.current_round, session,
                           self.heartbeat_seconds, self.data_info_json)

    def _register_key(self, info: JoinInfo) -> None:
        if not info.public_key:
            if self.require_signatures:
                self.rejections["no_key"] += 1
                raise SignatureError(f"node {info.node_id!r} registered no signing key; this server requires "
                                     "signed updates (update the node)")
            return
        try:
            self.keys.register(info.node_id, info.public_key, info.certificate_sha256)
        except AccessDenied:
            self.rejections["key_changed"] += 1
            raise
        except SignatureError:
            self.rejections["bad_key"] += 1
            raise

    def _node_for(self, session: str, peer: str | None) -> _Node:
        node_id = self._sessions.get(session)
        if node_id is None:
            self.rejections["unknown_session"] += 1
            raise UnknownId("unknown or expired session: join again")
        if peer is not None and peer != node_id:
            self.rejections["identity"] += 1
            raise AccessDenied(f"session belongs to node {node_id!r}, certificate says {peer!r}")
        node = self._nodes[node_id]
        node.last_seen = self.clock()
        return node

    def next_instruction(self, session: str, wait: float, peer: str | None) -> OutgoingInstruction | None:
        deadline = self.clock() + wait
        with self._cond:
            node = self._node_for(session, peer)
            while not node.inbox and not self.finished:
                left = deadline - self.clock()
                if left <= 0 or self._sessions.get(session) != node.info.node_id:
                    return None
                self._cond.wait(min(left, 1.0))
                node.last_seen = self.clock()
            if not node.inbox:
                return None
            ins = node.inbox.popleft()
            node.pulled[ins.instruction_id] = ins
            return ins

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview:
        """The payload of an instruction this node pulled and has not answered (the bulk lane's fetch)."""
        with self._cond:
            node = self._node_for(session, peer)
            ins = node.pulled.get(instruction_id)
            if ins is None:
                self.rejections["unknown_instruction"] += 1
                raise UnknownId(f"no pulled instruction {instruction_id!r} is waiting for this node")
            return ins.payload

    def _admit(self, session: str, instruction_id: str, rnd: int, run_id: str,
               peer: str | None) -> tuple[str, _Open] | None:
        """(node id, open instruction) a result may answer, None for a repeat of an accepted
        one; the specific error otherwise. Under the lock."""
        node_id = self._node_for(session, peer).info.node_id
        if run_id and run_id != self.run_id:
            self.rejections["unknown_run"] += 1
            raise UnknownId(f"result is for run {run_id!r}; this server runs {self.run_id!r}")
        if instruction_id in self._done:
            return None
        why = self._closed.get(instruction_id)
        if why is not None:
            self.rejections["late"] += 1
            raise UnexpectedResult(f"instruction {instruction_id} no longer takes results: {why}")
        ins = self._open.get(instruction_id)
        if ins is None:
            self.rejections["unknown_instruction"] += 1
            raise UnknownId(f"no instruction {instruction_id!r} was given in this run")
        if ins.node_id != node_id:
            self.rejections["wrong_node"] += 1
            raise UnexpectedResult(f"instruction {instruction_id} was given to node {ins.node_id!r}, not {node_id!r}")
        if rnd != ins.round:
            self.rejections["wrong_round"] += 1
            raise UnexpectedResult(f"result says round {rnd}, its instruction was for round {ins.round}")
        return node_id, ins

    def check_result(self, session: str, instruction_id: str, rnd: int, run_id: str, peer: str | None) -> None:
        """The error :meth:`submit` would raise for a result with this header, before its
        payload is received (the bulk lane asks); nothing for one it would take or ignore."""
        with self._cond:
            self._admit(session, instruction_id, rnd, run_id, peer)

    def submit(self, result: IncomingResult, peer: str | None) -> bool:
        with self._cond:
            admitted = self._admit(result.session, result.instruction_id, result.round, result.run_id, peer)
            if admitted is None:
                self.rejections["duplicate"] += 1  # acknowledged, ignored
                return True
            node_id, ins = admitted
        outcome = self._decode(result, node_id, ins)  # outside the lock: decoding can be slow
        with self._cond:
            if result.instruction_id in self._done or result.instruction_id not in self._open:
                return result.instruction_id in self._done
            del self._open[result.instruction_id]
            for holder in self._nodes.values():
                holder.pulled.pop(result.instruction_id, None)
            self._outcomes.append((result.instruction_id, outcome))
            self._cond.notify_all()
            if isinstance(outcome, NodeError):
                self._closed[result.instruction_id] = "its result was refused"
                raise outcome.__cause__ if isinstance(outcome.__cause__, PotluckError) else outcome
            self._done.add(result.instruction_id)
        return False

    def _decode(self, result: IncomingResult, node_id: str, ins: _Open) -> Outcome:
        if ins.kind == "exchange":  # a protocol reply: opaque bytes for the coordinator's driver
            return ExchangeReply(node_id, bytes(result.payload))  # protocol messages are parsed as bytes (JSON)
        if ins.kind == "evaluate":  # 0 examples: the node has no validation split
            return EvaluateResult(ins.round, node_id, result.loss, result.num_examples, dict(result.metrics))
        if result.num_examples <= 0:
            return self._invalid_result(node_id, "bad_examples", ParamsError(f"result reports {result.num_examples} examples"))
        try:
            params = Params.decode(result.payload)
        except ParamsError as exc:
            return self._invalid_result(node_id, "undecodable", exc)
        try:
            params.check_schema(self.update_schema, what=f"update from {node_id}")
        except ParamsError as exc:
            return self._invalid_result(node_id, "result_schema", exc)
        try:
            params.check_finite(what=f"update from {node_id}")
        except ParamsError as exc:
            return self._invalid_result(node_id, "non_finite", exc)
        update = params.with_kind(ParamsKind.DELTA)
        signature = None
        if result.signature or self.require_signatures:
            with self._cond:
                key = self.keys.key_of(node_id)
            canonical = bool(result.payload_digest) and update.encode() is result.payload  # no copy: a check
            digest = result.payload_digest if canonical else update_digest(update)  # hashed on arrival already
            statement = update_statement(self.run_id, ins.round, digest, result.num_examples,
                                         ins.settings)
            try:
                signature = check_signature(node_id, key, result.signature, statement)
            except SignatureError as exc:
                return self._invalid_result(node_id, "bad_signature" if result.signature and key else "unsigned", exc)
        return FitResult(ins.round, node_id, update, result.num_examples, dict(result.metrics), signature)

    def _invalid_result(self, node_id: str, reason: str, exc: PotluckError) -> NodeError:
        self.rejections[reason] += 1
        error = NodeResultInvalid(node_id, f"result refused: {exc}")
        error.__cause__ = exc
        return error

    def count_refusal(self, reason: str) -> None:
        with self._cond:
            self.rejections[reason] += 1

    def heartbeat(self, session: str, peer: str | None) -> HeartbeatInfo:
        head = self.ledger.head() if self.ledger is not None else None
        with self._cond:
            node = self._node_for(session, peer)
            seen = self._seen.get(node.info.node_id)
            # A node that checks the ledger has heard the end once it verified the last head.
            if self.finished and (seen is None or head is None or seen == head.hash):
                self._told_finished.add(node.info.node_id)
                self._cond.notify_all()
            return HeartbeatInfo(self.current_round, self.finished, head.hash if head else "", head.round if head else 0)

    # -- ledger queries (LedgerHandler) -------------------------------------------------

    def ledger_head(self) -> tuple[int, str] | None:
        head = self.ledger.head() if self.ledger is not None else None
        return None if head is None else (head.round, head.hash)

    def _ledger_for(self, session: str, peer: str | None) -> tuple[Ledger, str]:
        with self._cond:
            node_id = self._node_for(session, peer).info.node_id
        if self.ledger is None:
            raise LedgerError("this server keeps no ledger")
        return self.ledger, node_id

    def ledger_since(self, session: str, head: str, limit: int, peer: str | None) -> LedgerHeaders:
        ledger, _ = self._ledger_for(session, peer)
        headers, more = ledger.headers_since(head, limit)
        return LedgerHeaders(tuple(headers), more)

    def ledger_proof(self, session: str, rnd: int, peer: str | None) -> ProofInfo:
        """Only the caller's own contribution: nodes do not learn each other's updates or weights."""
        ledger, node_id = self._ledger_for(session, peer)
        proof = ledger.proof(rnd, node_id)
        if proof is None:
            return ProofInfo(False)
        return ProofInfo(True, canonical(proof.contribution), proof.index, proof.size, proof.path)

    def ledger_seen(self, session: str, head: str, peer: str | None) -> None:
        with self._cond:
            self._seen[self._node_for(session, peer).info.node_id] = head

    def leave(self, session: str, reason: str, peer: str | None) -> None:
        with self._cond:
            node = self._node_for(session, peer)
            del self._nodes[node.info.node_id]
            del self._sessions[session]
            for ins_id, ins in list(self._open.items()):
                if ins.node_id == node.info.node_id:
                    del self._open[ins_id]
                    self._closed[ins_id] = "the node left"
                    self._outcomes.append((ins_id, NodeLeft(ins.node_id, f"left the run: {reason or 'no reason given'}")))
            self._cond.notify_all()

    # -- pool side: called by the coordinator ---------------------------------------

    def node_ids(self) -> Sequence[str]:
        with self._cond:
            now = self.clock()
            return sorted(n for n, node in self._nodes.items() if now - node.last_seen <= self.node_ttl)

    def node_info(self, node_id: str) -> JoinInfo | None:
        """What a connected node reported at join (examples, CPUs, memory, GPUs)."""
        with self._cond:
            node = self._nodes.get(node_id)
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
        return self._dispatch("fit", instructions, timeout)  # type: ignore[return-value]

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self._dispatch("evaluate", instructions, timeout)  # type: ignore[return-value]

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """One step of a multi-message protocol (secure aggregation) for each node in
        ``payloads``: an EXCHANGE instruction whose answer is the node's reply bytes."""
        rnd = self.current_round
        sends = [(node, rnd, "exchange", {"step": step}, 0, payload, payload_digest(payload))
                 for node, payload in payloads.items()]
        return self._send(sends, timeout)  # type: ignore[return-value]

    def _dispatch(self, kind: str, instructions: Sequence[Instruction], timeout: float) -> Iterator[Outcome]:
        encoded: dict[str, tuple[bytes, str]] = {}  # params digest -> (bytes, wire digest); encoded once
        sends = []
        for ins in instructions:
            if ins.params.digest not in encoded:
                data = ins.params.encode()
                encoded[ins.params.digest] = (data, payload_digest(data))
            seed = ins.seed if isinstance(ins, FitInstruction) else 0
            sends.append((ins.node_id, ins.round, kind, dict(ins.config), seed, *encoded[ins.params.digest]))
        return self._send(sends, timeout)

    def _send(self, sends: Sequence[tuple[str, int, str, dict[str, Any], int, bytes, str]],
              timeout: float) -> Iterator[Outcome]:
        """Put each ``(node, round, kind, config, seed, payload, digest)`` in its node's
        inbox, then yield one outcome per node as results arrive, until ``timeout``."""
        deadline = self.clock() + timeout
        waiting: dict[str, str] = {}  # instruction id -> node id
        early: list[Outcome] = []
        head = self.ledger.head() if self.ledger is not None else None
        with self._cond:
            for node_id, rnd, kind, config, seed, payload, digest in sends:
                self.current_round = max(self.current_round, rnd)
                node = self._nodes.get(node_id)
                if node is None:
                    early.append(NodeLeft(node_id, "not connected"))
                    continue
                ins_id = secrets.token_hex(12)
                node.inbox.append(OutgoingInstruction(ins_id, self.run_id, rnd, kind, config, seed,  # type: ignore[arg-type]
                                                      payload, digest, head.hash if head else "",
                                                      head.round if head else 0))
                self._open[ins_id] = _Open(node_id, rnd, kind, settings_digest(config))
                waiting[ins_id] = node_id
            self._cond.notify_all()
        yield from early
        while waiting:
            ready: list[Outcome] = []
            with self._cond:
                now = self.clock()
                if now >= deadline:
                    break
                while self._outcomes:
                    ins_id, outcome = self._outcomes.popleft()
                    if waiting.pop(ins_id, None) is not None:
                        ready.append(outcome)
                for ins_id, node_id in list(waiting.items()):
                    node = self._nodes.get(node_id)
                    if node is None or now - node.last_seen > self.node_ttl:
                        del waiting[ins_id]
                        self._close(ins_id, "the node went silent")
                        ready.append(NodeFailed(node_id, f"lost: no call from it for over {self.node_ttl:g} s"))
                if not ready and waiting:
                    self._cond.wait(min(0.2, max(0.0, deadline - now)))
            yield from ready
        with self._cond:
            for ins_id in waiting:
                self._close(ins_id, "the round deadline passed")
        for node_id in waiting.values():
            yield NodeTimedOut(node_id, f"no result within the round deadline of {timeout:g} s")

    def _close(self, ins_id: str, why: str) -> None:
        self._open.pop(ins_id, None)
        self._closed[ins_id] = why
        for node in self._nodes.values():
            node.inbox = collections.deque(i for i in node.inbox if i.instruction_id != ins_id)
            node.pulled.pop(ins_id, None)

    def close(self, linger: float = 0.0) -> None:
        """Tell every node the run is over (heartbeats report it); wait up to ``linger``
        seconds until every live node has heard, so nodes exit by themselves."""
        deadline = self.clock() + linger
        with self._cond:
            self.finished = True
            self._cond.notify_all()
            while self.clock() < deadline:
                live = {n for n, node in self._nodes.items() if self.clock() - node.last_seen <= self.node_ttl}
                if live <= self._told_finished:
                    break
                self._cond.wait(0.1)
