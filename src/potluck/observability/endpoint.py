"""``/metrics`` over HTTP: one registry, a daemon thread, loopback by default.

The server counts the pages it has finished sending, so a process whose run is over
can wait for one more scrape before it exits (:func:`final_scrape`): Prometheus then
holds the final figures even though the target is gone.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from potluck.core.errors import ConfigError

FINAL_SCRAPE_SECONDS = 15.0  # Prometheus' usual scrape interval
READ_TIMEOUT = 10.0  # s: a connection that sends no request (or reads no page) this long is closed
MAX_CONNECTIONS = 16  # served at once; one more is closed unanswered (Prometheus needs one)


class MetricsServer:
    """``/metrics`` over HTTP for one registry, in a daemon thread; :meth:`close` stops it.

    It counts the pages it has finished sending (:attr:`scrapes`), so a process can wait
    for one more scrape before it ends (:meth:`wait_for_scrape`). Each connection gets
    ``read_timeout`` seconds per read or write, and at most ``max_connections`` are served
    at once: idle connections cannot take the process's threads.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0, *,
                 read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        self.scrapes = 0
        self.last_scrape = -math.inf  # time.monotonic() when the last page was sent
        self._cond = threading.Condition()
        app = make_wsgi_app(registry)

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            return _Counted(app(environ, start_response), self._sent)

        try:
            family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            server_class = type("_Server", (_CappedServer,), {  # IPv4 or IPv6
                "address_family": family, "slots": threading.BoundedSemaphore(max_connections)})
            handler = type("_Handler", (_QuietHandler,), {"timeout": read_timeout})
            self._httpd: WSGIServer = make_server(str(sockaddr[0]), port, counted, server_class,
                                                  handler_class=handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="potluck-metrics", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def _sent(self) -> None:
        with self._cond:
            self.scrapes += 1
            self.last_scrape = time.monotonic()
            self._cond.notify_all()

    def wait_for_scrape(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` pages were sent; False if ``timeout`` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.scrapes > after, timeout)

    def close(self) -> None:
        """Stop serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


class _Counted:
    """A WSGI response that reports when it has been sent (servers call ``close()`` then)."""

    def __init__(self, body: Iterable[bytes], sent: Any) -> None:
        self.body, self.sent = body, sent

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        self.sent()


class _CappedServer(ThreadingWSGIServer):
    """A thread per connection, while a slot is free; a connection over the cap is closed."""

    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not logged."""


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (port 0 picks a free one: see ``.port``)."""
    return MetricsServer(registry, host, port)


def final_scrape(server: MetricsServer, stop: threading.Event | None = None) -> None:
    """If something scrapes ``server`` regularly (a scrape within twice
    :data:`FINAL_SCRAPE_SECONDS`), wait up to :data:`FINAL_SCRAPE_SECONDS` for one more,
    so the last figures are recorded before the process ends; ``stop`` cuts the wait short."""
    if time.monotonic() - server.last_scrape > 2 * FINAL_SCRAPE_SECONDS:
        return
    seen, deadline = server.scrapes, time.monotonic() + FINAL_SCRAPE_SECONDS
    while not (stop is not None and stop.is_set()) and time.monotonic() < deadline:
        if server.wait_for_scrape(seen, min(0.25, max(0.0, deadline - time.monotonic()))):
            return
