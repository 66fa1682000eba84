"""One map from every PotluckError to a gRPC status and back (transport/status.py).

The classes are found by walking ``PotluckError.__subclasses__()`` after importing every
potluck module, so a new error anywhere fails here until it is given a status.
"""

from __future__ import annotations

import gc

import grpc
import pytest

from error_kit import all_error_classes, instances
from potluck.core.errors import (
    AccessDenied,
    ParamsError,
    PotluckError,
    SchemaMismatch,
    TransportError,
    UnexpectedResult,
    UnknownId,
)
from potluck.transport.chunks import PayloadError
from potluck.transport.convert import WireError
from potluck.transport.status import FAMILY, STATUS, details_of, error_from_details, error_from_rpc, status_of

CLASSES = all_error_classes()
CASES = [error for cls in CLASSES for error in instances(cls)]


class Refused(grpc.RpcError):
    """What a stub raises for a call the server aborted."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_given_a_status_by_name(cls):
    assert cls.__name__ in STATUS, f"{cls.__name__} ({cls.__module__}) has no status in transport/status.py"


def test_the_map_names_no_class_that_does_not_exist():
    assert set(STATUS) == {cls.__name__ for cls in CLASSES}


@pytest.mark.parametrize("error", CASES, ids=lambda e: f"{type(e).__name__}-{getattr(e, 'reason', '')}")
def test_every_error_comes_back_on_the_node_as_its_class_or_a_server_failure(error):
    code = status_of(error)
    back = error_from_rpc(Refused(code, details_of(error)))
    if code in FAMILY:  # a verdict on the node's call: rebuilt exactly
        assert type(back) is type(error) and str(back) == str(error)
        assert any(isinstance(error, family) for family in FAMILY[code])
    else:  # the server's own trouble: the node backs off, told what broke
        assert code == grpc.StatusCode.INTERNAL or type(error) is TransportError
        assert isinstance(back, TransportError) and type(error).__name__ in str(back) + type(back).__name__
    assert type(error_from_details(details_of(error))) is type(back)  # the bulk lane agrees with gRPC


@pytest.mark.parametrize("code", sorted(FAMILY, key=lambda c: c.name), ids=lambda c: c.name)
def test_a_code_without_a_name_comes_back_as_its_family(code):
    back = error_from_rpc(Refused(code, "said by a proxy, not by potluck"))
    assert type(back) is FAMILY[code][0] and "said by a proxy" in str(back)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c not in FAMILY and c != grpc.StatusCode.OK],
                         ids=lambda c: c.name)
def test_every_other_code_is_a_transport_error_naming_it(code):
    back = error_from_rpc(Refused(code, "connection reset"))
    assert type(back) is TransportError and code.name in str(back) and "connection reset" in str(back)


def test_a_name_the_code_does_not_admit_is_not_trusted():
    back = error_from_rpc(Refused(grpc.StatusCode.UNAVAILABLE, "AccessDenied: you are banned"))
    assert type(back) is TransportError  # a retry, not a fatal refusal a code did not back up
    back = error_from_rpc(Refused(grpc.StatusCode.INVALID_ARGUMENT, "UnexpectedResult: late"))
    assert type(back) is ParamsError


def test_a_wire_refusal_makes_the_node_skip_the_result_not_rejoin():
    refusal = WireError("metric name '' must be 1–128 characters")
    back = error_from_rpc(Refused(status_of(refusal), details_of(refusal)))
    # the node loop skips (UnexpectedResult, ParamsError) and backs off on TransportError
    assert isinstance(back, WireError) and isinstance(back, ParamsError) and not isinstance(back, TransportError)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AccessDenied("not on the allow-list"), grpc.StatusCode.PERMISSION_DENIED),
        (UnknownId("no such session"), grpc.StatusCode.NOT_FOUND),
        (SchemaMismatch("'w' has shape (2,)"), grpc.StatusCode.FAILED_PRECONDITION),
        (UnexpectedResult("late"), grpc.StatusCode.ABORTED),
        (PayloadError("oversize", "too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (PayloadError("digest", "does not match"), grpc.StatusCode.INVALID_ARGUMENT),
        (WireError("malformed join request"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_refusals_go_out_with_their_documented_codes(error, code):
    assert status_of(error) == code


def test_a_subclass_not_listed_takes_its_nearest_listed_ancestors_code():
    class Unlisted(UnknownId):
        """Only for this test; listed nowhere."""

    try:
        assert status_of(Unlisted("x")) == grpc.StatusCode.NOT_FOUND
        assert status_of(type("Bare", (PotluckError,), {})("x")) == grpc.StatusCode.INTERNAL
    finally:
        del Unlisted
        gc.collect()  # out of PotluckError.__subclasses__() again


def test_payload_errors_keep_their_reason():
    back = error_from_rpc(Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, details_of(PayloadError("oversize", "big"))))
    assert isinstance(back, PayloadError) and back.reason == "oversize"
