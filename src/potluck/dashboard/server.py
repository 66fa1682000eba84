"""Serving the dashboard: the address is checked and bound first (so a refused or busy
address is a one-line error before anything starts, and port 0 reports the port the
system picked), then uvicorn serves the application on that socket: :func:`serve` until
SIGINT or SIGTERM (``potluck dashboard``), :func:`start_in_thread` beside a run until
stopped (for a command that serves the dashboard of its own run). Open live streams
get two seconds to close on shutdown."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from potluck.core.errors import TransportError
from potluck.core.files import reason
from potluck.dashboard.app import Settings, create_app
from potluck.dashboard.auth import Bind, check_bind


def bind_socket(bind: Bind) -> socket.socket:
    """A socket bound to ``bind``; :class:`TransportError` when the address cannot be bound."""
    host = "127.0.0.1" if bind.host.lower() == "localhost" else bind.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, bind.port))
    except OSError as exc:
        sock.close()
        raise TransportError(f"the dashboard cannot listen on {bind.host}:{bind.port}: {reason(exc)}") from exc
    return sock


def _config(settings: Settings) -> Any:
    import uvicorn

    return uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="off",
                          timeout_graceful_shutdown=2)


def serve(settings: Settings, bind: Bind, announce: Callable[[str], None]) -> None:
    """Serve until interrupted. ``announce`` is handed the page's address once it is bound
    (with ``?token=`` when a token is set). :class:`ConfigError` for a non-loopback bind
    without a token."""
    import uvicorn

    check_bind(bind, settings.token)
    sock = bind_socket(bind)
    url = bind.url(sock.getsockname()[1])
    announce(url + ("?token=TOKEN (the token you gave)" if settings.token else ""))
    try:
        uvicorn.Server(_config(settings)).run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class Background:
    """A dashboard served on a thread: ``url`` is its page; :meth:`stop` ends it."""

    url: str
    server: Any
    thread: threading.Thread
    sock: socket.socket

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for it (at most ``timeout`` seconds)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def start_in_thread(settings: Settings, bind: Bind, timeout: float = 30.0) -> Background:
    """Serve on a daemon thread (no signal handlers are installed there); returns once it
    accepts connections. :class:`ConfigError` as :func:`serve`; :class:`TransportError`
    when the address cannot be bound or it does not start within ``timeout`` seconds."""
    import uvicorn

    check_bind(bind, settings.token)
    sock = bind_socket(bind)
    server = uvicorn.Server(_config(settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="potluck-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    running = Background(bind.url(sock.getsockname()[1]), server, thread, sock)
    if not server.started:
        running.stop()
        raise TransportError(f"the dashboard on {bind.host}:{bind.port} did not start within {timeout:g} s")
    return running
