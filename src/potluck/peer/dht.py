"""Membership and matchmaking over the ``kademlia`` DHT, with records that age out in seconds.

``kademlia`` stores one value per key, keeps it a week and re-publishes it hourly. We
keep its routing and crawling and change what a key holds (:class:`RecordStorage`):

- a key holds a *bundle*, the newline-joined signed records (``records.py``) of many
  peers; a STORE merges the records it carries into the bundle (the newest record per
  peer wins) instead of replacing it, so peers writing the same key do not erase each
  other;
- every access drops records past their own ``expires`` (seconds, not a week), so a
  peer that stops re-publishing disappears from every copy by itself;
- a record that does not parse, is not self-signed, or is stale is never stored.

Two lists per run (``run`` is the run id every peer of a run is started with), each
spread over :data:`SHARDS` keys, a peer's records going to shard crc32(peer id) mod 8
(one key's bundle must fit one 8 KiB datagram of rpcudp)::

    potluck/<run>/members/<shard>          member records: id, lane address, certificate, key, step
    potluck/<run>/ready/<step>/<shard>     ready records: "I am due to average outer step <step>"

A peer re-publishes its records every ``ttl / 3`` seconds while it lives
(:meth:`PeerDHT.keep_published`). A read merges this node's copy with the copy found by
a network lookup and admits only records :class:`~potluck.peer.records.Trust` accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import IStorage
from kademlia.utils import digest

from potluck.core.errors import ConfigError, TransportError
from potluck.peer.records import PeerRecord, RecordError, Trust, check_fresh, parse_record

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 7000  # rpcudp sends at most 8 KiB per call: the freshest records that fit are kept
SHARDS = 8  # keys per list: a member record is ~1.3 KB, so a bundle holds 5 and a run ~8 × 5 peers
Clock = Callable[[], float]
T = TypeVar("T")


def shard(peer_id: str) -> int:
    return zlib.crc32(peer_id.encode()) % SHARDS


def members_key(run: str, peer_id: str) -> str:
    """The key a peer's member record lives under (its shard of the member list)."""
    return f"potluck/{run}/members/{shard(peer_id)}"


def members_keys(run: str) -> list[str]:
    return [f"potluck/{run}/members/{i}" for i in range(SHARDS)]


def ready_key(run: str, step: int, peer_id: str) -> str:
    return f"potluck/{run}/ready/{step}/{shard(peer_id)}"


def ready_keys(run: str, step: int) -> list[str]:
    return [f"potluck/{run}/ready/{step}/{i}" for i in range(SHARDS)]


def split_bundle(value: object) -> list[bytes]:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        return []
    return [line for line in value.split(b"\n") if line]


class RecordStorage(IStorage):  # type: ignore[misc]
    """kademlia storage whose values are merged bundles of live records (module docstring)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._data: dict[bytes, dict[str, PeerRecord]] = {}
        self.ignored = 0

    def __setitem__(self, key: bytes, value: object) -> None:
        now, slot = self.clock(), self._data.setdefault(key, {})
        for raw in split_bundle(value):
            try:
                record = parse_record(raw)
                check_fresh(record, now)
            except RecordError as exc:
                self.ignored += 1
                log.debug("DHT store: ignored a record (%s)", exc)
                continue
            old = slot.get(record.peer_id)
            if old is None or record.issued > old.issued:
                slot[record.peer_id] = record
        self._cull(key)

    def _cull(self, key: bytes) -> None:
        now, slot = self.clock(), self._data.get(key, {})
        for peer in [p for p, r in slot.items() if r.expires <= now]:
            del slot[peer]
        if not slot:
            self._data.pop(key, None)

    def get(self, key: bytes, default: object = None) -> object:
        self._cull(key)
        if key not in self._data:
            return default
        newest = sorted(self._data[key].values(), key=lambda r: -r.issued)
        lines, size = [], 0
        for record in newest:
            size += len(record.raw) + 1
            if size > MAX_BUNDLE_BYTES:
                break
            lines.append(record.raw)
        return b"\n".join(lines)

    def __getitem__(self, key: bytes) -> object:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def iter_older_than(self, seconds_old: float) -> Iterator[tuple[bytes, object]]:
        return iter(())  # peers re-publish their own records; nothing is re-published for others

    def __iter__(self) -> Iterator[tuple[bytes, object]]:
        for key in list(self._data):
            value = self.get(key)
            if value is not None:
                yield key, value


class _Protocol(KademliaProtocol):  # type: ignore[misc]
    def __init__(self, node: Node, storage: IStorage, ksize: int, wait_timeout: float) -> None:
        super().__init__(node, storage, ksize)
        self._wait_timeout = wait_timeout  # rpcudp's per-RPC timeout (its default is 5 s)


class _Server(Server):  # type: ignore[misc]
    rpc_timeout = 2.0

    def _create_protocol(self) -> _Protocol:
        return _Protocol(self.node, self.storage, self.ksize, self.rpc_timeout)


class PeerDHT:
    """One peer's DHT node: start, put, re-publish, read admitted records, stop.

    Every network operation is bounded by ``timeout`` seconds; a read that times out
    returns what this node holds.
    """

    def __init__(self, trust: Trust, *, clock: Clock = time.time, timeout: float = 5.0, rpc_timeout: float = 1.5) -> None:
        self.trust, self.clock, self.timeout = trust, clock, timeout
        self.storage = RecordStorage(clock)
        self.server = _Server(ksize=20, alpha=3, storage=self.storage)
        self.server.rpc_timeout = rpc_timeout
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Future[Any]] = set()

    async def start(self, host: str, port: int, bootstrap: Sequence[tuple[str, int]] = ()) -> int:
        """Listen on ``host:port`` (0: any free port), join through ``bootstrap``; returns the port.

        TransportError when no bootstrap address answers.
        """
        await self.server.listen(port, interface=host)
        self.port = int(self.server.transport.get_extra_info("sockname")[1])
        if bootstrap:
            await self._bootstrap([_resolve(h, p) for h, p in bootstrap])
        return self.port

    async def _bootstrap(self, addresses: list[tuple[str, int]], attempts: int = 5) -> None:
        """Ping the bootstrap addresses, up to ``attempts`` times (a busy peer may answer late)."""
        for _ in range(attempts):
            if await self._bounded(self.server.bootstrap(addresses)):
                return
        listed = ", ".join(f"{h}:{p}" for h, p in addresses)
        raise TransportError(f"no DHT bootstrap peer answered at {listed} ({attempts} attempts)")

    async def put(self, key: str, raw: bytes) -> None:
        """Store one record here and on the ``k`` nodes closest to ``key``; returns after at
        most ``timeout`` seconds (the network part then finishes in the background)."""
        self.storage[digest(key)] = raw
        await self._bounded(self.server.set(key, raw))

    async def _bounded(self, operation: Awaitable[T]) -> T | None:
        """``operation``'s result, or None after ``timeout`` s. It is shielded, never cancelled:
        rpcudp's pending replies break when cancelled, and a crawl that runs to its own end
        drops the contacts that did not answer from the routing table."""
        task = asyncio.ensure_future(operation)
        self._running.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except asyncio.TimeoutError:
            return None

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT operation failed: %s", task.exception())

    def keep_published(self, key: str, make: Callable[[], bytes], every: float) -> None:
        """Put ``make()`` (a freshly signed record) now and every ``every`` seconds until stop().

        The local copy is refreshed on time whatever the network does; the network put
        runs beside it (one at a time), so a slow or dead neighbour cannot make this
        peer's own record lapse.
        """

        async def loop() -> None:
            pending: asyncio.Future[None] | None = None
            while True:
                try:
                    raw = make()
                    self.storage[digest(key)] = raw
                    if pending is None or pending.done():
                        pending = asyncio.ensure_future(self.put(key, raw))
                except (OSError, RecordError) as exc:
                    log.warning("re-publishing %s failed: %s", key, exc)
                await asyncio.sleep(every)

        self._tasks.append(asyncio.ensure_future(loop()))

    async def leave(self, key: str, raw: bytes) -> None:
        """Stop re-publishing and put ``raw`` (this peer's leave record) under ``key``, here
        and on the network, bounded like :meth:`put`: the newest record of a peer wins, so
        it replaces the member record and the others stop counting on this peer at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.put(key, raw)

    async def read(self, *keys: str) -> list[PeerRecord]:
        """The admitted, live records under ``keys`` (read concurrently), one per peer, by peer id."""
        bundles = await asyncio.gather(*[self._read_one(key) for key in keys])
        return self.admit([raw for found in bundles for bundle in found for raw in split_bundle(bundle)])

    async def _read_one(self, key: str) -> list[object]:
        dkey = digest(key)
        bundles = [self.storage.get(dkey)]
        nearest = self.server.protocol.router.find_neighbors(Node(dkey))
        if nearest:
            crawl = ValueSpiderCrawl(self.server.protocol, Node(dkey), nearest, self.server.ksize, self.server.alpha)
            bundles.append(await self._bounded(crawl.find()))
        return bundles

    def admit(self, raws: Sequence[bytes]) -> list[PeerRecord]:
        now, best = self.clock(), dict[str, PeerRecord]()
        for raw in raws:
            try:
                record = self.trust.admit(raw, now)
            except RecordError as exc:
                log.debug("ignored a DHT record: %s", exc)
                continue
            old = best.get(record.peer_id)
            if old is None or record.issued > old.issued:
                best[record.peer_id] = record
        return [best[p] for p in sorted(best)]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.server.stop()


def _resolve(host: str, port: int) -> tuple[str, int]:
    """kademlia takes IP addresses only: resolve a name (ConfigError if it does not resolve)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"bootstrap host {host!r} does not resolve: {exc.strerror}") from None
    return str(info[0][4][0]), port
