"""Bounds on what one caller can hold of the gRPC server: a deadline on every call and a
small number of calls in progress per identity.

gRPC's Python server gives a call a worker thread as soon as its headers arrive, and a
call that then sends nothing (or reads nothing) holds that thread until its client's
own deadline, which a hostile client never sets. So the servicer registers every
method with a request *stream* (the wire is the same for unary calls): its code runs at
once, asks :class:`CallGuard` for a slot for the caller's identity, and reads the
request itself while the guard's watchdog holds a deadline over it. A call past its
deadline is cancelled (the client sees ``CANCELLED``), which frees its thread; a call
that moves a payload gets ``io_timeout`` plus the payload's size at ``min_rate`` bytes
per second, the rate floor the bulk lane also applies.

An identity is the certificate's common name under mutual TLS, else the peer's
connection (``--insecure``, where nothing proves who a peer is): at most ``per_identity`` calls of one identity are in progress; one
more is refused at once with ``RESOURCE_EXHAUSTED`` (the node backs off and retries).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from potluck.core.errors import TransportError

log = logging.getLogger(__name__)

MIN_RATE = 64 * 2**10  # bytes/s: the slowest payload transfer a call is given time for (as the bulk lane)


class Busy(Exception):
    """An identity already has as many calls in progress as it may (not a PotluckError:
    the servicer answers it with RESOURCE_EXHAUSTED, which nodes retry after a backoff)."""


class GuardedCall:
    """One call in progress: its identity and deadline (``time.monotonic()``)."""

    def __init__(self, identity: str, context: grpc.ServicerContext, deadline: float) -> None:
        self.identity, self.context, self.deadline = identity, context, deadline
        self.expired = False

    def allow(self, seconds: float, payload_bytes: int = 0) -> None:
        """From now, ``seconds`` more, and the time ``payload_bytes`` take at the rate floor."""
        self.deadline = time.monotonic() + seconds + payload_bytes / MIN_RATE

    def settle(self) -> None:
        """Everything the peer had to send has arrived: what is left is the server's work."""
        self.deadline = math.inf

    def check(self) -> None:
        """TransportError once the watchdog cancelled this call."""
        if self.expired:
            raise TransportError(f"call from {self.identity} cancelled: it ran past its server-side deadline")


class CallGuard:
    """Slots per identity and one watchdog thread that cancels calls past their deadline.

    ``on_expired(identity)`` is told of each cancelled call (a refusal counter).
    """

    def __init__(self, *, per_identity: int, io_timeout: float,
                 on_expired: Callable[[str], None] = lambda _: None) -> None:
        if per_identity < 1:
            raise ValueError(f"per_identity must be at least 1, got {per_identity}")
        self.per_identity, self.io_timeout, self.on_expired = per_identity, io_timeout, on_expired
        self._calls: set[GuardedCall] = set()
        self._held: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name="potluck-call-watchdog", daemon=True)
        self._thread.start()

    def held(self, identity: str) -> int:
        with self._cond:
            return self._held[identity]

    @contextlib.contextmanager
    def call(self, identity: str, context: grpc.ServicerContext) -> Iterator[GuardedCall]:
        """A slot for ``identity`` for the ``with`` block (Busy when it has none left),
        under a deadline of ``io_timeout`` seconds until :meth:`GuardedCall.allow` moves it."""
        entry = GuardedCall(identity, context, time.monotonic() + self.io_timeout)
        with self._cond:
            if self._held[identity] >= self.per_identity:
                raise Busy(f"{identity} already has {self._held[identity]} calls in progress "
                           f"(at most {self.per_identity} per node)")
            self._held[identity] += 1
            self._calls.add(entry)
            self._cond.notify_all()
        try:
            yield entry
        finally:
            with self._cond:
                self._calls.discard(entry)
                self._held[identity] -= 1
                if not self._held[identity]:
                    del self._held[identity]

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = time.monotonic()
                late = [c for c in self._calls if not c.expired and c.deadline <= now]
                for c in late:
                    c.expired = True
                if not late:
                    soonest = min((c.deadline for c in self._calls if not c.expired), default=math.inf)
                    self._cond.wait(min(max(soonest - now, 0.01), 1.0))
            for c in late:
                log.info("cancelled a call from %s: past its deadline", c.identity)
                self.on_expired(c.identity)
                c.context.cancel()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(5.0)


def first_message(requests: Iterator[Any], call: GuardedCall) -> Any | None:
    """The first message of a call's request stream (None when the stream ended without
    one); TransportError when the watchdog cancelled the call while it waited."""
    message = next(requests, None)
    call.check()
    return message


def address_of(context: grpc.ServicerContext) -> str:
    """An identity without TLS: the peer's connection ("ipv4:127.0.0.1:5555"). Not its
    host: nodes on one machine (the only use of --insecure) each get their own slots."""
    return f"connection {context.peer() or 'unknown'}"
