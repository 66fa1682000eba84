"""Federated against central training of the ``charlm`` language model (issue 13).

(a) federated: ``potluck simulate --task charlm`` with ``--nodes`` nodes, a contiguous
    partition (each node one stretch of the text), ``--rounds`` rounds of ``--steps``
    local AdamW steps, one run per ``--server-opt`` (FedAvg by default);
(b) central: the same command with one node holding all the training text and one
    round of ``rounds × nodes × steps`` steps: the same model, the same initial weights
    (same seed), the same number of tokens, one warm-up and one cosine decay.

Both hold out the same blocks (``--test-fraction`` of the text, drawn from ``--seed``)
and report the loss on them after the last round. Tokens are counted as predicted
tokens: steps × batch × context. The ratio is federated loss / central loss, measured
in the same run; issue 13 asks for ≤ 1.10.

    python benchmarks/charlm.py --steps 6 --server-opt fedavg --server-opt fedavgm -S momentum=0.5 --jobs 3
                                                # the figures in docs/benchmarks.md (~20 min, busy machine)
    python benchmarks/charlm.py --server-opt fedavg --server-opt fedavgm -S momentum=0.5
    python benchmarks/charlm.py --width 16 --depth 1 --heads 2 --context 16 --nodes 2 --rounds 2 --steps 2

The evaluation on the held-out blocks runs every round and costs as much as a few
hundred training steps on a CPU, which is why the default holds out 2 % of the text.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _measure import run_measured, table

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
POTLUCK = [sys.executable, "-m", "potluck.cli"]


def count_params(opts: argparse.Namespace) -> int:
    """Parameters of the model these settings make (byte vocabulary: 256 tokens)."""
    from potluck.tasks.charlm import CharTransformer, LMShape

    model = CharTransformer(LMShape(256, opts.context, opts.width, opts.depth, opts.heads))
    return sum(p.numel() for p in model.parameters())


def model_flags(opts: argparse.Namespace, steps: int) -> list[str]:
    fit = {"context": opts.context, "width": opts.width, "depth": opts.depth, "heads": opts.heads,
           "lr": opts.lr, "warmup": opts.warmup, "steps": steps, "batch_size": opts.batch_size, "device": "cpu"}
    return [a for key, value in fit.items() for a in ("-F", f"{key}={json.dumps(value)}")]


def simulate(label: str, args: list[str], run_dir: Path) -> dict[str, object]:
    """One ``potluck simulate`` run; its last round's held-out figures and its wall time."""
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {run_dir}/metrics.jsonl", file=sys.stderr, flush=True)
    run = run_measured([*POTLUCK, "simulate", "--task", "charlm", "--run-dir", str(run_dir), *args], poll=0.5,
                       timeout=6 * 3600)
    if run.returncode != 0:
        print(f"{label}: potluck simulate failed (exit {run.returncode}):\n{run.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"error": f"failed (exit {run.returncode})"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    train_s = sum(line["seconds"] for line in lines)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: loss {last['loss']:.4f} after {run.seconds:.0f} s",
          file=sys.stderr, flush=True)
    return {"loss": last["loss"], "ppl": last["metrics"]["perplexity"], "wall": run.seconds, "rounds_s": train_s,
            "rounds": len(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", type=Path, default=TEXT)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=6, help="local AdamW steps per node and round")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per step")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps (per round, and of the central run)")
    parser.add_argument("--test-fraction", type=float, default=0.02, help="held-out share of the text's blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-opt", action="append", help="server step(s) of the federated runs (repeatable)")
    parser.add_argument("-S", "--strategy-option", action="append", default=[],
                        help="KEY=VALUE for the server steps other than fedavg, e.g. momentum=0.5")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (each is one single-threaded process; wall times then share the cores)")
    parser.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary folder)")
    opts = parser.parse_args()
    if not opts.data_path.is_file():
        raise SystemExit(f"no text at {opts.data_path}: pass --data-path")

    params = count_params(opts)
    tokens = opts.rounds * opts.nodes * opts.steps * opts.batch_size * opts.context
    print(f"charlm: width {opts.width}, depth {opts.depth}, heads {opts.heads}, context {opts.context}, "
          f"byte vocabulary: {params:,} parameters; {tokens:,} tokens per run", file=sys.stderr, flush=True)
    common = ["--data-path", str(opts.data_path), "--partition", "contiguous", "--seed", str(opts.seed),
              "--test-fraction", str(opts.test_fraction), "--round-timeout", "86400", "--log-format", "json"]
    with tempfile.TemporaryDirectory() as tmp:
        out = opts.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        central_steps = opts.rounds * opts.nodes * opts.steps
        runs = {"central": ([*common, "--nodes", "1", "--rounds", "1", *model_flags(opts, central_steps)],
                            out / f"{stamp}-central")}
        for opt in opts.server_opt or ["fedavg"]:
            extra = [a for kv in opts.strategy_option for a in ("-S", kv)] if opt != "fedavg" else []
            runs[opt] = ([*common, "--nodes", str(opts.nodes), "--rounds", str(opts.rounds), "--server-opt", opt,
                          *extra, *model_flags(opts, opts.steps)], out / f"{stamp}-fed-{opt}")
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            futures = {name: pool.submit(simulate, name if name == "central" else f"federated {name}", *run)
                       for name, run in runs.items()}
            done = {name: f.result() for name, f in futures.items()}
        central = done.pop("central")
        fed = done

    def row(label: str, r: dict[str, object]) -> list[object]:
        if "error" in r or "error" in central:
            return [label, f"{tokens:,}", str(r.get("error", "–")), "–", "–", "–"]
        loss = float(r["loss"])  # type: ignore[arg-type]
        return [label, f"{tokens:,}", loss, float(r["ppl"]), loss / float(central["loss"]),  # type: ignore[arg-type]
                float(r["wall"])]  # type: ignore[arg-type]

    rows = [row(f"central: 1 node, 1 round × {central_steps} steps", central)]
    rows += [row(f"federated {opt}: {opts.nodes} nodes, {opts.rounds} rounds × {opts.steps} steps", r)
             for opt, r in fed.items()]
    print(f"{params:,} parameters (width {opts.width}, depth {opts.depth}, heads {opts.heads}, "
          f"context {opts.context}), batch {opts.batch_size}, lr {opts.lr}, held-out {opts.test_fraction:.0%}, "
          f"{opts.jobs} run(s) at once")
    print(table(["run", "tokens", "val loss", "perplexity", "loss / central", "wall s"], rows))
    ratios = [r[4] for r in rows[1:] if isinstance(r[4], float)]
    if ratios:
        print(f"target loss / central ≤ 1.10: best {min(ratios):.3f} ({'met' if min(ratios) <= 1.10 else 'missed'}), "
              f"worst {max(ratios):.3f}")
    if any("error" in r for r in (central, *fed.values())):
        raise SystemExit("a run failed (see above)")


if __name__ == "__main__":
    main()
