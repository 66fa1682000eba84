"""SecAgg+ as two state machines, one per side: bytes in, bytes out, no I/O.

One session per (round, attempt) and per sampled set of nodes. The server relays every
message; it never sees a private key, a self-mask seed or a share in the clear::

    step       server → node i                      node i → server
    advertise  session, threshold                   c_pk_i, s_pk_i   (two X25519 keys)
    share      neighbours' keys and share points    Enc_ij(b-share ‖ s-share) per neighbour j
    deliver    Enc_ji from each neighbour j          ack
    (fit)      —                                    y_i = q_i + PRG(b_i) + Σ ±PRG(s_ij)  mod 2^32
    unmask     survivors U3, dropped U2 \\ U3       b-shares of survivors, s-shares of dropped

Nodes that answered ``advertise`` form U1, the graph is built over U1 (``graph.py``),
those that answered ``share`` form U2 (every node masks with its neighbours in U2),
those whose masked input arrived form U3. For a survivor the server rebuilds b_i from t
shares and removes PRG(b_i); for a node of U2 that dropped it rebuilds s_sk_i and
removes the masks its surviving neighbours added for it. An honest node never reveals
both shares of one neighbour, so with t > k/2 the server can never unmask a single
input. Shares are encrypted with AES-256-GCM under HKDF(X25519(c_sk_i, c_pk_j)), bound
to (session, sender, recipient) as associated data.

Messages are JSON objects, bytes as base64. Node-side state (:class:`NodeSession`)
holds only bytes, ints and strings, so it pickles (the process pool moves it).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from potluck.core.errors import StrategyError
from potluck.updates.secagg import shamir
from potluck.updates.secagg.graph import neighbourhoods
from potluck.updates.secagg.masking import MASK_INFO, Keystream, adds_pairwise, agree_all

SHARE_INFO = b"potluck/secagg/v1/share"
STEPS = ("advertise", "share", "deliver", "unmask")
_RAW = serialization.Encoding.Raw


def pack(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StrategyError(f"secure aggregation: malformed {what} message: {exc}") from None
    if not isinstance(obj, dict):
        raise StrategyError(f"secure aggregation: malformed {what} message")
    return obj


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise StrategyError(f"secure aggregation: {what} is not base64") from None


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (private, public) pair, raw 32 bytes each."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return private, key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def _aad(session: str, sender: str, recipient: str) -> bytes:
    return f"{session}|{sender}|{recipient}".encode()


@dataclass
class NodeSession:
    """One node's side of one session. Drive it with :meth:`handle`, mask with :meth:`mask`."""

    session: str
    node: str
    threshold: int
    c_private: bytes = b""
    s_private: bytes = b""
    self_seed: bytes = b""
    keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # neighbour → (c_pk, s_pk)
    share_keys: dict[str, bytes] = field(default_factory=dict)  # neighbour → AES-GCM key of its shares, both ways
    mask_keys: dict[str, bytes] = field(default_factory=dict)  # neighbour → PRG key of our pairwise mask
    received: dict[str, bytes] = field(default_factory=dict)  # neighbour in U2 → its encrypted shares for us
    masked: bool = False
    unmasked: bool = False

    @classmethod
    def start(cls, request: bytes, node: str) -> tuple[NodeSession, bytes]:
        """Step ``advertise``: a new session and its reply (two fresh public keys)."""
        msg = unpack(request, "advertise")
        threshold = msg.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise StrategyError(f"secure aggregation: bad threshold {threshold!r}")
        me = cls(str(msg.get("session")), node, threshold)
        me.c_private, c_public = keypair()
        me.s_private, s_public = keypair()
        me.self_seed = secrets.token_bytes(32)
        return me, pack({"c": b64(c_public), "s": b64(s_public)})

    def handle(self, step: str, request: bytes) -> bytes:
        """Steps after ``advertise``; raises StrategyError for a request out of order or malformed."""
        msg = unpack(request, step)
        if msg.get("session") != self.session:
            raise StrategyError(f"secure aggregation: {step} for session {msg.get('session')!r}, "
                                f"this node is in {self.session!r}")
        if step == "share":
            return self._share(msg)
        if step == "deliver":
            return self._deliver(msg)
        if step == "unmask":
            return self._unmask(msg)
        raise StrategyError(f"secure aggregation: unknown step {step!r}")

    def _share(self, msg: dict[str, Any]) -> bytes:
        if self.keys:
            raise StrategyError("secure aggregation: keys were already shared in this session")
        neighbours = msg.get("neighbours")
        if not isinstance(neighbours, dict) or len(neighbours) < self.threshold:
            raise StrategyError(f"secure aggregation: fewer neighbours than the threshold {self.threshold}")
        points = {}
        for j, entry in neighbours.items():
            if j == self.node:
                raise StrategyError("secure aggregation: a node cannot be its own neighbour")
            self.keys[j] = (unb64(entry["c"], "a key"), unb64(entry["s"], "a key"))
            points[j] = int(entry["x"])
        # Both agreements per neighbour now, each private key loaded once: the masks and
        # the unmask step reuse them (an X25519 operation is ~50 µs, 2k of them a node per round).
        self.share_keys = agree_all(self.c_private, {j: c for j, (c, _) in self.keys.items()}, SHARE_INFO)
        self.mask_keys = agree_all(self.s_private, {j: s for j, (_, s) in self.keys.items()}, MASK_INFO)
        b_shares = shamir.split(int.from_bytes(self.self_seed, "big"), self.threshold, points.values())
        s_shares = shamir.split(int.from_bytes(self.s_private, "big"), self.threshold, points.values())
        out = {}
        for j, x in points.items():
            nonce = os.urandom(12)
            plain = shamir.to_bytes(b_shares[x]) + shamir.to_bytes(s_shares[x])
            out[j] = b64(nonce + AESGCM(self.share_keys[j]).encrypt(nonce, plain, _aad(self.session, self.node, j)))
        return pack({"ct": out})

    def _deliver(self, msg: dict[str, Any]) -> bytes:
        if not self.keys or self.received or self.masked:
            raise StrategyError("secure aggregation: deliver out of order")
        for i, ct in dict(msg.get("ct", {})).items():
            if i not in self.keys:
                raise StrategyError(f"secure aggregation: shares from {i}, which is not a neighbour")
            self.received[i] = unb64(ct, "a ciphertext")
        return pack({"ok": len(self.received)})

    def mask(self, codes: np.ndarray) -> np.ndarray:
        """``codes`` (uint32) plus the self-mask and a pairwise mask per neighbour in U2,
        mod 2^32. Once per session: two inputs under the same masks would leak their difference."""
        if self.masked:
            raise StrategyError("secure aggregation: this node already sent its masked input in this session")
        if not self.keys:
            raise StrategyError("secure aggregation: no key agreement for this session")
        self.masked = True
        out = codes.astype(np.uint32, copy=True).reshape(-1)
        stream = Keystream(out.size)
        stream.add(out, self.self_seed)
        for j in sorted(self.received):
            stream.add(out, self.mask_keys[j], subtract=not adds_pairwise(self.node, j))
        return out.reshape(codes.shape)

    def _unmask(self, msg: dict[str, Any]) -> bytes:
        survivors, dropped = set(msg.get("survivors", ())), set(msg.get("dropped", ()))
        if self.unmasked:
            raise StrategyError("secure aggregation: unmask was already answered in this session")
        if survivors & dropped:
            raise StrategyError("secure aggregation: the server listed a node as both survivor and dropped")
        if len(survivors) < self.threshold:
            raise StrategyError(f"secure aggregation: only {len(survivors)} survivors, below the threshold")
        self.unmasked = True
        b_out, s_out = {}, {}
        for i, blob in self.received.items():
            if i not in survivors and i not in dropped:
                continue
            try:
                plain = AESGCM(self.share_keys[i]).decrypt(blob[:12], blob[12:], _aad(self.session, i, self.node))
            except InvalidTag:
                raise StrategyError(f"secure aggregation: shares from {i} do not decrypt") from None
            half = shamir.SHARE_BYTES
            if i in survivors:
                b_out[i] = b64(plain[:half])
            else:
                s_out[i] = b64(plain[half:])
        return pack({"b": b_out, "s": s_out})


class ServerSession:
    """The server's side of one session over ``nodes`` (the round's sample).

    Call the ``*_requests`` / ``collect_*`` pairs in order, :meth:`add` each masked
    input, then :meth:`unmask_requests` and :meth:`collect_unmask`, which returns the
    plain sum of the survivors' inputs. Raises StrategyError when too many nodes
    dropped for the threshold.
    """

    def __init__(self, session: str, nodes: Sequence[str], *, degree: int, threshold: int, seed: int) -> None:
        self.session, self.nodes, self.degree, self.threshold, self.seed = session, list(nodes), degree, threshold, seed
        self.x = {v: i + 1 for i, v in enumerate(sorted(self.nodes))}  # share points
        self.keys: dict[str, tuple[bytes, bytes]] = {}
        self.graph: dict[str, frozenset[str]] = {}
        self.u2: dict[str, dict[str, str]] = {}  # sender → {recipient: ciphertext}
        self.total: np.ndarray | None = None
        self.u3: list[str] = []

    def advertise_requests(self) -> dict[str, bytes]:
        body = pack({"session": self.session, "threshold": self.threshold})
        return {v: body for v in self.nodes}

    def collect_advertise(self, replies: Mapping[str, bytes]) -> dict[str, str]:
        """Keep the keys of U1 and build the graph over it; returns {node: why} for refused replies."""
        refused = {}
        for v, data in replies.items():
            try:
                msg = unpack(data, "advertise reply")
                c, s = unb64(msg.get("c"), "a key"), unb64(msg.get("s"), "a key")
            except StrategyError as exc:
                refused[v] = str(exc)
                continue
            if v not in self.x or len(c) != 32 or len(s) != 32:
                refused[v] = "keys of the wrong size, or not a node of this session"
                continue
            self.keys[v] = (c, s)
        u1 = [v for v in self.nodes if v in self.keys]
        self.graph = neighbourhoods(u1, self.degree, self.seed)
        self._need(len(u1) - 1, f"only {len(u1)} nodes advertised keys")
        return refused

    def _need(self, have: int, why: str) -> None:
        if have < self.threshold:
            raise StrategyError(f"secure aggregation: {why}; the threshold needs {self.threshold} neighbours "
                                f"per node (secagg_threshold), so the round cannot be unmasked")

    def share_requests(self) -> dict[str, bytes]:
        out = {}
        for v, near in self.graph.items():
            entries = {j: {"c": b64(self.keys[j][0]), "s": b64(self.keys[j][1]), "x": self.x[j]} for j in near}
            out[v] = pack({"session": self.session, "neighbours": entries})
        return out

    def collect_share(self, replies: Mapping[str, bytes]) -> dict[str, str]:
        """Keep the encrypted shares of U2; returns {node: why} for refused replies."""
        refused = {}
        for v, data in replies.items():
            try:
                ct = unpack(data, "share reply").get("ct")
            except StrategyError as exc:
                refused[v] = str(exc)
                continue
            if v not in self.graph or not isinstance(ct, dict) or set(ct) != set(self.graph[v]) \
                    or not all(isinstance(c, str) for c in ct.values()):
                refused[v] = "not one encrypted share per neighbour"
                continue
            self.u2[v] = ct
        return refused

    def deliver_requests(self) -> dict[str, bytes]:
        out = {}
        for v in self.u2:
            incoming = {i: self.u2[i][v] for i in self.graph[v] if i in self.u2}
            self._need(len(incoming), f"node {v} has {len(incoming)} neighbours left after key sharing")
            out[v] = pack({"session": self.session, "ct": incoming})
        return out

    def add(self, node: str, masked: np.ndarray) -> None:
        """Fold one masked input (uint32) into the ring sum; once per node of U2."""
        if node not in self.u2 or node in self.u3:
            raise StrategyError(f"secure aggregation: unexpected masked input from {node}")
        vec = np.asarray(masked, dtype=np.uint32).reshape(-1)
        if self.total is None:
            self.total = np.zeros(vec.size, np.uint32)
        if vec.size != self.total.size:
            raise StrategyError(f"secure aggregation: masked input from {node} has {vec.size} values, "
                                f"expected {self.total.size}")
        self.total += vec
        self.u3.append(node)

    def unmask_requests(self) -> dict[str, bytes]:
        survivors = sorted(self.u3)
        dropped = sorted(set(self.u2) - set(self.u3))
        body = pack({"session": self.session, "survivors": survivors, "dropped": dropped})
        return {v: body for v in survivors}

    def collect_unmask(self, replies: Mapping[str, bytes]) -> np.ndarray:
        """The sum of the survivors' inputs mod 2^32, masks removed."""
        if self.total is None:
            raise StrategyError("secure aggregation: no masked inputs to unmask")
        b_shares: dict[str, dict[int, int]] = {}
        s_shares: dict[str, dict[int, int]] = {}
        for j, data in replies.items():
            try:  # a malformed answer counts as no answer
                msg = unpack(data, "unmask reply")
                got = {kind: {i: shamir.from_bytes(unb64(share, "a share")) for i, share in dict(msg.get(kind, {})).items()
                              if i in self.graph.get(j, ())} for kind in ("b", "s")}
            except (StrategyError, TypeError, ValueError):
                continue
            for kind, into in (("b", b_shares), ("s", s_shares)):
                for i, share in got[kind].items():
                    into.setdefault(i, {})[self.x[j]] = share
        total = self.total.copy()
        survivors, stream = set(self.u3), Keystream(total.size)
        for i in sorted(self.u3):
            got = b_shares.get(i, {})
            self._need(len(got), f"{len(got)} neighbours of survivor {i} answered the unmask step")
            seed = shamir.reconstruct(dict(list(got.items())[: self.threshold]))
            stream.add(total, seed.to_bytes(32, "big"), subtract=True)
        for i in sorted(set(self.u2) - survivors):
            got = s_shares.get(i, {})
            self._need(len(got), f"{len(got)} neighbours of dropped node {i} answered the unmask step")
            private = shamir.reconstruct(dict(list(got.items())[: self.threshold])).to_bytes(32, "big")
            if public_of(private) != self.keys[i][1]:
                raise StrategyError(f"secure aggregation: the shares of {i}'s mask key do not reconstruct it")
            near = sorted(self.graph[i] & survivors)
            mask_keys = agree_all(private, {j: self.keys[j][1] for j in near}, MASK_INFO)
            for j in near:  # i's own mask for j, which i never sent: it cancels j's mask for i
                stream.add(total, mask_keys[j], subtract=not adds_pairwise(i, j))
        return total


def node_step(state: dict[str, Any], node: str, step: str, request: bytes) -> bytes:
    """A node's answer to one server step; ``state`` is the secagg slice of its update state
    (the session is kept under ``"session"`` for the ``secagg`` update stage)."""
    if step == "advertise":
        state["session"], reply = NodeSession.start(request, node)
        return reply
    session = state.get("session")
    if not isinstance(session, NodeSession):
        raise StrategyError(f"secure aggregation: {step} before advertise")
    reply = session.handle(step, request)
    if step == "unmask":
        del state["session"]  # the session is over: nothing of it is needed again
    return reply
