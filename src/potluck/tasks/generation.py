"""Sampling text from a trained run: the run's task, rebuilt from its ``config.toml``.

``sample_from_run(run_dir, prompt)`` reads the resolved settings the run wrote
(``task``, ``data_path``, ``fit``, the column names), makes the same task, loads its
text (a char vocabulary comes from it), builds the model and loads the final
``model.safetensors`` (or, for a run still going, the last committed checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from potluck.core.errors import ConfigError, RunDirError, TaskError
from potluck.core.layout import RunLayout
from potluck.core.params import Params
from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo, TextGenerator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def run_settings(layout: RunLayout) -> dict[str, Any]:
    """The run's ``config.toml`` as a dict; RunDirError when missing or not TOML."""
    try:
        return tomllib.loads(layout.config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{layout.path} is not a run directory: it has no config.toml") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {layout.config_file}: {exc}") from None


def run_model(layout: RunLayout) -> Params:
    """The final model, or the last committed checkpoint of a run without one."""
    path = layout.model_file
    if not path.is_file():
        rounds = layout.committed_rounds()
        if not rounds:
            raise RunDirError(f"{layout.path} holds no trained model yet (no model.safetensors, no checkpoint)")
        path = layout.model_path(rounds[-1])
    try:
        return Params.decode(path.read_bytes())
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror}") from None


def sample_from_run(run_dir: Path, prompt: str, *, tokens: int = 200, temperature: float = 1.0, seed: int = 0,
                    data_path: Path | None = None) -> str:
    """``prompt`` continued by the run's model; ``data_path`` replaces the run's text file.

    Raises RunDirError (not a run, no model), TaskError (a task that cannot generate
    text), DataError (the text is gone: pass ``data_path``) or SchemaMismatch.
    """
    layout = RunLayout(run_dir)
    settings = run_settings(layout)
    name = settings.get("task")
    if not isinstance(name, str):
        raise RunDirError(f"{layout.config_file} names no task")
    fit = settings.get("fit", {})
    task = resolve_task(name, label_column=settings.get("label_column", "label"),
                        group_column=settings.get("group_column"), options=fit if isinstance(fit, dict) else {})
    if not isinstance(task, TextGenerator):
        raise TaskError(f"task {name!r} of run {layout.path} does not generate text (charlm does)")
    text = data_path or settings.get("data_path")
    if text is None:
        raise ConfigError(f"run {layout.path} names no data file: pass --data-path")
    data = task.load_data(Path(text))
    params = run_model(layout)
    task.build(DataInfo.from_dataset(data), 0)
    return task.generate(params, prompt, tokens=tokens, temperature=temperature, seed=seed)
