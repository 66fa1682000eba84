"""A node's view of the server's ledger: fork and rewrite detection, and its own inclusion.

Every instruction and heartbeat carries the server's ledger head. When it changes, the
node fetches the headers since the last head it verified and checks that they extend
it: consecutive rounds, each naming the hash of the one before, each signed by the
server key the node pinned from entry 0 the first time it looked. Then, for each new
round from the one it joined in, it asks for its own inclusion proof and checks it
against that round's Merkle root:

- it sent an update for the round: the update must be in it (same digest, its own
  key), or the entry must list the node as absent, with a reason;
- it sent none: the round must hold no contribution under its id.

Anything else raises :class:`LedgerMismatch` with the details; the last verified head
stays where it was, so a server that rewrote history cannot make the node forget what
it had seen. The state (run, pinned key, head, updates sent) is kept in a JSON file so
that it survives a restart of the node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from potluck.core.errors import LedgerError, PotluckError
from potluck.core.files import atomic_write
from potluck.ledger.chain import ZERO_HASH, InclusionProof, entry_hash, header_problem

log = logging.getLogger(__name__)

Since = Callable[[str], tuple[Sequence[bytes], bool]]
Proof = Callable[[int], InclusionProof | None]


class LedgerMismatch(LedgerError):
    """The server's ledger does not extend what this node verified before, or does not
    hold this node's contribution as it should."""


class LedgerWatch:
    def __init__(self, node_id: str, public_key: str, state_path: Path | None = None) -> None:
        self.node_id, self.public_key, self.state_path = node_id, public_key, state_path
        self.state: dict[str, Any] = self._load()

    # -- state --------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self.state_path is not None and self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text(encoding="utf-8"))
                if isinstance(state, dict):
                    return state
            except (OSError, ValueError) as exc:
                log.warning("node %s: ignoring unreadable ledger state %s: %s", self.node_id, self.state_path, exc)
        return {}

    def _save(self) -> None:
        if self.state_path is None:
            return
        try:
            atomic_write(self.state_path, json.dumps(self.state, sort_keys=True).encode())
        except PotluckError as exc:
            log.warning("node %s: cannot keep its ledger state: %s", self.node_id, exc)

    @property
    def head(self) -> str:
        """The last head this node verified ("" before the first)."""
        return str(self.state.get("head", ""))

    def start(self, run_id: str, current_round: int) -> None:
        """Joined ``run_id`` at ``current_round``; a new run starts a new view.

        Rejoining the same run (the server or the link went away) keeps the view, but the
        updates sent before are no longer sure to count: a server that restarts redoes
        the rounds it had not committed, possibly without this node.
        """
        if self.state.get("run_id") == run_id:
            unconfirmed = set(self.state.get("unconfirmed", [])) | set(self.state.get("sent", {}))
            self.state["unconfirmed"] = sorted(unconfirmed, key=int)
            self._save()
        else:
            if self.state.get("run_id"):
                log.info("node %s: a new run %s (was %s): starting a new ledger view", self.node_id, run_id,
                         self.state["run_id"])
            self.state = {"run_id": run_id, "head": "", "round": -1, "server_key": "", "sent": {},
                          "from_round": current_round + 1}
            self._save()

    def sent(self, rnd: int, digest: str) -> None:
        """This node sent an update with ``digest`` for round ``rnd``."""
        self.state.setdefault("sent", {}).setdefault(str(rnd), []).append(digest)
        self._save()

    # -- checking -----------------------------------------------------------------

    def observe(self, head: str, since: Since, proof: Proof) -> list[str]:
        """Verify the server's ledger up to ``head``; returns warnings (updates of this
        node that were not aggregated, with the server's reason). Raises
        :class:`LedgerMismatch`; a ``TransportError`` from ``since``/``proof`` passes
        through (nothing verified, try again later)."""
        if not head or head == self.head:
            return []
        headers = self._fetch(since)
        verified = self._chain(headers, head)
        warnings = [w for header in verified for w in self._inclusion(header, proof)]
        last = verified[-1]
        self.state.update(head=head, round=last["round"])
        self.state["sent"] = {r: d for r, d in self.state.get("sent", {}).items() if int(r) > last["round"]}
        self.state["unconfirmed"] = [r for r in self.state.get("unconfirmed", []) if int(r) > last["round"]]
        self._save()
        return warnings

    def _fetch(self, since: Since) -> list[dict[str, Any]]:
        start = self.head
        out: list[dict[str, Any]] = []
        cursor = start
        while True:
            try:
                chunk, more = since(cursor)
            except LedgerError as exc:
                raise LedgerMismatch(
                    f"the server no longer has entry {self.state.get('round')} ({start[:16]}…) that this node "
                    f"verified: its ledger was rewritten or forked ({exc})") from exc
            for raw in chunk:
                try:
                    header = json.loads(raw)
                except ValueError:
                    raise LedgerMismatch("the server sent a ledger header that is not JSON") from None
                if not isinstance(header, dict):
                    raise LedgerMismatch("the server sent a ledger header that is not a JSON object")
                out.append(header)
            if not more or not chunk:
                return out
            cursor = entry_hash(out[-1])

    def _chain(self, headers: list[dict[str, Any]], head: str) -> list[dict[str, Any]]:
        if not headers:
            raise LedgerMismatch(f"the server announced ledger head {head[:16]}… but sent no entry after "
                                 f"{self.head[:16] or 'the start'}…")
        index, prev = int(self.state.get("round", -1)) + 1, self.head or ZERO_HASH
        for header in headers:
            if index == 0:
                pinned = self.state.get("server_key") or ""
                if pinned and header.get("server_key") != pinned:
                    raise LedgerMismatch(f"entry 0 names server key {str(header.get('server_key'))[:16]}…, this "
                                         f"node pinned {pinned[:16]}…")
                if header.get("run_id") != self.state.get("run_id"):
                    raise LedgerMismatch(f"entry 0 is for run {header.get('run_id')!r}, not {self.state.get('run_id')!r}")
                self.state["server_key"] = str(header.get("server_key", ""))
            try:
                key = bytes.fromhex(self.state.get("server_key") or "")
            except ValueError:
                key = b""
            problem = header_problem(header, index, prev, key)
            if problem is not None:
                raise LedgerMismatch(f"ledger entry {index} does not extend what this node verified: {problem}")
            prev, index = entry_hash(header), index + 1
            if prev == head:  # later entries (committed since the announcement) wait for the next one
                return headers[: index - int(self.state.get("round", -1)) - 1]
        raise LedgerMismatch(f"the server announced head {head[:16]}…, which its entries since "
                             f"{self.head[:16] or 'the start'}… never reach (they lead to {prev[:16]}…)")

    def _inclusion(self, header: dict[str, Any], proof: Proof) -> list[str]:
        rnd = int(header["round"])
        if rnd == 0 or rnd < int(self.state.get("from_round", 1)):
            return []
        mine = self.state.get("sent", {}).get(str(rnd), [])
        try:
            found = proof(rnd)
        except LedgerMismatch:
            raise
        except LedgerError as exc:
            raise LedgerMismatch(f"round {rnd} is in the ledger's chain, yet the server gives no proof for it: {exc}") from exc
        absent = {a.get("node"): a.get("reason") for a in header.get("absent", []) if isinstance(a, dict)}
        if found is None:
            if not mine:
                return []
            if self.node_id in absent:
                return [f"round {rnd}: this node's update was not aggregated ({absent[self.node_id]}, says the server)"]
            if str(rnd) in self.state.get("unconfirmed", []):
                return [f"round {rnd}: this node's update, sent before it rejoined, is not in the round: the server "
                        "restarted or lost it before committing the round, and redid it without this node"]
            raise LedgerMismatch(f"round {rnd}: the server took this node's update ({mine[-1][:16]}…) but round "
                                 f"{rnd}'s ledger entry neither includes it nor lists the node as absent")
        c = found.contribution
        if found.size != header.get("contributions_count") or found.root() != _hex_bytes(header.get("contributions_root")):
            raise LedgerMismatch(f"round {rnd}: the inclusion proof of this node's contribution does not lead to the "
                                 "Merkle root of the round's ledger entry")
        if c.get("node") != self.node_id or c.get("key") != self.public_key:
            raise LedgerMismatch(f"round {rnd}: the ledger holds a contribution under node {c.get('node')!r} with key "
                                 f"{str(c.get('key'))[:16]}…, which is not this node's key")
        if c.get("update") not in mine:
            raise LedgerMismatch(f"round {rnd}: the ledger records an update {str(c.get('update'))[:16]}… from this "
                                 "node that it did not send" + (f" (it sent {mine[-1][:16]}…)" if mine else ""))
        return []


def _hex_bytes(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        return None
