"""potluck errors ↔ gRPC status codes, in one place, both directions.

The server aborts a call with the code of the error it raised; the client turns the
code back into the same error class, so both sides report the same specific reason.
"""

from __future__ import annotations

import grpc

from potluck.core.errors import (
    AccessDenied,
    ConfigError,
    LedgerError,
    NonFiniteError,
    ParamsError,
    PotluckError,
    ResultRejected,
    SchemaMismatch,
    SignatureError,
    TransportError,
    UnknownId,
)
from potluck.transport.chunks import PayloadError

# Most specific first: the first class an error is an instance of decides its code.
_TO_STATUS: list[tuple[type[PotluckError], grpc.StatusCode]] = [
    (AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (LedgerError, grpc.StatusCode.DATA_LOSS),
    (UnknownId, grpc.StatusCode.NOT_FOUND),
    (SchemaMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (ResultRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (PayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (NonFiniteError, grpc.StatusCode.INVALID_ARGUMENT),
    (ParamsError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (TransportError, grpc.StatusCode.UNAVAILABLE),
]

# Details are prefixed with the error class so the client can rebuild the exact kind.
_BY_NAME: dict[str, type[PotluckError]] = {
    cls.__name__: cls
    for cls in (AccessDenied, UnknownId, SchemaMismatch, ResultRejected, NonFiniteError, ParamsError, ConfigError,
                SignatureError, LedgerError)
}


def status_of(error: PotluckError) -> grpc.StatusCode:
    if isinstance(error, PayloadError) and error.reason == "oversize":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for cls, code in _TO_STATUS:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def details_of(error: PotluckError) -> str:
    if isinstance(error, PayloadError):
        return f"PayloadError({error.reason}): {error}"
    return f"{type(error).__name__}: {error}"


def error_from_details(details: str) -> PotluckError | None:
    """The server's own error from its :func:`details_of` text; None if it names no known kind."""
    name, sep, message = details.partition(": ")
    if sep and name.startswith("PayloadError(") and name.endswith(")"):
        return PayloadError(name[len("PayloadError(") : -1], message)
    if sep and name in _BY_NAME:
        return _BY_NAME[name](message)
    return None


def error_from_rpc(exc: grpc.RpcError) -> PotluckError:
    """The potluck error for a failed call: the server's own kind, or a TransportError."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    own = error_from_details(details)
    if own is not None:
        return own
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return TransportError(f"server unreachable ({code.name}): {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Not our own oversize refusal (that carries its name): gRPC's concurrency or
        # message limits, which a node should treat like a busy server and retry.
        return TransportError(f"server busy or message too large ({code.name}): {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED or code == grpc.StatusCode.UNAUTHENTICATED:
        return AccessDenied(details)
    return TransportError(f"call failed ({code.name if code else 'unknown'}): {details}")
