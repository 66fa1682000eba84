"""potluck: federated and decentralized model training on Linux.

Layers, top to bottom; imports point downward only (tests/test_layers.py checks it)::

    cli            commands: parse, validate, print; no logic of their own
    apps           simulate / server / node: wire a runtime to a backend
    backends       where nodes run: in-process, process pool, the gRPC fleet;
                   each implements runtime's NodePool
    observability  run reports and plots, Prometheus metrics, JSON logs: round hooks and wrappers
    runtime        the round loop (coordinator), NodePool seam, node runner, run directory
    ledger         the provenance ledger: signed updates, hash chain, Merkle proofs, audit
    updates        node-side update stages: quantisation, top-k, local DP, secure-aggregation masks
    strategies     streaming aggregation rules and server optimizers
    tasks          the Task protocol, PyTorch / scikit-learn adapters, data loaders
    transport      wire protocol (protobuf, gRPC), TLS material, chunked streaming
    core           Params, messages, errors, config, digests, the run directory's layout;
                   needs only numpy (and BLAKE3)

``tasks`` and ``strategies`` do not know each other.

The seam between *what to compute* (Task, Strategy) and *where it runs* is
:class:`potluck.runtime.pool.NodePool`.

The names a user needs are exported here (``from potluck import Task, Strategy,
simulate``); see docs/api.md. Those outside ``core`` are imported on first use, so
``import potluck`` needs only numpy. ``potluck.api`` (:func:`simulate`, hooks) and
``potluck.testing`` (a scripted pool, a fake clock) sit above the layers.
"""

from typing import TYPE_CHECKING, Any

from potluck.core import (
    ConfigError,
    DataError,
    EvaluateInstruction,
    EvaluateResult,
    FitInstruction,
    FitResult,
    NodeError,
    NodeFailed,
    NodeLeft,
    NodeTimedOut,
    NonFiniteError,
    Params,
    ParamsError,
    ParamsKind,
    PotluckError,
    RoundFailed,
    RunDirError,
    SchemaMismatch,
    StrategyError,
    TaskError,
)

if TYPE_CHECKING:
    from potluck.api import EvaluateOn, Hook, SimulationResult, simulate
    from potluck.core.config import SimulationConfig
    from potluck.core.records import RoundRecord
    from potluck.runtime.coordinator import RoundDecision, RoundHook
    from potluck.strategies import (
        AggregationRule,
        Aggregator,
        BufferedAggregator,
        FedAvg,
        Option,
        PlainStep,
        ServerStep,
        Strategy,
        WeightedMean,
        make_strategy,
    )
    from potluck.tasks.data.dataset import Dataset
    from potluck.tasks.protocol import LOSS_METRIC, DataInfo, EvalOutput, FitOutput, MetricSpec, Task

__version__ = "0.1.0"

# name -> the module it is imported from on first use
_LAZY = {
    **dict.fromkeys(["EvaluateOn", "Hook", "SimulationResult", "simulate"], "potluck.api"),
    "SimulationConfig": "potluck.core.config",
    "RoundRecord": "potluck.core.records",
    **dict.fromkeys(["RoundDecision", "RoundHook"], "potluck.runtime.coordinator"),
    **dict.fromkeys(["AggregationRule", "Aggregator", "BufferedAggregator", "FedAvg", "Option", "PlainStep", "ServerStep", "Strategy",
                     "WeightedMean", "make_strategy"], "potluck.strategies"),
    "Dataset": "potluck.tasks.data.dataset",
    **dict.fromkeys(["LOSS_METRIC", "DataInfo", "EvalOutput", "FitOutput", "MetricSpec", "Task"],
                    "potluck.tasks.protocol"),
}

__all__ = [
    "LOSS_METRIC", "AggregationRule", "Aggregator", "BufferedAggregator", "ConfigError", "DataError", "DataInfo", "Dataset", "EvalOutput",
    "EvaluateInstruction", "EvaluateOn", "EvaluateResult", "FedAvg", "FitInstruction", "FitOutput", "FitResult",
    "Hook", "MetricSpec", "NodeError", "NodeFailed", "NodeLeft", "NodeTimedOut", "NonFiniteError", "Option",
    "Params", "ParamsError", "ParamsKind", "PlainStep", "PotluckError", "RoundDecision", "RoundFailed", "RoundHook",
    "RoundRecord", "RunDirError", "SchemaMismatch", "ServerStep", "SimulationConfig", "SimulationResult",
    "Strategy", "StrategyError", "Task", "TaskError", "WeightedMean", "__version__", "make_strategy", "simulate",
]


def __getattr__(name: str) -> Any:
    """The names outside ``core``, imported on first use (then cached in this module)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'potluck' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
