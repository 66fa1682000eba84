"""(d) A million virtual nodes: `potluck simulate --task synthetic` at growing node counts.

For each node count N, one `potluck simulate` process runs Synthetic(1, 1) (60
features, 10 classes, logistic regression) with ``--fraction`` giving ``--per-round``
nodes a round, in process (``--workers 1``). The table gives the peak RSS of the
process, the median and the last round's seconds (the last round also evaluates on
every node: synthetic nodes have no validation split, so that is a pass over the ids),
and the wall time including start-up.

    python benchmarks/million.py                        # 1,000 / 100,000 / 1,000,000
    python benchmarks/million.py --nodes 10000000 --rounds 2
    python benchmarks/million.py --fraction-study       # FedAvg vs FedProx, stragglers

``--fraction-study`` runs the FedProx paper's comparison instead: 30 nodes, 10 a round,
20 local epochs of batch 10, 90% stragglers (a straggler runs 1 … 19 epochs): FedAvg
dropping the stragglers (as in the paper) vs FedProx keeping their partial work, μ = 0 and 1, and prints the global model's loss on the held-out set (drawn from
the 30 nodes' distributions) per round and its spread over the last half of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _measure import median, run_measured, table

FIT = ["max_examples=200", "batch_size=50"]  # bounded work per node; see docs/benchmarks.md


def simulate(run_dir: Path, nodes: int, per_round: int, rounds: int, fit: list[str], *extra: str) -> tuple[
        list[dict[str, object]], float, float]:
    """Records, peak RSS MB and wall seconds of one `potluck simulate --task synthetic` run."""
    cmd = [sys.executable, "-m", "potluck.cli", "simulate", "--task", "synthetic", "--nodes", str(nodes),
           "--fraction", repr(per_round / nodes), "--rounds", str(rounds), "--run-dir", str(run_dir), *extra]
    for setting in fit:
        cmd += ["--fit", setting]
    done = run_measured(cmd, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, done.peak_rss_mb, done.seconds


def scale(opts: argparse.Namespace) -> None:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in opts.nodes:
            records, rss, wall = simulate(Path(tmp) / str(n), n, opts.per_round, opts.rounds, opts.fit)
            seconds = [float(r["seconds"]) for r in records]  # type: ignore[arg-type]
            rows.append([f"{n:,}", records[0]["sampled"], rss, median(seconds[:-1] or seconds), seconds[-1], wall,
                         records[-1]["metrics"]["accuracy"]])  # type: ignore[index]
            print(table(["nodes", "per round", "peak RSS MB", "median round s (not last)", "last round s",
                         "wall s", "accuracy"], rows[-1:]), flush=True)
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(table(["nodes", "per round", "peak RSS MB", "median round s (not last)", "last round s", "wall s",
                 "accuracy"], rows))


def stragglers(opts: argparse.Namespace) -> None:
    fit = ["epochs=20", "batch_size=10", "lr=0.01", f"straggler_fraction={opts.stragglers}"]
    drop = ["drop_stragglers=true", "--quorum", "0.1", "--max-retries", "20"]  # FedAvg as in the paper
    rows: list[list[object]] = []
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("fedavg, stragglers dropped", ["--strategy", "fedavg", "--fit", *drop]),
                            ("fedprox mu=0, partial work", ["--strategy", "fedprox", "--strategy-option", "mu=0"]),
                            ("fedprox mu=1, partial work", ["--strategy", "fedprox", "--strategy-option", "mu=1"])):
            records, _, wall = simulate(Path(tmp) / name.replace(" ", "-").replace(",", ""), 30, 10, opts.rounds, fit,
                                        *extra)
            losses = [float(r["metrics"]["loss"]) for r in records]  # type: ignore[index]
            curves[name] = losses
            last = losses[len(losses) // 2:]
            rows.append([name, losses[0], losses[-1], statistics.pstdev(last),
                         max(abs(b - a) for a, b in zip(last, last[1:])),
                         records[-1]["metrics"]["accuracy"], wall])  # type: ignore[index]
    for name, losses in curves.items():
        print(name, " ".join(f"{v:.3f}" for v in losses))
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(table(["strategy", "loss, round 1", "loss, last round", "std of loss, last half",
                 "largest jump, last half", "accuracy, last round", "wall s"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=None, help="3 for the scale table, 40 for the study")
    parser.add_argument("--fit", nargs="*", default=FIT, help="fit settings for the scale table (KEY=VALUE)")
    parser.add_argument("--fraction-study", action="store_true", help="FedAvg vs FedProx with stragglers")
    parser.add_argument("--stragglers", type=float, default=0.9)
    opts = parser.parse_args()
    if opts.fraction_study:
        opts.rounds = opts.rounds or 40
        stragglers(opts)
    else:
        opts.rounds = opts.rounds or 3
        scale(opts)


if __name__ == "__main__":
    main()
