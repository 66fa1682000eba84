"""The /metrics endpoint bounds what idle connections hold (issue 14, finding 4): each
gets a read timeout, and at most ``max_connections`` are served at once."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry

from potluck.observability.endpoint import MetricsServer


def closed_by_server(conn: socket.socket, within: float) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_capped_and_closed_after_the_read_timeout():
    server = MetricsServer(CollectorRegistry(), read_timeout=1.0, max_connections=4)
    idle: list[socket.socket] = []
    try:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
        time.sleep(0.2)  # the listener has accepted them (their threads, if any, started)
        assert threading.active_count() <= threads + 4  # a thread per served connection, no more
        started = time.monotonic()
        assert all(closed_by_server(c, 30.0) for c in idle)  # over the cap at once, the rest at the timeout
        assert time.monotonic() - started < 30.0
        body = urllib.request.urlopen(server.url, timeout=10).read()
        assert body is not None  # served once the idle ones are gone
    finally:
        for c in idle:
            c.close()
        server.close()
