"""potluck errors ↔ gRPC status codes: the one map, both directions.

The server aborts a call with the code of the error it raised and details
``"Kind: message"``; the node rebuilds the same class from the details when the code
admits it, else the code's family. What the node then does depends on the family:

========================  =====================  ===================================
status code               family on the node     the node
========================  =====================  ===================================
INVALID_ARGUMENT          ParamsError            skips that result (WireError,
                                                 PayloadError, NonFiniteError, ...)
FAILED_PRECONDITION       SchemaMismatch         skips the result; at join: stops
ABORTED                   UnexpectedResult       skips the result, goes on
NOT_FOUND                 UnknownId              rejoins
PERMISSION_DENIED         AccessDenied           stops: it is not allowed
UNAUTHENTICATED           AccessDenied,          stops
                          SignatureError
DATA_LOSS                 LedgerError            stops (or leaves, by its settings)
RESOURCE_EXHAUSTED        TransportError,        backs off and retries; an oversized
                          PayloadError           payload (named) is skipped
INTERNAL                  TransportError         backs off: the server failed (its
                                                 own config, disk, strategy, ...)
anything else             TransportError         backs off and rejoins
========================  =====================  ===================================

Errors that describe the server's own trouble (a RunDirError, a ConfigError of its
settings) go out as INTERNAL and come back as a TransportError naming them: they are
no verdict on the node's request. The map is keyed by class *name*, so classes defined
above the transport layer (``LedgerMismatch``) are listed without an upward import;
``tests/transport/test_status_map.py`` fails for any PotluckError not listed here.
"""

from __future__ import annotations

import grpc

from potluck.core.errors import (
    AccessDenied,
    LedgerError,
    ParamsError,
    PotluckError,
    SchemaMismatch,
    SignatureError,
    TransportError,
    UnexpectedResult,
    UnknownId,
)
from potluck.transport.chunks import PayloadError

Code = grpc.StatusCode

# Every PotluckError by name. INTERNAL: the server's own failure, never a verdict on a call.
STATUS: dict[str, grpc.StatusCode] = {
    "AccessDenied": Code.PERMISSION_DENIED,
    "CertificateRevoked": Code.PERMISSION_DENIED,
    "StaleCertificate": Code.PERMISSION_DENIED,
    "SignatureError": Code.UNAUTHENTICATED,
    "LedgerError": Code.DATA_LOSS,
    "LedgerMismatch": Code.DATA_LOSS,
    "UnknownId": Code.NOT_FOUND,
    "SchemaMismatch": Code.FAILED_PRECONDITION,
    "UnexpectedResult": Code.ABORTED,
    "PeerRefused": Code.INTERNAL,  # peers speak their own lane, not gRPC
    "RecordError": Code.INTERNAL,
    "ParamsError": Code.INVALID_ARGUMENT,
    "NonFiniteError": Code.INVALID_ARGUMENT,
    "WireError": Code.INVALID_ARGUMENT,
    "PayloadError": Code.INVALID_ARGUMENT,  # RESOURCE_EXHAUSTED when oversized
    "TransportError": Code.UNAVAILABLE,
    "ConfigError": Code.INTERNAL,
    "CertificateError": Code.INTERNAL,
    "DataError": Code.INTERNAL,
    "TaskError": Code.INTERNAL,
    "StrategyError": Code.INTERNAL,
    "RoundFailed": Code.INTERNAL,
    "BudgetExhausted": Code.INTERNAL,
    "RunDirError": Code.INTERNAL,
    "NodeError": Code.INTERNAL,
    "NodeFailed": Code.INTERNAL,
    "NodeResultInvalid": Code.INTERNAL,
    "NodeTimedOut": Code.INTERNAL,
    "NodeLeft": Code.INTERNAL,
}

# What a code means on the node: the classes it may be rebuilt as (a subclass of one of
# them, named in the details), the first being what it is without a name.
FAMILY: dict[grpc.StatusCode, tuple[type[PotluckError], ...]] = {
    Code.INVALID_ARGUMENT: (ParamsError,),
    Code.FAILED_PRECONDITION: (SchemaMismatch,),
    Code.ABORTED: (UnexpectedResult,),
    Code.NOT_FOUND: (UnknownId,),
    Code.PERMISSION_DENIED: (AccessDenied,),
    Code.UNAUTHENTICATED: (AccessDenied, SignatureError),
    Code.DATA_LOSS: (LedgerError,),
    # gRPC's own concurrency and message limits answer RESOURCE_EXHAUSTED too: retry those
    Code.RESOURCE_EXHAUSTED: (TransportError, PayloadError),
}


def status_of(error: PotluckError) -> grpc.StatusCode:
    """The code ``error`` goes out with: its class's, or its nearest listed ancestor's."""
    if isinstance(error, PayloadError) and error.reason == "oversize":
        return Code.RESOURCE_EXHAUSTED
    for cls in type(error).__mro__:
        if cls.__name__ in STATUS:
            return STATUS[cls.__name__]
    return Code.INTERNAL


def details_of(error: PotluckError) -> str:
    if isinstance(error, PayloadError):
        return f"PayloadError({error.reason}): {error}"
    return f"{type(error).__name__}: {error}"


def _subclasses(cls: type[PotluckError]) -> list[type[PotluckError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _named(details: str) -> PotluckError | None:
    """The error :func:`details_of` wrote, if its class is loaded here and rebuilt from a message."""
    name, sep, message = details.partition(": ")
    if not sep:
        return None
    if name.startswith("PayloadError(") and name.endswith(")"):
        return PayloadError(name[len("PayloadError(") : -1], message)
    for cls in _subclasses(PotluckError):
        if cls.__name__ == name and cls.__init__ is PotluckError.__init__:
            return cls(message)
    return None


def error_from_status(code: grpc.StatusCode | None, details: str) -> PotluckError:
    """The potluck error for a refused call: the named class when ``code`` admits it,
    else the family of ``code`` (see the table above), else a TransportError."""
    family = FAMILY.get(code) if code is not None else None
    named = _named(details)
    if family is not None and named is not None and isinstance(named, family):
        return named
    if family is not None and family[0] is not TransportError:
        return family[0](details)
    what = {Code.INTERNAL: "the server failed", Code.RESOURCE_EXHAUSTED: "server busy or message too large",
            None: "refused"}.get(code, "server unreachable or call failed")
    return TransportError(f"{what} ({code.name if code else 'no status'}): {details}")


def error_from_details(details: str) -> PotluckError:
    """The error for a refusal that carries only details (the bulk lane's): its code is
    the one its named class goes out with over gRPC, so both lanes agree."""
    named = _named(details)
    return error_from_status(status_of(named) if named is not None else None, details)


def error_from_rpc(exc: grpc.RpcError) -> PotluckError:
    """The potluck error for a failed gRPC call."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    return error_from_status(code, details)
