"""Where the dashboard listens, and the token every request must carry off loopback.

A loopback bind (``127.0.0.1``, ``::1``, ``localhost``) needs no token; any other
address is refused without one (:func:`check_bind`). With a token, every request — the
page, its files, the JSON endpoints and the live stream — must present it, as
``Authorization: Bearer TOKEN``, as ``?token=TOKEN`` (the link to open the page with;
the answer then sets an HttpOnly, SameSite=Strict cookie so the page's own requests
carry it) or as that cookie; anything else gets 401. Tokens are compared in constant
time. Without a token, only requests naming a loopback host are served, so a web page
elsewhere cannot read runs through a DNS name that resolves to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from potluck.core.errors import ConfigError
from potluck.core.files import reason
from potluck.transport.addresses import bare_host, split_address

MIN_TOKEN_LENGTH = 16
COOKIE = "potluck_dashboard_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; a name could resolve anywhere."""
    host = bare_host(host)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Bind:
    host: str  # as sockets take it: no IPv6 brackets; "0.0.0.0" for all interfaces
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def parse_bind(text: str) -> Bind:
    """``HOST:PORT`` as ``--bind`` takes it (port 0: the system picks one)."""
    host, port = split_address(text, "--bind")
    return Bind(bare_host(host) or "0.0.0.0", port)


def resolve_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from ``--token`` or the first line of ``--token-file`` (not both);
    :class:`ConfigError` when it is empty, too short, or the file cannot be read."""
    if token is not None and token_file is not None:
        raise ConfigError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = reason(exc) if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"--token-file {token_file}: cannot read it: {why}") from exc
        token = lines[0].strip() if lines else ""
        where = f"--token-file {token_file}"
    else:
        where = "--token"
    if token is None:
        return None
    if len(token.strip()) < MIN_TOKEN_LENGTH or token != token.strip():
        raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN_LENGTH} characters without surrounding "
                          f"white space ({_MAKE_ONE})")
    return token


def check_bind(bind: Bind, token: str | None) -> None:
    """:class:`ConfigError` for an address other than loopback without a token."""
    if token is None and not bind.loopback:
        raise ConfigError(f"--bind {bind.host}:{bind.port} is not a loopback address, so the dashboard needs a token: "
                          f"pass --token or --token-file ({_MAKE_ONE}), or bind 127.0.0.1")


def same_token(presented: str, token: str) -> bool:
    """Constant-time comparison (of digests, so the length is not revealed either)."""
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest())


class TokenGate:
    """ASGI middleware: the token check (or, without a token, the loopback host check)
    on every HTTP request; see the module docstring."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is None:
            host = _host_of(headers.get("host", ""))
            if host.lower() not in LOOPBACK_HOSTS:
                await _refuse(send, 421, f"this dashboard answers only to a loopback host, not {host!r}")
                return
            await self.app(scope, receive, send)
            return
        from_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        cookie = SimpleCookie(headers.get("cookie", ""))
        presented = [headers.get("authorization", "").removeprefix("Bearer ").strip(), from_query,
                     cookie[COOKIE].value if COOKIE in cookie else ""]
        if not any(p and same_token(p, self.token) for p in presented):
            await _refuse(send, 401, "a token is required: open the link with ?token=TOKEN or send "
                                     "Authorization: Bearer TOKEN")
            return
        if from_query and same_token(from_query, self.token):
            send = _setting_cookie(send, self.token)
        await self.app(scope, receive, send)


def _host_of(header: str) -> str:
    """The host of a ``Host`` header, without its port and IPv6 brackets."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if ":" in header else header


def _setting_cookie(send: Send, token: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            value = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message["headers"] = [*message.get("headers", []), (b"set-cookie", value.encode("latin-1"))]
        await send(message)
    return wrapped


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="potluck dashboard"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
