"""``potluck generate``: continue a prompt with a trained language model's run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.tasks.generation import sample_from_run

HELP = """Sample text from the model a run trained (a language-model task such as charlm).

Rebuilds the run's task from its config.toml, loads model.safetensors (or the last committed checkpoint) and prints the prompt followed by the sampled text. The same --seed gives the same text; --temperature 0 always takes the likeliest token.

Examples:

  potluck generate runs/20250101-120000-charlm --prompt "ROMEO:" --tokens 300

  potluck generate runs/a --prompt "To be" --temperature 0.7 --seed 3
"""


def _err(line: str) -> None:
    typer.echo(line, err=True)


def generate(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run directory of a language-model run.", show_default=False),
    prompt: str = typer.Option("", help="Text to continue (empty: start from a new line)."),
    tokens: int = typer.Option(200, min=0, help="How many tokens to sample (bytes or characters)."),
    temperature: float = typer.Option(1.0, min=0.0, help="Softmax temperature; 0 takes the likeliest token."),
    seed: int = typer.Option(0, help="Seed of the sampling."),
    data_path: Optional[Path] = typer.Option(None, help="The run's text file, if it moved since the run."),
) -> None:
    with failures_as_exit_codes(_err):
        typer.echo(sample_from_run(run_dir, prompt, tokens=tokens, temperature=temperature, seed=seed, data_path=data_path))
