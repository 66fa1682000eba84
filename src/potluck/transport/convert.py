"""Domain ↔ wire, in symmetric ``to_proto`` / ``from_proto`` pairs (only place with protobuf).

Parameters are not converted here: they travel as safetensors chunks (``chunks.py``)
after a header made by these functions.

Every function raises :class:`WireError` (a :class:`~potluck.core.errors.ParamsError`)
for content the wire cannot carry or that makes no sense, never protobuf's own
``ValueError`` or ``UnicodeEncodeError``:

=====================  ==========================================================
``int`` values         must fit the wire's ``sint64``: −2⁶³ … 2⁶³ − 1
``str`` values, names  must be encodable as UTF-8 (no lone surrogates)
metric names           1–128 characters
=====================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping

from potluck.core.errors import ParamsError
from potluck.core.messages import ConfigDict, Scalar
from potluck.transport.v1 import fleet_pb2 as pb

SINT64_MIN, SINT64_MAX = -(2**63), 2**63 - 1
MAX_METRIC_NAME = 128


class WireError(ParamsError):
    """A message is well-formed protobuf but its content is invalid."""


def _check_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"{what} {text[:40]!r} is not valid UTF-8 text ({exc.reason})") from None
    return text


def scalar_to_proto(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(bool_value=value)
    if isinstance(value, int):
        if not SINT64_MIN <= value <= SINT64_MAX:
            shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
            raise WireError(f"config integers must be within −2**63 … 2**63 − 1 (sint64), got {shown}")
        return pb.Scalar(int_value=value)
    if isinstance(value, float):
        return pb.Scalar(float_value=value)
    if isinstance(value, str):
        return pb.Scalar(string_value=_check_text(value, "config string"))
    raise WireError(f"config values must be bool, int, float or str, got {type(value).__name__}")


def scalar_from_proto(message: pb.Scalar) -> Scalar:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise WireError("a config value is empty")
    value: Scalar = getattr(message, kind)
    return value


def config_to_proto(config: ConfigDict) -> dict[str, pb.Scalar]:
    out = {}
    for key, value in config.items():
        name = _check_text(str(key), "config key")
        try:
            out[name] = scalar_to_proto(value)
        except WireError as exc:
            raise WireError(f"config value {name[:40]!r}: {exc}") from None
    return out


def config_from_proto(config: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    out = {}
    for key, value in config.items():
        try:
            out[key] = scalar_from_proto(value)
        except WireError as exc:
            raise WireError(f"config value {key[:40]!r}: {exc}") from None
    return out


def _metric_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME:
        raise WireError(f"metric name {str(name)[:40]!r} must be 1–{MAX_METRIC_NAME} characters")
    return _check_text(name, "metric name")


def metrics_to_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics for a ``map<string, double>``: names as :func:`metrics_from_proto` wants them,
    values anything ``float()`` takes that is a real number (NaN and Inf are kept)."""
    out = {}
    for name, value in metrics.items():
        key = _metric_name(name)
        if isinstance(value, (str, bytes, complex)):
            raise WireError(f"metric {key[:40]!r} must be a number, got {type(value).__name__}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise WireError(f"metric {key[:40]!r} must be a number: {exc}") from None
    return out


def metrics_from_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as floats; NaN/Inf metrics are kept (a loss may be NaN), names must be sane."""
    return {_metric_name(name): float(value) for name, value in metrics.items()}
