"""What every app that runs rounds shares: opening (or resuming) a run directory."""

from __future__ import annotations

import math

from potluck.core.errors import RunDirError
from potluck.core.params import Params
from potluck.runtime.records import RoundRecord
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.base import Strategy


def open_run(run_dir: RunDirectory, config_toml: str, initial: Params, strategy: Strategy, *, resume: bool) -> tuple[Params, int]:
    """The model to start from and the first round to run.

    A new run writes its config and commits the initial model as round 0. A resumed
    run drops any half-written round, restores the last committed model and strategy
    state, and checks the initial model matches (the same task and seed).
    """
    if not resume:
        run_dir.create(config_toml)
        record = RoundRecord(0, math.nan, math.nan, 0, 0, 0.0, initial.digest)
        run_dir.commit(record, initial, strategy.state())
        return initial, 1
    last = run_dir.prepare_resume()
    first_model = run_dir.load(0)[0]
    if first_model.digest != initial.digest:
        raise RunDirError(f"{run_dir.path} was started from another initial model (other task or seed)")
    params, state, _ = run_dir.load(last)
    strategy.load_state(state)
    return params, last + 1
