"""Secure aggregation cost: 100 nodes, 100,000 parameters, 0 % and 10 % dropout.

Drives the protocol objects (``updates/secagg/protocol.py``) exactly as the
coordinator does, one node after another in this process, timing each node's work and
the server's work separately, and counting every message's bytes (masked inputs as
raw uint32, 4 bytes per value). Dropped nodes share keys, then never send their masked
input, so the server rebuilds their mask keys (the expensive case).

The first table's ratio is aggregation alone: the slowest node's protocol work plus
the server's, against plain FedAvg's server folding 100 float32 updates
(``WeightedMean``). The second table is whole rounds through ``potluck simulate``
(training, encoding, signing, aggregation; nodes one after another in one process):
by default 100 nodes training the ``mlp`` task (784-128-10, 101,770 parameters) on
MNIST from ``../shared/data/mnist``, with and without secure aggregation, with 0 % and
10 % of nodes dropping before they send their masked input.

    python benchmarks/secagg.py                 # 100 nodes, 100,000 values
    python benchmarks/secagg.py --nodes 20 --values 10000 --simulate-rounds 0
    python benchmarks/secagg.py --task digits --simulate-nodes 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import table

from potluck.apps.allocator import reuse_freed_memory
from potluck.apps.simulate import run_simulation
from potluck.core.config import SimulationConfig
from potluck.core.params import Params, ParamsKind
from potluck.runtime.secure import resolve
from potluck.strategies.aggregate import WeightedMean
from potluck.updates.secagg.masking import quantise
from potluck.updates.secagg.protocol import ServerSession, node_step


def secagg_round(nodes: int, values: int, dropout: float, bits: int = 16) -> dict[str, float]:
    ids = [f"node-{i:03d}" for i in range(nodes)]
    k, t = resolve(nodes, 0, 0)
    node_s = dict.fromkeys(ids, 0.0)
    sent = dict.fromkeys(ids, 0)  # bytes to and from each node
    server_s = 0.0
    states: dict[str, dict] = {v: {} for v in ids}

    def server(fn, *args):  # noqa: ANN001, ANN202
        nonlocal server_s
        started = time.perf_counter()
        out = fn(*args)
        server_s += time.perf_counter() - started
        return out

    def nodes_step(step: str, requests: dict[str, bytes], skip: set[str] = set()) -> dict[str, bytes]:  # noqa: B006
        replies = {}
        for v, request in requests.items():
            if v in skip:
                continue
            started = time.perf_counter()
            replies[v] = node_step(states[v], v, step, request)
            node_s[v] += time.perf_counter() - started
            sent[v] += len(request) + len(replies[v])
        return replies

    s = ServerSession("1.1", ids, degree=k, threshold=t, seed=0)
    server(s.collect_advertise, nodes_step("advertise", server(s.advertise_requests)))
    server(s.collect_share, nodes_step("share", server(s.share_requests)))
    nodes_step("deliver", server(s.deliver_requests))
    dropped = set(ids[: round(dropout * nodes)])
    rng = np.random.default_rng(0)
    for v in ids:
        update = rng.normal(0, 0.1, values)
        started = time.perf_counter()
        masked = states[v]["session"].mask(quantise(update, 1.0, bits, rng))
        node_s[v] += time.perf_counter() - started
        if v not in dropped:
            sent[v] += masked.nbytes
            server(s.add, v, masked)
    server(s.collect_unmask, nodes_step("unmask", server(s.unmask_requests)))
    live = [v for v in ids if v not in dropped]
    return {"k": k, "t": t, "node_mean": float(np.mean([node_s[v] for v in live])),
            "node_max": max(node_s[v] for v in live), "server": server_s,
            "bytes": float(np.mean([sent[v] for v in live]))}


def plain_round(nodes: int, values: int) -> float:
    rng = np.random.default_rng(0)
    updates = [Params.from_arrays({"w": rng.normal(0, 0.1, values).astype(np.float32)}, ParamsKind.DELTA)
               for _ in range(nodes)]
    started = time.perf_counter()
    agg = WeightedMean()
    for u in updates:
        agg.add(u, 10.0)
    agg.result()
    return time.perf_counter() - started


def simulate_seconds(rounds: int, **settings: object) -> tuple[float, float]:
    """Median seconds per round and the final accuracy of one ``potluck simulate`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        result = run_simulation(SimulationConfig(rounds=rounds, run_dir=str(Path(tmp) / "r"), **settings))
    return statistics.median(r.seconds for r in result.records), result.records[-1].metrics["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--simulate-rounds", type=int, default=5, help="rounds per simulate run (0: skip)")
    parser.add_argument("--simulate-nodes", type=int, default=100, help="virtual nodes in the simulate runs")
    parser.add_argument("--task", default="mlp", help="task of the simulate runs (mlp: 101,770 parameters)")
    parser.add_argument("--data-path", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"),
                        help="data of the simulate runs (ignored by the digits task)")
    args = parser.parse_args()
    reuse_freed_memory()  # as `potluck simulate` does
    plain = plain_round(args.nodes, args.values)
    rows = []
    for dropout in (0.0, 0.1):
        r = secagg_round(args.nodes, args.values, dropout)
        rows.append([f"{dropout:.0%}", f"{r['k']}/{r['t']}", f"{r['node_mean']:.3f}", f"{r['node_max']:.3f}",
                     f"{r['server']:.3f}", f"{r['bytes'] / 1e3:,.1f}", f"{4 * args.values / 1e3:,.1f}",
                     f"{plain:.3f}", f"{(r['node_max'] + r['server']) / plain:.1f}×"])
    print(f"{args.nodes} nodes, {args.values:,} values, 16 bits")
    print(table(["dropout", "k/t", "node s (mean)", "node s (max)", "server s", "kB / node", "plain kB / node",
                 "plain server s", "aggregation time ratio"], rows))
    if args.simulate_rounds:
        out = []
        data = {} if args.task.startswith("digits") else {"data_path": args.data_path}
        for name, settings in (("fedavg", {}), ("secagg", {"secagg": True}),
                               ("secagg, 10 % drop", {"secagg": True, "secagg_dropout": 0.1,
                                                      "secagg_dropout_at": "masked-input"})):
            seconds, acc = simulate_seconds(args.simulate_rounds, nodes=args.simulate_nodes, task=args.task,
                                            **data, **settings)
            out.append([name, f"{seconds:.3f}", f"{acc:.4f}"])
        base = float(out[0][1])
        for row in out:
            row.append(f"{float(row[1]) / base:.2f}×")
        print(table([f"{args.task}, {args.simulate_nodes} nodes", "median s / round", "final acc", "round-time ratio"],
                    out))


if __name__ == "__main__":
    main()
