"""Serving the dashboard: the address is checked and bound first (so a refused or busy
address is a one-line error before anything starts, and port 0 reports the port the
system picked), then uvicorn serves the application on that socket until SIGINT or
SIGTERM. Open live streams get two seconds to close on shutdown."""

from __future__ import annotations

import socket
from collections.abc import Callable

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


def serve(settings: Settings, bind: Bind, announce: Callable[[str], None]) -> None:
    """Serve until interrupted. ``announce`` is handed the page's address once it is bound
    (with ``?token=`` when a token is set). :class:`ConfigError` for a non-loopback bind
    without a token."""
    import uvicorn

    check_bind(bind, settings.token)
    sock = bind_socket(bind)
    url = bind.url(sock.getsockname()[1])
    announce(url + ("?token=TOKEN (the token you gave)" if settings.token else ""))
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
