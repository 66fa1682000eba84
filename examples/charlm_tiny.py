"""A charlm with its settings pinned, for a deployment whose nodes must build the same model.

`potluck simulate` and `potluck server` shape charlm from the run's `-F` settings, but a
node builds its task before it hears from the server. Naming this module on both sides
gives every process the same model::

    PYTHONPATH=examples potluck server --task charlm_tiny:task --data-path held_out.txt ...
    PYTHONPATH=examples potluck node --task charlm_tiny:task --data-path my_part.txt ...

Run it to train it for three rounds on a text file and print a sample::

    python examples/charlm_tiny.py ../shared/data/tinyshakespeare/input.txt
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from potluck.tasks.lm_task import CharLMTask, LMSettings

SETTINGS = LMSettings(context=32, width=32, depth=1, heads=2, positions="rope", steps=20)


def task() -> CharLMTask:
    """The pinned task: a fresh instance per process."""
    return CharLMTask("charlm-tiny", SETTINGS)


def main(text: str, rounds: int = 3, nodes: int = 4) -> str:
    from potluck.apps.simulate import run_simulation
    from potluck.core.config import SimulationConfig
    from potluck.tasks.generation import sample_from_run

    run_dir = Path(tempfile.mkdtemp(prefix="charlm-tiny-"))
    config = SimulationConfig.from_mapping({  # this module must be importable as charlm_tiny
        "task": "charlm_tiny:task", "data_path": text, "nodes": nodes, "rounds": rounds,
        "partition": "contiguous", "run_dir": str(run_dir),
    }, source="examples/charlm_tiny.py")
    result = run_simulation(config)
    print(f"{rounds} rounds, held-out loss {result.records[-1].loss:.3f} nats; run in {run_dir}")
    return sample_from_run(run_dir, "\n", tokens=120, temperature=0.8, seed=0)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/tinyshakespeare/input.txt"))
