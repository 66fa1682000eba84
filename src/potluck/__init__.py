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
"""

from potluck.core import (
    ConfigError,
    DataError,
    EvaluateInstruction,
    EvaluateResult,
    FitInstruction,
    FitResult,
    NodeError,
    Params,
    ParamsError,
    ParamsKind,
    PotluckError,
    RoundFailed,
    TaskError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataError", "EvaluateInstruction", "EvaluateResult", "FitInstruction", "FitResult",
    "NodeError", "Params", "ParamsError", "ParamsKind", "PotluckError", "RoundFailed", "TaskError", "__version__",
]
