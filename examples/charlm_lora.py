"""Pretrain a small language model federatedly, then fine-tune it with LoRA: only adapters travel.

Step 1 trains the whole ``charlm`` model; step 2 freezes that model (``-F init_from``)
and trains rank-r LoRA adapters on it (``-F lora_rank``), so nodes send, and the
strategy averages, the adapters alone: a small fraction of the bytes of step 1. It
needs PyTorch and ``peft`` (``pip install 'potluck[lora]'``). From the command line::

    SHAPE="-F context=32 -F width=32 -F depth=1 -F heads=2 -F positions=rope"
    potluck simulate --task charlm --data-path input.txt $SHAPE --run-dir runs/base --rounds 3
    potluck simulate --task charlm --data-path input.txt $SHAPE --run-dir runs/lora --rounds 2 \\
        -F init_from='"runs/base/model.safetensors"' -F lora_rank=4 --partition contiguous

or, the same through ``potluck.simulate``, printing both steps' figures and a sample::

    python examples/charlm_lora.py ../shared/data/tinyshakespeare/input.txt

The model's shape settings must be the same in both steps (another shape is a
``SchemaMismatch``); training settings (``steps``, ``lr``, …) may differ.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import potluck

SHAPE: dict[str, object] = {"context": 32, "width": 32, "depth": 1, "heads": 2, "positions": "rope"}


@dataclass(frozen=True)
class Step:
    """What one of the two runs gave: its held-out loss, the bytes one round sent up, where it is."""

    loss: float
    bytes_up: int
    run_dir: Path


def pretrain(text: str, run_dir: Path, *, rounds: int = 3, nodes: int = 4, shape: Mapping[str, object] = SHAPE,
             steps: int = 20) -> Step:
    """Train the whole model; its ``model.safetensors`` is the base of :func:`finetune`."""
    result = potluck.simulate(task="charlm", data_path=text, nodes=nodes, rounds=rounds, partition="iid",
                              fit={**shape, "steps": steps}, run_dir=str(run_dir))
    last = result.records[-1]
    return Step(last.loss, last.bytes_up, result.run_dir)


def finetune(text: str, base: Path, run_dir: Path, *, rounds: int = 2, nodes: int = 4, rank: int = 4,
             shape: Mapping[str, object] = SHAPE, steps: int = 20) -> Step:
    """Train rank-``rank`` adapters on the frozen ``base``; each node keeps a contiguous stretch of the text."""
    fit = {**shape, "steps": steps, "init_from": str(base), "lora_rank": rank}
    result = potluck.simulate(task="charlm", data_path=text, nodes=nodes, rounds=rounds, partition="contiguous",
                              fit=fit, run_dir=str(run_dir))
    last = result.records[-1]
    return Step(last.loss, last.bytes_up, result.run_dir)


def main(text: str, workdir: Path | None = None, *, small: bool = False) -> tuple[Step, Step]:
    """Both steps in ``workdir`` (a new temporary directory by default); ``small`` for a test's budget."""
    where = workdir or Path(tempfile.mkdtemp(prefix="charlm-lora-"))
    rounds, nodes, steps = (1, 2, 2) if small else (3, 4, 20)
    shape = {**SHAPE, "context": 8, "width": 16, "batch_size": 8} if small else SHAPE
    base = pretrain(text, where / "base", rounds=rounds, nodes=nodes, shape=shape, steps=steps)
    lora = finetune(text, base.run_dir / "model.safetensors", where / "lora", rounds=max(1, rounds - 1),
                    nodes=nodes, shape=shape, steps=steps)
    print(f"pretrained: held-out loss {base.loss:.3f} nats, {base.bytes_up:,} bytes up per round")
    print(f"LoRA:       held-out loss {lora.loss:.3f} nats, {lora.bytes_up:,} bytes up per round "
          f"({lora.bytes_up / base.bytes_up:.1%} of full)")
    return base, lora


if __name__ == "__main__":
    base, lora = main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/tinyshakespeare/input.txt")
    from potluck.tasks.generation import sample_from_run

    print(sample_from_run(lora.run_dir, "ROMEO:", tokens=120, temperature=0.8, seed=0))
