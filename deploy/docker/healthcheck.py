#!/opt/potluck/bin/python
"""Container health check for the potluck image (HEALTHCHECK, Kubernetes exec probes).

Finds the ``potluck server`` or ``potluck node`` process in this container and exits 0
when it is healthy, 1 when not (the reason goes to stdout, which Docker keeps):

- a server is healthy when its gRPC port accepts a TCP connection: ``--bind`` from its
  command line, else ``bind`` from its ``--config`` TOML file, else ``127.0.0.1:7450``
  (a wildcard host is checked on loopback);
- a node opens no port: it is healthy while its process is alive and not a zombie (it
  reconnects to the server by itself).

Any other potluck command (``simulate``, ``certs``, ...) counts as healthy while it runs.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: potluck depends on tomli there
    import tomli as tomllib

DEFAULT_BIND = "127.0.0.1:7450"


def potluck_processes() -> list[tuple[str, list[str]]]:
    """(subcommand, argv) of every live potluck process but this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        names = [Path(a).name for a in argv[:2]]
        if "potluck" in names and state != "Z":
            rest = argv[names.index("potluck") + 1:]
            found.append((rest[0] if rest else "", argv))
    return found


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def server_address(argv: list[str]) -> tuple[str, int]:
    bind = option(argv, "--bind")
    config = option(argv, "--config")
    if bind is None and config is not None:
        bind = tomllib.loads(Path(config).read_text()).get("bind")
    host, _, port = (bind or DEFAULT_BIND).rpartition(":")
    host = host.strip("[]")
    return ("127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host), int(port)


def main() -> int:
    processes = potluck_processes()
    if not processes:
        print("unhealthy: no potluck process in this container")
        return 1
    for command, argv in processes:
        if command == "server":
            address = server_address(argv)
            try:
                with socket.create_connection(address, timeout=5):
                    pass
            except OSError as exc:
                print(f"unhealthy: server port {address[0]}:{address[1]}: {exc}")
                return 1
            print(f"healthy: server accepts connections on {address[0]}:{address[1]}")
            return 0
    print(f"healthy: potluck {processes[0][0]} is running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
