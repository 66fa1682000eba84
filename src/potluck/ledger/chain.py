"""The provenance ledger: a signed, hash-chained log of a run, one entry per committed round.

``RUN_DIR/ledger.jsonl`` holds entry k on line k+1, as canonical JSON (sorted keys, no
spaces, ASCII). Entry 0 says how the run started; entry k ≥ 1 is round k. Each entry is
committed together with its round: it is written into the round's commit mark, and
the line is appended afterwards (see :mod:`potluck.runtime.rundir`).

An entry is a *header* plus the list of ``contributions``::

    v, kind ("run_started" | "round"), round, prev, run_id, time, model_digest,
    strategy_digest, contributions_root, contributions_count, signature, and
    run_started:  server_key, task, schema_digest, strategy, updates, config_sha256,
                  simulation
    round:        settings_digest, examples, absent, failures, attempts, privacy
    contributions: [{node, update, weight, key, signature}, ...]

- ``prev`` is the hash of the previous entry (64 zeros for entry 0), and an entry's hash
  is the SHA-256 of its canonical header. The header binds the contributions through
  their Merkle root (:mod:`potluck.ledger.merkle`, one leaf per contribution's
  canonical JSON) and count, so nodes can follow the chain from headers alone and check
  their own contribution with an inclusion proof, without seeing the others'.
- ``signature`` is the server's Ed25519 signature over ``potluck.ledger.v1\\n`` and the
  canonical header without it; ``server_key`` (entry 0) is the key that verifies every
  entry of the run.
- Each contribution carries the node's signature over the statement of
  :func:`potluck.core.digests.update_statement`, with the round's
  ``settings_digest``; ``absent`` lists the nodes asked whose update is not in the round
  and why, ``failures`` counts them by reason, ``privacy`` holds the ε (and δ) spent so
  far when the run accounts for it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from potluck.core.digests import update_statement
from potluck.core.errors import LedgerError
from potluck.core.layout import LEDGER_FILE_NAME
from potluck.core.messages import Scalar
from potluck.core.records import RoundRecord
from potluck.ledger import merkle
from potluck.ledger.signing import SigningKey, public_bytes, verify

VERSION = 1
ZERO_HASH = "0" * 64
ENTRY_TAG = b"potluck.ledger.v1\n"
FILE_NAME = LEDGER_FILE_NAME

Entry = dict[str, Any]
_Known = tuple[Entry, merkle.MerkleTree, dict[str, int]]  # an entry, its tree, node -> leaf index


# -- encoding and hashing ---------------------------------------------------------------

def canonical(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII, no NaN: the bytes that are hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def header_of(entry: Mapping[str, Any]) -> Entry:
    return {k: v for k, v in entry.items() if k != "contributions"}


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hash the next entry names as ``prev``: SHA-256 of the canonical header."""
    return hashlib.sha256(canonical(header_of(entry))).hexdigest()


def signed_bytes(entry: Mapping[str, Any]) -> bytes:
    return ENTRY_TAG + canonical({k: v for k, v in header_of(entry).items() if k != "signature"})


def contributions_root(contributions: Sequence[Mapping[str, Any]]) -> str:
    return merkle.root([canonical(c) for c in contributions]).hex()


def contribution_statement(run_id: str, rnd: int, settings: str, c: Mapping[str, Any]) -> bytes:
    return update_statement(run_id, rnd, c["update"], c["weight"], settings)


# -- checks shared by the server, the nodes and `potluck ledger verify` -------------------

def header_problem(header: Mapping[str, Any], index: int, prev: str, server_key: bytes) -> str | None:
    """Why ``header`` cannot be entry ``index`` after an entry hashing to ``prev``,
    signed by ``server_key``; ``None`` if it can."""
    try:
        if header.get("v") != VERSION:
            return f"unknown entry version {header.get('v')!r}"
        want = "run_started" if index == 0 else "round"
        if header.get("kind") != want or header.get("round") != index:
            return f"it is not entry {index} (kind {header.get('kind')!r}, round {header.get('round')!r})"
        if header.get("prev") != prev:
            return f"its prev is {str(header.get('prev'))[:16]}…, the hash of the entry before is {prev[:16]}…"
        signature = bytes.fromhex(str(header.get("signature", "")))
        if not verify(server_key, signature, signed_bytes(header)):
            return "the server's signature does not verify"
    except (ValueError, TypeError) as exc:
        return f"malformed header: {exc}"
    return None


def contributions_problem(entry: Mapping[str, Any], run_id: str) -> str | None:
    """Why the contributions of ``entry`` do not match its header or their signatures."""
    try:
        contributions = entry.get("contributions")
        if not isinstance(contributions, list) or not all(isinstance(c, dict) for c in contributions):
            return "its contributions are not a list of objects"
        if entry.get("contributions_count") != len(contributions):
            return f"it lists {len(contributions)} contributions, its header says {entry.get('contributions_count')}"
        if contributions_root(contributions) != entry.get("contributions_root"):
            return "the Merkle root of its contributions is not the one its header names"
        for i, c in enumerate(contributions):
            statement = contribution_statement(run_id, int(entry["round"]), str(entry.get("settings_digest", "")), c)
            if not verify(bytes.fromhex(c.get("key", "")), bytes.fromhex(c.get("signature", "")), statement):
                return f"contribution {i} ({c.get('node')}): the node's signature does not verify"
    except (ValueError, TypeError, KeyError) as exc:
        return f"malformed contributions: {exc}"
    return None


# -- the file ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LedgerFile:
    """``ledger.jsonl`` read back: the entries of its complete lines (``None`` for a line
    that is not a JSON object), and whether a torn last line (no newline) followed."""

    entries: list[Entry | None]
    torn: bool


def read_ledger_file(path: Path) -> LedgerFile:
    """Raises ``OSError`` when the file cannot be read (a missing file reads as empty)."""
    if not path.exists():
        return LedgerFile([], False)
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    entries: list[Entry | None] = []
    for line in lines[:-1]:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        entries.append(entry if isinstance(entry, dict) else None)
    return LedgerFile(entries, bool(lines[-1]))


# -- the server's side ------------------------------------------------------------------

@dataclass(frozen=True)
class RunStart:
    """What entry 0 records of how the run was set up. ``updates`` is the update pipeline
    as sent to nodes (privacy and compression stages); ``config_sha256`` is the SHA-256
    of ``config.toml``; ``simulation`` marks keys derived from the seed."""

    task: str
    schema_digest: str
    strategy: str
    strategy_options: Mapping[str, Scalar]
    updates: Mapping[str, Scalar]
    config_sha256: str
    simulation: bool = False


@dataclass(frozen=True)
class Head:
    round: int
    hash: str


@dataclass(frozen=True)
class InclusionProof:
    """Leaf ``index`` of ``size`` in round ``round``'s contribution tree."""

    round: int
    index: int
    size: int
    contribution: Entry
    path: tuple[bytes, ...]

    def root(self) -> bytes | None:
        return merkle.root_from_path(canonical(self.contribution), self.index, self.size, self.path)


class Ledger:
    """Seals entries for the run directory to commit, and serves what nodes ask for.

    :meth:`seal` builds entry k for round k (it needs entry k−1 to have been
    :meth:`advance`-d or :meth:`restore`-d); the run directory writes it into the commit
    mark and calls :meth:`advance` once the mark is durable. Thread-safe: gRPC threads
    read :meth:`head`, :meth:`headers_since` and :meth:`proof` while rounds commit.
    ``loader(round)`` returns a committed entry (the run directory reads its mark); the
    latest ones are kept in memory.
    """

    def __init__(self, key: SigningKey, start: RunStart, *, run_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.key, self.start, self.run_id, self.clock = key, start, run_id, clock
        self.server_key = public_bytes(key)
        self.loader: Callable[[int], Mapping[str, Any]] | None = None
        self._lock = threading.Lock()
        self._headers: list[bytes] = []  # canonical header of entry k at index k
        self._hashes: dict[str, int] = {}
        self._recent: collections.OrderedDict[int, _Known] = collections.OrderedDict()

    # -- writing ----------------------------------------------------------------------

    def seal(self, record: RoundRecord, model_sha256: str, strategy_sha256: str) -> Entry:
        rnd = record.round
        head = self.head()
        if rnd != (0 if head is None else head.round + 1):
            raise LedgerError(f"cannot seal round {rnd}: the ledger's last entry is "
                              f"{'none' if head is None else head.round}")
        entry: Entry = {
            "v": VERSION, "round": rnd, "prev": ZERO_HASH if head is None else head.hash, "run_id": self.run_id,
            "time": datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="seconds"),
            "model_digest": model_sha256, "strategy_digest": strategy_sha256,
        }
        if rnd == 0:
            s = self.start
            entry.update(kind="run_started", server_key=self.server_key.hex(), task=s.task,
                         schema_digest=s.schema_digest, strategy={"name": s.strategy, "options": dict(s.strategy_options)},
                         updates=dict(s.updates), config_sha256=s.config_sha256, simulation=s.simulation)
            contributions: list[Entry] = []
        else:
            prov = record.provenance
            contributions = [] if prov is None else [
                {"node": c.node_id, "update": c.update_digest, "weight": c.weight, "key": c.public_key,
                 "signature": c.signature} for c in prov.contributions]
            absent = [] if prov is None else [{"node": n, "reason": r} for n, r in prov.absent]
            entry.update(kind="round", settings_digest=prov.settings_digest if prov else "",
                         examples=sum(c["weight"] for c in contributions), absent=absent,
                         failures=dict(record.failures), attempts=record.attempts, privacy=_privacy(record))
        entry.update(contributions_root=contributions_root(contributions), contributions_count=len(contributions))
        entry["signature"] = self.key.sign(signed_bytes(entry)).hex()
        entry["contributions"] = contributions
        return entry

    def advance(self, entry: Entry) -> None:
        """Entry ``entry`` is committed: it becomes the head nodes are shown."""
        header = canonical(header_of(entry))
        with self._lock:
            self._hashes[hashlib.sha256(header).hexdigest()] = len(self._headers)
            self._headers.append(header)
            self._remember(entry)

    def restore(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Continue after committed ``entries`` (from the commit marks, on resume).

        Raises :class:`LedgerError` when they do not chain, are not signed by this
        server's key, or belong to another run.
        """
        prev = ZERO_HASH
        for index, entry in enumerate(entries):
            problem = header_problem(entry, index, prev, self.server_key)
            if problem is not None and index == 0 and entry.get("server_key") != self.server_key.hex():
                problem = (f"the run's ledger is signed by server key {str(entry.get('server_key'))[:16]}…, "
                           f"this server's key is {self.server_key.hex()[:16]}…; resume with the key the run "
                           "started with")
            if problem is not None:
                raise LedgerError(f"ledger entry {index}: {problem}")
            prev = entry_hash(entry)
        if entries:
            self.run_id = str(entries[0]["run_id"])
        with self._lock:
            self._headers = [canonical(header_of(entry)) for entry in entries]
            self._hashes = {hashlib.sha256(h).hexdigest(): i for i, h in enumerate(self._headers)}
            self._recent = collections.OrderedDict()
            if entries:
                self._remember(dict(entries[-1]))

    # -- reading (gRPC threads) -------------------------------------------------------

    def head(self) -> Head | None:
        with self._lock:
            if not self._headers:
                return None
            return Head(len(self._headers) - 1, hashlib.sha256(self._headers[-1]).hexdigest())

    def headers_since(self, head: str, limit: int = 256) -> tuple[list[bytes], bool]:
        """Canonical headers of the entries after the one hashing to ``head`` ("" : all),
        at most ``limit``; and whether more follow. :class:`LedgerError` if ``head`` is
        no entry of this ledger (the caller saw another history)."""
        with self._lock:
            if head:
                if head not in self._hashes:
                    raise LedgerError(f"ledger head {head[:16]}… is not an entry of run {self.run_id}'s ledger")
                first = self._hashes[head] + 1
            else:
                first = 0
            chosen = self._headers[first:first + max(1, limit)]
            return chosen, first + len(chosen) < len(self._headers)

    def proof(self, rnd: int, node_id: str) -> InclusionProof | None:
        """``node_id``'s contribution to round ``rnd`` with its inclusion proof; ``None``
        if the round has no contribution of that node. :class:`LedgerError` if the round
        is not committed."""
        with self._lock:
            known = self._recent.get(rnd)
            committed = 0 <= rnd < len(self._headers)
        if not committed:
            raise LedgerError(f"round {rnd} is not committed in run {self.run_id}'s ledger")
        if known is None:
            if self.loader is None:
                raise LedgerError(f"round {rnd}'s entry is not at hand")
            entry = dict(self.loader(rnd))
            with self._lock:
                known = self._remember(entry)
        entry, tree, where = known
        index = where.get(node_id)
        if index is None:
            return None
        return InclusionProof(rnd, index, tree.size, entry["contributions"][index], tuple(tree.path(index)))

    def _remember(self, entry: Entry) -> _Known:
        """Keep the last few entries and their trees (nodes all ask about the latest)."""
        contributions = entry.get("contributions", [])
        known = (entry, merkle.MerkleTree([canonical(c) for c in contributions]),
                 {c["node"]: i for i, c in enumerate(contributions)})
        self._recent[int(entry["round"])] = known
        while len(self._recent) > 4:
            self._recent.popitem(last=False)
        return known


def _privacy(record: RoundRecord) -> dict[str, float | None]:
    """The privacy spent so far, from the record's extras (when the run accounts for it)."""
    out: dict[str, float | None] = {}
    for name in ("epsilon", "delta"):
        if name in record.extras:
            value = float(record.extras[name])
            out[name] = value if math.isfinite(value) else None
    return out
