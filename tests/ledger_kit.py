"""Shared by the ledger tests: a small run directory with a ledger (no training), signed
contributions from derived keys, and a server that rewrites its history."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from potluck.core.digests import settings_digest, update_digest
from potluck.core.params import Params, ParamsKind
from potluck.core.records import Contribution, RoundProvenance, RoundRecord
from potluck.ledger.chain import (
    Entry,
    Ledger,
    RunStart,
    contributions_root,
    entry_hash,
    signed_bytes,
)
from potluck.ledger.signing import derived_key, public_bytes, sign_update
from potluck.runtime.rundir import RunDirectory

RUN_ID = "run-1"
CONFIG = 'task = "fake"\n'
SETTINGS = {"lr": 0.1}
SERVER_KEY = derived_key(0, "server")


def node_key(node: str):
    return derived_key(0, f"node:{node}")


def params_for(rnd: int) -> Params:
    return Params.from_arrays({"w": np.full((4, 2), rnd, np.float32)})


def update_for(node: str, rnd: int) -> Params:
    return Params.from_arrays({"w": np.full((4, 2), rnd + ord(node[0]) / 100, np.float32)}, ParamsKind.DELTA)


def contribution(node: str, rnd: int, weight: int = 10) -> Contribution:
    update = update_for(node, rnd)
    signed = sign_update(node_key(node), RUN_ID, rnd, update, weight, SETTINGS)
    return Contribution(node, update_digest(update), weight, signed.public_key.hex(), signed.signature.hex())


def record(rnd: int, nodes=("a", "b", "c"), absent=()) -> RoundRecord:
    provenance = RoundProvenance(settings_digest(SETTINGS), tuple(contribution(n, rnd) for n in nodes), tuple(absent))
    failures: dict[str, int] = {}
    for _, why in absent:
        failures[why] = failures.get(why, 0) + 1
    return RoundRecord(rnd, len(nodes), len(nodes) + len(absent), 0.1, params_for(rnd).digest, metrics={"loss": 0.5},
                       num_examples=10 * len(nodes), failures=failures, extras={"epsilon": 0.5 * rnd},
                       provenance=provenance)


def new_ledger(key=SERVER_KEY) -> Ledger:
    start = RunStart("fake", params_for(0).schema_digest, "fedavg", {}, {}, hashlib.sha256(CONFIG.encode()).hexdigest())
    return Ledger(key, start, run_id=RUN_ID, clock=lambda: 1.7e9)


def make_run(path: Path, rounds: int = 3, absent_in: dict[int, tuple] | None = None) -> RunDirectory:
    """A committed run: every round, nodes a, b and c contribute (``absent_in``: round →
    ((node, reason), ...) of nodes asked who did not)."""
    run = RunDirectory(path)
    run.attach_ledger(new_ledger())
    run.create(CONFIG)
    run.commit(RoundRecord(0, 0, 0, 0.0, params_for(0).digest), params_for(0), {})
    for rnd in range(1, rounds + 1):
        run.commit(record(rnd, absent=(absent_in or {}).get(rnd, ())), params_for(rnd), {})
    return run


def entries_of(run: RunDirectory) -> list[Entry]:
    return [run.ledger_entry(r) for r in run.committed_rounds()]


def rewrite(entries: list[Entry], rnd: int, drop: str, key=SERVER_KEY) -> list[Entry]:
    """History as a dishonest server would tell it: ``drop``'s contribution removed from
    round ``rnd`` (and the node not listed as absent), every later entry re-chained and
    re-signed with the server's key."""
    out = [dict(e) for e in entries[:rnd]]
    for entry in entries[rnd:]:
        entry = dict(entry)
        if entry["round"] == rnd:
            entry["contributions"] = [c for c in entry["contributions"] if c["node"] != drop]
            entry["contributions_root"] = contributions_root(entry["contributions"])
            entry["contributions_count"] = len(entry["contributions"])
            entry["examples"] = sum(c["weight"] for c in entry["contributions"])
        entry["prev"] = entry_hash(out[-1])
        entry.pop("signature")
        entry["signature"] = key.sign(signed_bytes(entry)).hex()
        out.append(entry)
    return out


def serving(entries: list[Entry], key=SERVER_KEY) -> Ledger:
    """A ledger that serves ``entries`` (as a restarted server would)."""
    ledger = new_ledger(key)
    ledger.restore(entries)
    ledger.loader = lambda r: entries[r]
    return ledger


def public_hex(node: str) -> str:
    return public_bytes(node_key(node)).hex()
