"""LoRA against full fine-tuning on ``charlm``: bytes up per round and final held-out loss.

A base model is pre-trained federatedly on the first half of a text (tinyshakespeare by
default), then fine-tuned on the second half twice from that same base, with the same
rounds, nodes, partition (contiguous: each node one stretch of the half) and local
steps: once training the whole model, once training rank-``rank`` LoRA adapters on the
frozen base (``-F init_from``, ``-F lora_rank``). Bytes up per round are read from each
run's ``metrics.jsonl`` (``bytes_up``: the encoded size of the updates the server
aggregated); the loss is the last round's centralized held-out loss (nats per byte) on
the same held-out blocks of the second half, where the base before fine-tuning is also
measured. Acceptance (issue 13, item 4): LoRA sends at least 20× fewer bytes per round,
and its final loss is within 5 % of full fine-tuning's.

    python benchmarks/lora.py                          # the figures in docs/benchmarks.md
    python benchmarks/lora.py --pretrain-steps 4 --steps 2 --width 32   # a smoke run

Neither ratio depends on the machine's speed; the wall seconds do.
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
from potluck.core.params import Params
from potluck.runtime.federation import FederationSpec, build_federation

DEFAULT_TEXT = "../shared/data/tinyshakespeare/input.txt"


def split_text(text: Path, where: Path) -> tuple[Path, Path]:
    """The text's two halves, cut at the line break nearest the middle, as two files."""
    body = text.read_text(encoding="utf-8")
    middle = body.find("\n", len(body) // 2) + 1 or len(body) // 2
    first, second = where / "first.txt", where / "second.txt"
    first.write_text(body[:middle], encoding="utf-8")
    second.write_text(body[middle:], encoding="utf-8")
    return first, second


def measure(run_dir: Path, settings: dict[str, object]) -> tuple[float, float, float]:
    """Final held-out loss, mean bytes up per round, wall seconds of one run."""
    started = time.perf_counter()
    run_simulation(SimulationConfig.from_mapping({"run_dir": str(run_dir), **settings}))
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return lines[-1]["loss"], sum(r["bytes_up"] for r in lines) / len(lines), seconds


def base_loss(settings: dict[str, object], base: Path) -> float:
    """The frozen base's loss on the fine-tuning runs' held-out blocks (the same split)."""
    spec = FederationSpec(task="charlm", data_path=str(settings["data_path"]), nodes=int(settings["nodes"]),  # type: ignore[call-overload]
                          partition="contiguous", seed=0, test_fraction=float(settings["test_fraction"]),  # type: ignore[arg-type]
                          fit=dict(settings["fit"]))  # type: ignore[call-overload]
    federation = build_federation(spec)
    return federation.task.evaluate(Params.decode(base.read_bytes()), federation.test).loss


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", default=DEFAULT_TEXT, help="UTF-8 text; its halves pre-train and fine-tune")
    parser.add_argument("--width", type=int, default=256, help="model width (the bytes ratio grows with it)")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=4, help="nodes of each fine-tuning run")
    parser.add_argument("--pretrain-nodes", type=int, default=2)
    parser.add_argument("--pretrain-rounds", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=60, help="local steps per pre-training round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each fine-tuning run")
    parser.add_argument("--steps", type=int, default=20, help="local steps per fine-tuning round")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (adapters scaled by alpha/rank)")
    parser.add_argument("--full-lr", type=float, default=0.003, help="peak lr of full fine-tuning (and pre-training)")
    parser.add_argument("--lora-lr", type=float, default=0.01, help="peak lr of the LoRA adapters")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of each half")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    shape = {"vocab": "byte", "width": args.width, "depth": args.depth, "context": args.context, "heads": 4,
             "device": "cpu"}
    common = {"task": "charlm", "test_fraction": args.test_fraction, "seed": 0}
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        first, second = split_text(Path(args.text), where)
        pre = {**common, "data_path": str(first), "partition": "iid", "nodes": args.pretrain_nodes,
               "rounds": args.pretrain_rounds,
               "fit": {**shape, "steps": args.pretrain_steps, "lr": args.full_lr}}
        loss, sent, seconds = measure(where / "base", pre)
        rows.append(["pre-train (first half)", args.pretrain_rounds, f"{loss:.4f}", f"{sent / 1024:,.1f}", "", "",
                     f"{seconds:.0f}"])
        base = where / "base" / "model.safetensors"
        tune = {**common, "data_path": str(second), "partition": "contiguous", "nodes": args.nodes,
                "rounds": args.rounds}
        fit = {**shape, "steps": args.steps, "init_from": str(base)}
        full_settings = {**tune, "fit": {**fit, "lr": args.full_lr}}
        rows.append(["base, no fine-tuning", 0, f"{base_loss(full_settings, base):.4f}", "", "", "", ""])
        full_loss, full_sent, seconds = measure(where / "full", full_settings)
        rows.append(["full fine-tuning", args.rounds, f"{full_loss:.4f}", f"{full_sent / 1024:,.1f}", "1.0×",
                     "1.000", f"{seconds:.0f}"])
        lora = {**tune, "fit": {**fit, "lr": args.lora_lr, "lora_rank": args.rank, "lora_alpha": args.alpha}}
        lora_loss, lora_sent, seconds = measure(where / "lora", lora)
        rows.append([f"LoRA rank {args.rank}", args.rounds, f"{lora_loss:.4f}", f"{lora_sent / 1024:,.1f}",
                     f"{full_sent / lora_sent:.1f}×", f"{lora_loss / full_loss:.3f}", f"{seconds:.0f}"])
    print(table(["run", "rounds", "held-out loss", "KiB up / round", "× fewer bytes", "loss / full", "wall s"], rows))
    ratio, rel = full_sent / lora_sent, lora_loss / full_loss
    print(f"\nLoRA rank {args.rank}: {ratio:.1f}× fewer bytes up per round (≥ 20), final loss {rel:.3f}× full "
          f"fine-tuning's (≤ 1.05): {'met' if ratio >= 20 and rel <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
