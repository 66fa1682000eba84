"""Shared by the dashboard tests: a run directory committed round by round through the real
commit protocol (checkpoints, marks, signed ledger, metrics.jsonl), without training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ledger_kit import RUN_ID, SERVER_KEY, contribution, params_for
from potluck.core.digests import settings_digest
from potluck.core.records import Failure, RoundProvenance, RoundRecord
from potluck.ledger.chain import Ledger, RunStart
from potluck.runtime.rundir import RunDirectory

CONFIG = 'task = "fake"\nstrategy = "fedavg"\nrounds = 6\ndp = "gaussian"\ndp_epsilon_budget = 4.0\ndp_delta = 1e-05\n'


def record(rnd: int) -> RoundRecord:
    """Round ``rnd``: perplexity falls, node d fails and is not aggregated, ε grows."""
    nodes = ("a", "b", "c")
    provenance = RoundProvenance(settings_digest({"lr": 0.1}), tuple(contribution(n, rnd) for n in nodes),
                                 (("d", "failed"),))
    return RoundRecord(rnd, 3, 4, 0.2 + rnd / 100, params_for(rnd).digest,
                       metrics={"perplexity": 40.0 / rnd, "loss": 3.0 / rnd}, federated_metrics={"perplexity": 45.0 / rnd},
                       metric="perplexity", higher_is_better=False, num_examples=30, failures={"failed": 1},
                       failure_causes=(Failure("d", "failed", "fit raised RuntimeError: out of memory"),),
                       bytes_up=1000 * rnd, extras={"epsilon": 0.5 * rnd, "delta": 1e-5}, provenance=provenance)


class Run:
    """A run directory the test commits rounds to, one :meth:`commit` at a time."""

    def __init__(self, path: Path) -> None:
        self.dir = RunDirectory(path)
        self.dir.attach_ledger(_ledger())
        self.dir.create(CONFIG)
        self.dir.commit(RoundRecord(0, 0, 0, 0.0, params_for(0).digest), params_for(0), {})
        self.rounds = 0

    @property
    def path(self) -> Path:
        return self.dir.path

    def commit(self) -> int:
        self.rounds += 1
        self.dir.commit(record(self.rounds), params_for(self.rounds), {})
        return self.rounds

    def finish(self) -> None:
        self.dir.write_final(params_for(self.rounds))


def _ledger() -> Ledger:
    """ledger_kit's server key and run id, with this CONFIG's digest in entry 0."""
    start = RunStart("fake", params_for(0).schema_digest, "fedavg", {}, {}, hashlib.sha256(CONFIG.encode()).hexdigest())
    return Ledger(SERVER_KEY, start, run_id=RUN_ID, clock=lambda: 1.7e9)


def flip_hex_digit(path: Path, line: int, key: str) -> None:
    """Change one hex digit of ``key``'s value on ``line`` (0-based) of ``path``: one byte,
    the JSON stays valid."""
    lines = path.read_bytes().splitlines(keepends=True)
    data = bytearray(lines[line])
    pos = data.index(f'"{key}":"'.encode()) + len(key) + 4 + 5
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")
    lines[line] = bytes(data)
    path.write_bytes(b"".join(lines))


def metrics_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
