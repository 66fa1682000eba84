"""Update compression on the default task: accuracy and bytes up against a clean run.

Runs ``potluck simulate``'s default (digits, 10 nodes, Dirichlet 0.5, FedAvg, 5 local
epochs) clean, with 8-bit and 4-bit quantisation, and with top-k 1 % (error feedback),
alone and with 8-bit values. Bytes up per round are read from each run's
``metrics.jsonl`` (``bytes_up``: the encoded size of every update the server aggregated).
Acceptance (docs/compression.md): 8-bit within 1 point of clean with ~4× fewer bytes;
top-k 1 % within 3 points with ≥ 20× fewer.

    python benchmarks/compression.py                  # 30 rounds, top-k also at 60
    python benchmarks/compression.py --rounds 10 --topk-rounds 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _measure import table

from potluck.apps.simulate import run_simulation
from potluck.core.config import SimulationConfig


def measure(run_dir: Path, rounds: int, **settings: object) -> tuple[float, float, float, float]:
    """Final accuracy, mean bytes up per round, mean bytes per node-round, wall seconds."""
    started = time.perf_counter()
    run_simulation(SimulationConfig.from_mapping({"run_dir": str(run_dir), "rounds": rounds, **settings}))
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sent = sum(r["bytes_up"] for r in lines)
    return lines[-1]["accuracy"], sent / len(lines), sent / sum(r["num_nodes"] for r in lines), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of every run")
    parser.add_argument("--topk-rounds", default="30,60", help="comma-separated rounds for the top-k runs")
    args = parser.parse_args()
    topk_rounds = [int(r) for r in args.topk_rounds.split(",")]
    runs: list[tuple[str, int, dict[str, object]]] = [
        ("clean", args.rounds, {}),
        ("quantize 8-bit", args.rounds, {"compression": "quantize"}),
        ("quantize 4-bit", args.rounds, {"compression": "quantize", "compression_bits": 4}),
        *[("top-k 1 %", r, {"compression": "topk"}) for r in topk_rounds],
        *[("top-k 1 % + 8-bit values", r, {"compression": "topk+quantize"}) for r in topk_rounds[:1]],
    ]
    rows: list[list[object]] = []
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, rounds, settings) in enumerate(runs):
            acc, per_round, per_node, seconds = measure(Path(tmp) / str(i), rounds, **settings)
            results[name, rounds] = acc, per_round
            clean_acc, clean_bytes = results["clean", args.rounds]
            rows.append([name, rounds, f"{acc:.4f}", f"{100 * (acc - clean_acc):+.2f}", f"{per_round / 1024:.1f}",
                         f"{per_node:,.0f}", f"{clean_bytes / per_round:.1f}×", f"{seconds:.1f}"])
    print(table(["update", "rounds", "final acc", "Δ points", "KiB up / round", "B / node-round",
                 "× fewer bytes", "wall s"], rows))
    clean_acc, clean_bytes = results["clean", args.rounds]
    q_acc, q_bytes = results["quantize 8-bit", args.rounds]
    t_acc, t_bytes = results["top-k 1 %", topk_rounds[0]]
    print(f"\n8-bit: {100 * (q_acc - clean_acc):+.2f} points (≥ −1), {clean_bytes / q_bytes:.1f}× fewer bytes (~4): "
          f"{'met' if q_acc >= clean_acc - 0.01 and clean_bytes / q_bytes >= 3.7 else 'NOT met'}")
    print(f"top-k 1 % at {topk_rounds[0]} rounds: {100 * (t_acc - clean_acc):+.2f} points (≥ −3), "
          f"{clean_bytes / t_bytes:.1f}× fewer bytes (≥ 20): "
          f"{'met' if t_acc >= clean_acc - 0.03 and clean_bytes / t_bytes >= 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
