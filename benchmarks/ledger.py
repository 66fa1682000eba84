"""What the provenance ledger costs per round, for 100 and 1,000 contributions.

Each part of a round's ledger work, timed alone (median of --repeat runs):

- sign: every node signs its update (Ed25519), summed over the nodes;
- check: the server verifies every node's signature as results arrive;
- seal: the Merkle root over the contributions, the canonical entry, the server's signature;
- commit +: what a ledger adds to committing the round on this disk: sealing, the entry
  inside the commit mark (a bigger mark, same fsyncs) and the fsynced append to
  ledger.jsonl, measured as commit with a ledger minus commit without one;
- proofs: every node's inclusion proof (served from one tree per round);
- verify: `potluck ledger verify`'s work per entry (chain, server and node signatures,
  Merkle root; checkpoint hashing excluded).

The model is small (10,000 float32 values) so that the ledger's share is visible; the
updates' digests are computed beforehand, as the server has them anyway.

    python benchmarks/ledger.py
    python benchmarks/ledger.py --sizes 100 1000 --repeat 5 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import table

from potluck.core.digests import settings_digest, update_statement
from potluck.core.params import Params
from potluck.core.records import Contribution, RoundProvenance, RoundRecord
from potluck.ledger.chain import Ledger, RunStart, canonical, contributions_problem, entry_hash, header_problem
from potluck.ledger.signing import derived_key, public_bytes, verify
from potluck.runtime.rundir import RunDirectory

SETTINGS = {"lr": 0.05, "epochs": 1}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def round_record(rnd: int, model: Params, contributions: tuple[Contribution, ...]) -> RoundRecord:
    return RoundRecord(rnd, len(contributions), len(contributions), 0.1, model.digest, metrics={"loss": 0.3},
                       provenance=RoundProvenance(settings_digest(SETTINGS), contributions))


def measure(n: int, repeat: int, folder: Path) -> list[object]:
    keys = [derived_key(0, f"node-{i}") for i in range(n)]
    digests = [f"{i:064x}" for i in range(n)]
    settings = settings_digest(SETTINGS)
    statements = [update_statement("bench", 1, d, 100, settings) for d in digests]
    publics = [public_bytes(k) for k in keys]

    def sign_all() -> list[bytes]:
        return [k.sign(s) for k, s in zip(keys, statements)]

    sign = statistics.median(timed(sign_all) for _ in range(repeat))
    signatures = sign_all()
    check = statistics.median(timed(lambda: [verify(p, sig, s) for p, sig, s in zip(publics, signatures, statements)])
                              for _ in range(repeat))
    contributions = tuple(Contribution(f"node-{i}", d, 100, p.hex(), sig.hex())
                          for i, (d, p, sig) in enumerate(zip(digests, publics, signatures)))
    model = Params.from_arrays({"w": np.zeros(10_000, np.float32)})
    start = RunStart("bench", model.schema_digest, "fedavg", {}, {}, "0" * 64)
    runs = [one_round(folder / f"n{n}-{r}", model, start, contributions) for r in range(repeat)]
    seal, extra, proofs, audit, size = (statistics.median(column) for column in zip(*runs))
    return [f"{n:,}", sign * 1e3, check * 1e3, seal * 1e3, extra * 1e3, proofs * 1e3, audit * 1e3, size / 1024]


def one_round(folder: Path, model: Params, start: RunStart, contributions: tuple[Contribution, ...]) -> list[float]:
    """Seconds to seal, to commit with a ledger beyond without, to serve every proof, to
    verify the entry; and the entry's size in bytes."""
    with_ledger, plain = RunDirectory(folder / "ledger"), RunDirectory(folder / "plain")
    ledger = Ledger(derived_key(0, "server"), start, run_id="bench")
    with_ledger.attach_ledger(ledger)
    for run in (with_ledger, plain):
        run.create("")
        run.commit(RoundRecord(0, 0, 0, 0.0, model.digest), model, {})
    record = round_record(1, model, contributions)
    seal = timed(lambda: ledger.seal(record, model.digest, model.digest))
    extra = timed(lambda: with_ledger.commit(record, model, {})) - timed(lambda: plain.commit(record, model, {}))
    entry, prev = with_ledger.ledger_entry(1), with_ledger.ledger_entry(0)
    proofs = timed(lambda: [ledger.proof(1, c.node_id) for c in contributions])
    audit = timed(lambda: (header_problem(entry, 1, entry_hash(prev), public_bytes(ledger.key)),
                           contributions_problem(entry, "bench")))
    return [seal, extra, proofs, audit, float(len(canonical(entry)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="contributions per round")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where run directories are written (the disk fsynced)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = [measure(n, args.repeat, Path(tmp)) for n in args.sizes]
    print(table(["contributions", "sign ms (all nodes)", "check ms (server)", "seal ms", "commit + ms (incl. seal)",
                 "proofs ms (all)", "verify ms / entry", "entry KiB"], rows))


if __name__ == "__main__":
    main()
