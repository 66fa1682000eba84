"""Core types every layer shares; imports nothing else of potluck and needs only numpy."""

from potluck.core.errors import (
    ConfigError,
    DataError,
    NodeError,
    NodeFailed,
    NodeLeft,
    NodeTimedOut,
    NonFiniteError,
    ParamsError,
    PotluckError,
    RoundFailed,
    RunDirError,
    SchemaMismatch,
    StrategyError,
    TaskError,
)
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind

__all__ = [
    "ConfigError", "DataError", "EvaluateInstruction", "EvaluateResult", "FitInstruction",
    "FitResult", "NodeError", "NodeFailed", "NodeLeft", "NodeTimedOut", "NonFiniteError",
    "Params", "ParamsError", "ParamsKind", "PotluckError", "RoundFailed", "RunDirError",
    "SchemaMismatch", "StrategyError", "TaskError",
]
