"""Domain ↔ wire, in symmetric ``to_proto`` / ``from_proto`` pairs (only place with protobuf).

Parameters are not converted here: they travel as safetensors chunks (``chunks.py``)
after a header made by these functions.
"""

from __future__ import annotations

from collections.abc import Mapping

from potluck.core.errors import ParamsError
from potluck.core.messages import ConfigDict, Scalar
from potluck.transport.v1 import fleet_pb2 as pb


class WireError(ParamsError):
    """A message is well-formed protobuf but its content is invalid."""


def scalar_to_proto(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(bool_value=value)
    if isinstance(value, int):
        return pb.Scalar(int_value=value)
    if isinstance(value, float):
        return pb.Scalar(float_value=value)
    if isinstance(value, str):
        return pb.Scalar(string_value=value)
    raise WireError(f"config values must be bool, int, float or str, got {type(value).__name__}")


def scalar_from_proto(message: pb.Scalar) -> Scalar:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise WireError("a config value is empty")
    value: Scalar = getattr(message, kind)
    return value


def config_to_proto(config: ConfigDict) -> dict[str, pb.Scalar]:
    return {str(k): scalar_to_proto(v) for k, v in config.items()}


def config_from_proto(config: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    return {k: scalar_from_proto(v) for k, v in config.items()}


def metrics_from_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as floats; NaN/Inf metrics are kept (a loss may be NaN), names must be sane."""
    out = {}
    for name, value in metrics.items():
        if not name or len(name) > 128:
            raise WireError(f"metric name {name[:40]!r} must be 1–128 characters")
        out[name] = float(value)
    return out
