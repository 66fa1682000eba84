"""What every app that runs rounds shares: opening (or resuming) a run directory."""

from __future__ import annotations

import math

from potluck.core.errors import RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.runtime.rundir import RunDirectory
from potluck.strategies.base import Strategy


def open_run(run_dir: RunDirectory, config_toml: str, initial: Params, strategy: Strategy, *, resume: bool) -> tuple[Params, int]:
    """The model to start from and the first round to run.

    A new run writes its config and commits the initial model as round 0; so does a
    resumed run that was stopped before round 0 was committed. A resumed run drops
    anything written after its last committed round, restores that round's model and
    strategy state, and checks the initial model matches (the same task and seed).
    """
    if not resume or not run_dir.committed_rounds():
        run_dir.create(config_toml)
        record = RoundRecord(0, math.nan, math.nan, 0, 0, 0.0, initial.digest)
        run_dir.commit(record, initial, strategy.state())
        return initial, 1
    if run_dir.load(0).params.digest != initial.digest:  # checked before resume tidies anything
        raise RunDirError(f"{run_dir.path} was started from another initial model (other task or seed)")
    last = run_dir.prepare_resume()
    strategy.load_state(last.strategy_state)
    return last.params, last.round + 1
