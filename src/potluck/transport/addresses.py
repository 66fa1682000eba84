"""``HOST:PORT`` addresses, checked once, with a ConfigError that names the setting.

Hosts are names, IPv4 literals, or IPv6 literals in brackets (``[::1]:7000``); ports
0–65535 (0: the system picks one, where something listens).
"""

from __future__ import annotations

from potluck.core.errors import ConfigError

_FORM = "HOST:PORT (e.g. server.example.org:7000, 10.0.0.5:7000 or [::1]:7000)"


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """``(host, port)`` of ``address``; the host keeps IPv6 brackets, "" for all interfaces."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {address!r} is not {_FORM}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ConfigError(f"{what} {address!r}: write an IPv6 host in brackets, as {_FORM}")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{what} {address!r}: the host holds white space")
    return host, int(port)


def bare_host(host: str) -> str:
    """The host as sockets take it: without IPv6 brackets."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
