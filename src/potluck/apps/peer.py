"""``peer``: run one peer, or N peers on this machine (``peer up``) over mutual TLS.

``peer up`` makes a fresh CA and one peer certificate per peer, splits the task's data
(``--partition``: IID, seeded, or contiguous: one stretch of a text per peer) into one
NPZ file per peer (a text task's blocks, in charlm's byte vocabulary: ``-F vocab=char``
is refused, since a vocabulary made from each peer's share would differ between peers), and starts the peers as processes on
127.0.0.1: peer 0 first, then each next peer bootstrapping from the DHT address of the
one before it (any peer can be the bootstrap; none is special). It follows every
peer's ``metrics.jsonl`` and stops each child by PID at the end, on error or Ctrl-C.
Layout of ``<run_dir>``::

    tls/                 the CA and tls/peers/peer-000.crt ...
    data/peer-000.npz    each peer's data
    logs/peer-000.log    each peer's log
    peer-000/            each peer's run directory (peer/rundir.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import ConfigError, PotluckError, TransportError
from potluck.core.messages import Scalar
from potluck.peer.identity import issue_peer
from potluck.peer.runner import PeerConfig, StepRecord, run_peer, split_holdout
from potluck.peer.simulation import SimSettings, SimStep, simulate_peers
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.partition import contiguous, iid
from potluck.tasks.lm_task import CharLMTask
from potluck.tasks.protocol import DataInfo
from potluck.transport.certs import init_ca

POTLUCK = [sys.executable, "-m", "potluck.cli"]


def run_one(cfg: PeerConfig, on_step: Callable[[StepRecord], None] | None = None) -> list[StepRecord]:
    """Run one peer in this process until its last outer step. SIGTERM makes it leave:
    the step in progress is abandoned (its last commit stays), the peer announces that
    it leaves, and KeyboardInterrupt is raised (exit code 130 in the CLI)."""
    for noisy in ("kademlia", "rpcudp"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return asyncio.run(_leaving_on_sigterm(run_peer(cfg, on_step)))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


async def _leaving_on_sigterm(work: Coroutine[Any, Any, list[StepRecord]]) -> list[StepRecord]:
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


@dataclass(frozen=True)
class UpSettings:
    peers: int = 3
    outer_steps: int = 3
    task: str = "digits"
    data_path: Path | None = None
    inner_epochs: int = 1
    group_size: int = 8
    quantize: bool = False
    seed: int = 0
    partition: str = "iid"
    averaging: str = "mean"
    fit: dict[str, Scalar] = field(default_factory=dict)
    ttl: float = 6.0
    start_timeout: float = 120.0
    extra: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.peers <= 64:
            raise ConfigError(f"--peers must be in 1-64 on one machine, got {self.peers}")
        if self.partition not in ("iid", "contiguous"):
            raise ConfigError(f"--partition must be iid or contiguous for peer up, got {self.partition!r}")


def prepare(settings: UpSettings, run_dir: Path) -> list[str]:
    """Write the CA, the peer certificates and each peer's data; returns the peer ids."""
    tls = run_dir / "tls"
    init_ca(tls, force=True)
    task = resolve_task(settings.task, options=settings.fit)
    data = task.load_data(settings.data_path)
    if isinstance(task, CharLMTask) and task.settings.vocab != "byte":
        raise ConfigError(f"task {settings.task}: peers read their share as blocks of bytes; use -F vocab=byte "
                          "(a char vocabulary made from each peer's share would differ from peer to peer)")
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    ids = [f"peer-{i:03d}" for i in range(settings.peers)]
    parts = (contiguous(len(data), settings.peers) if settings.partition == "contiguous"
             else iid(len(data), settings.peers, settings.seed))
    for peer_id, part in zip(ids, parts):
        issue_peer(tls, peer_id)
        np.savez(run_dir / "data" / f"{peer_id}.npz", x=data.x[part], y=data.y[part])
    return ids


def peer_command(settings: UpSettings, run_dir: Path, peer_id: str, bootstrap: str | None) -> list[str]:
    cmd = [*POTLUCK, "peer", "--peer-id", peer_id, "--run-id", run_dir.name or "potluck",
           "--task", settings.task, "--data-path", str(run_dir / "data" / f"{peer_id}.npz"),
           "--tls-dir", str(run_dir / "tls"), "--run-dir", str(run_dir / peer_id),
           "--outer-steps", str(settings.outer_steps), "--inner-epochs", str(settings.inner_epochs),
           "--group-size", str(settings.group_size), "--seed", str(settings.seed), "--ttl", str(settings.ttl),
           "--wait-for-peers", str(settings.peers),
           "--rendezvous-timeout", str(settings.start_timeout * settings.peers),
           "--port-file", str(run_dir / peer_id / "ports"), "--averaging", settings.averaging,
           *[f"--fit={k}={v}" for k, v in settings.fit.items()], *settings.extra]
    if settings.quantize:
        cmd.append("--quantize")
    return cmd + (["--bootstrap", bootstrap] if bootstrap else [])


class Peers:
    """The child processes of ``peer up``; each is stopped by its PID."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, peer_id: str, cmd: list[str]) -> None:
        (self.run_dir / peer_id).mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "logs" / f"{peer_id}.log", "wb") as log:
            self.procs[peer_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"})

    def wait_ports(self, peer_id: str, timeout: float) -> tuple[int, int]:
        """(lane port, DHT port) the peer wrote once listening; TransportError if it died or took too long."""
        port_file, proc = self.run_dir / peer_id / "ports", self.procs[peer_id]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = port_file.read_text().split() if port_file.exists() else []
            if len(text) == 2:
                return int(text[0]), int(text[1])
            if proc.poll() is not None:
                raise TransportError(f"{peer_id} exited with code {proc.returncode} before listening: {self.tail(peer_id)}")
            time.sleep(0.05)
        raise TransportError(f"{peer_id} did not listen within {timeout:g} s: {self.tail(peer_id)}")

    def tail(self, peer_id: str, lines: int = 3) -> str:
        try:
            text = (self.run_dir / "logs" / f"{peer_id}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self, peer_id: str, grace: float = 10.0) -> None:
        proc = self.procs[peer_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for peer_id in self.procs:
            self.stop(peer_id)


def start_peers(settings: UpSettings, run_dir: Path, ids: list[str]) -> Peers:
    """Start the peers one after the other, each bootstrapping from the one before."""
    peers, bootstrap = Peers(run_dir), None
    try:
        for peer_id in ids:
            peers.spawn(peer_id, peer_command(settings, run_dir, peer_id, bootstrap))
            _, dht_port = peers.wait_ports(peer_id, settings.start_timeout)
            bootstrap = f"127.0.0.1:{dht_port}"
    except BaseException:
        peers.stop_all()
        raise
    return peers


def follow(peers: Peers, on_step: Callable[[dict[str, object]], None] | None = None) -> dict[str, list[dict[str, object]]]:
    """Pass every new metrics line of every peer to ``on_step`` until all peers exit."""
    seen: dict[str, list[dict[str, object]]] = {p: [] for p in peers.procs}
    while True:
        done = all(proc.poll() is not None for proc in peers.procs.values())
        for peer_id in peers.procs:
            lines = _metrics(peers.run_dir / peer_id / "metrics.jsonl")
            for line in lines[len(seen[peer_id]):]:
                seen[peer_id].append(line)
                if on_step is not None:
                    on_step(line)
        if done:
            return seen
        time.sleep(0.1)


def run_up(settings: UpSettings, run_dir: Path,
           on_step: Callable[[dict[str, object]], None] | None = None) -> dict[str, list[dict[str, object]]]:
    """``peer up``: every peer's metrics lines once all have finished; PotluckError when one failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ids = prepare(settings, run_dir)
    peers = start_peers(settings, run_dir, ids)
    try:
        lines = follow(peers, on_step)
    finally:
        peers.stop_all()
    failed = [p for p, proc in peers.procs.items() if proc.returncode != 0]
    if failed:
        raise PotluckError(f"{failed[0]} exited with code {peers.procs[failed[0]].returncode}: {peers.tail(failed[0])}")
    return lines


def run_simulation(task_name: str, data_path: Path | None, peers: int, settings: SimSettings,
                   on_step: Callable[[SimStep], None] | None = None) -> list[SimStep]:
    """``peer simulate``: ``peers`` virtual peers on an IID split of the task's data, in this process."""
    if not 2 <= peers <= 10_000:
        raise ConfigError(f"--peers must be in 2-10000, got {peers}")
    task = resolve_task(task_name)
    data = task.load_data(data_path)
    splits = [split_holdout(data.subset(part), settings.seed) for part in iid(len(data), peers, settings.seed)]
    initial = task.build(DataInfo.from_dataset(data), settings.seed)
    return simulate_peers(task, splits, initial, settings, on_step)


def _metrics(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line still being written
    return out
