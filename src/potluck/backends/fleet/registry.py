"""Which nodes may join, which have, and which are live.

A join is checked against the allow-list, the model id and the parameter schema (an
empty schema digest only asks what to build, and registers nothing), then the node's
signing key is registered (:class:`~potluck.ledger.signing.NodeKeys`). Each joined node
gets a session; every later call names it, and with mutual TLS the certificate's node
id must match it. A node is *live* while it has called within ``node_ttl`` seconds.

Bounds: a node that leaves is dropped at once; one silent for ``forget_after`` seconds
is forgotten (at most once every ``forget_after / 8`` seconds the registry looks), so
its session expires and its next call is refused with ``UnknownId``, after which the
node joins again. Live nodes are kept: with mutual TLS, their number is bounded by the
certificates the CA issued (and by the allow-list, when there is one).
"""

from __future__ import annotations

import collections
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from potluck.backends.fleet.bounded import RejectionCounts
from potluck.core.errors import AccessDenied, ParamsError, SchemaMismatch, SignatureError, UnknownId
from potluck.ledger.signing import NodeKeys
from potluck.transport.fleet_messages import JoinInfo, OutgoingInstruction

log = logging.getLogger(__name__)


@dataclass
class NodeEntry:
    """A joined node: what it reported, its session, its last call, its instructions."""

    info: JoinInfo
    session: str
    last_seen: float
    inbox: collections.deque[OutgoingInstruction] = field(default_factory=collections.deque)
    pulled: dict[str, OutgoingInstruction] = field(default_factory=dict)  # handed out, not yet answered

    @property
    def node_id(self) -> str:
        return self.info.node_id


@dataclass(frozen=True)
class Joined:
    """A node's entry after a join, and the entry it replaced (a rejoin) if any."""

    entry: NodeEntry
    replaced: NodeEntry | None


@dataclass(frozen=True)
class JoinRules:
    """What a joining node must match."""

    model_id: str
    schema_digest: str
    require_signatures: bool = True  # False only for tests of the transport itself
    max_examples: int = 100_000_000  # a node may declare at most this many training examples


class NodeRegistry:
    """Joined nodes by id and by session; callers hold the pool's lock."""

    def __init__(self, rules: JoinRules, *, allow: set[str] | None, keys: NodeKeys, node_ttl: float,
                 forget_after: float, clock: Callable[[], float], rejections: RejectionCounts) -> None:
        if forget_after < node_ttl:
            raise ValueError(f"forget_after ({forget_after:g} s) must be at least node_ttl ({node_ttl:g} s)")
        self.rules, self.allow, self.keys = rules, allow, keys
        self.node_ttl, self.forget_after, self.clock = node_ttl, forget_after, clock
        self.rejections = rejections
        self._nodes: dict[str, NodeEntry] = {}
        self._sessions: dict[str, str] = {}  # session -> node id
        self._looked = clock()

    def check(self, info: JoinInfo) -> None:
        """Raise the specific error for a node that may not join this run."""
        rules = self.rules
        if self.allow is not None and info.node_id not in self.allow:
            self.rejections.note("not_allowed")
            raise AccessDenied(f"node {info.node_id!r} is not on this server's allow-list")
        if info.task_name != rules.model_id:
            self.rejections.note("model_id")
            raise SchemaMismatch(f"this server trains model {rules.model_id!r}, node {info.node_id!r} runs {info.task_name!r}")
        if info.schema_digest and info.schema_digest != rules.schema_digest:
            self.rejections.note("schema")
            raise SchemaMismatch(
                f"node {info.node_id!r} builds parameters with schema {info.schema_digest[:12]}…, "
                f"this run's model has {rules.schema_digest[:12]}…"
            )
        if info.num_examples > rules.max_examples:
            self.rejections.note("bad_examples")
            raise ParamsError(f"node {info.node_id!r} declares {info.num_examples:,} training examples; this server "
                              f"takes at most {rules.max_examples:,} from one node (--max-examples)")

    def join(self, info: JoinInfo) -> Joined:
        """Register a checked node under a new session; its old session, if any, ends."""
        self._register_key(info)
        old = self._nodes.get(info.node_id)
        if old is not None:
            self._sessions.pop(old.session, None)
        entry = NodeEntry(info, secrets.token_hex(16), self.clock())
        self._nodes[info.node_id] = entry
        self._sessions[entry.session] = info.node_id
        log.info("node %s %s: %d examples, %d CPUs, %.1f GiB, %d GPUs", info.node_id,
                 "rejoined" if old else "joined", info.num_examples, info.cpus, info.memory_bytes / 2**30, info.gpus)
        return Joined(entry, old)

    def _register_key(self, info: JoinInfo) -> None:
        if not info.public_key:
            if self.rules.require_signatures:
                self.rejections.note("no_key")
                raise SignatureError(f"node {info.node_id!r} registered no signing key; this server requires "
                                     "signed updates (update the node)")
            return
        try:
            self.keys.register(info.node_id, info.public_key, info.certificate)
        except AccessDenied:
            self.rejections.note("key_changed")
            raise
        except SignatureError:
            self.rejections.note("bad_key")
            raise

    def node_for(self, session: str, peer: str | None) -> NodeEntry:
        """The node a call comes from, marked as seen now; the specific error otherwise."""
        node_id = self._sessions.get(session)
        if node_id is None:
            self.rejections.note("unknown_session")
            raise UnknownId("unknown or expired session: join again")
        if peer is not None and peer != node_id:
            self.rejections.note("identity")
            raise AccessDenied(f"session belongs to node {node_id!r}, certificate says {peer!r}")
        node = self._nodes[node_id]
        node.last_seen = self.clock()
        return node

    def holds_session(self, node: NodeEntry) -> bool:
        return self._sessions.get(node.session) == node.node_id

    def get(self, node_id: str) -> NodeEntry | None:
        return self._nodes.get(node_id)

    def entries(self) -> Iterator[NodeEntry]:
        return iter(self._nodes.values())

    def remove(self, node: NodeEntry) -> None:
        self._nodes.pop(node.node_id, None)
        self._sessions.pop(node.session, None)

    def is_live(self, node: NodeEntry, now: float) -> bool:
        return now - node.last_seen <= self.node_ttl

    def live_ids(self) -> list[str]:
        now = self.clock()
        return sorted(n for n, node in self._nodes.items() if self.is_live(node, now))

    def forget_silent(self) -> list[str] | None:
        """Forget nodes silent for ``forget_after`` seconds and return their ids; None
        when the last look was too recent to look again."""
        now = self.clock()
        if now - self._looked < self.forget_after / 8:
            return None
        self._looked = now
        silent = [node for node in self._nodes.values() if now - node.last_seen > self.forget_after]
        for node in silent:
            self.remove(node)
        if silent:
            log.info("forgot %d nodes silent for over %g s", len(silent), self.forget_after)
        return [node.node_id for node in silent]

    def __len__(self) -> int:
        return len(self._nodes)
