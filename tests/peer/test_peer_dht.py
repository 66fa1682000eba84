"""Membership over the real kademlia DHT on 127.0.0.1: a chain of bootstraps, merged
records under one key, forged records ignored, dead peers aging out in seconds."""

from __future__ import annotations

import asyncio
import json
import time

from kademlia.utils import digest

from potluck.peer.dht import PeerDHT, RecordStorage, members_key, members_keys, ready_key, ready_keys
from potluck.peer.records import Trust, make_record

pytest_plugins = ["peer_kit"]  # peer_tls, identities

RUN = "run-dht"


def _trust(peer_tls):
    return Trust((peer_tls / "ca.crt").read_bytes(), RUN)


def test_storage_merges_records_and_drops_expired_and_forged_ones(identities):
    clock = [1_800_000_000.0]
    storage = RecordStorage(lambda: clock[0])
    key = digest("k")
    a = make_record(identities[0], "member", RUN, ("127.0.0.1", 1), step=0, now=clock[0], ttl=5)
    b = make_record(identities[1], "member", RUN, ("127.0.0.1", 2), step=0, now=clock[0] + 2, ttl=5)
    storage[key] = a
    storage[key] = b
    assert sorted(storage.get(key).split(b"\n")) == sorted([a, b])
    forged = json.loads(a)
    forged["body"]["step"] = 9
    storage[key] = json.dumps(forged).encode()
    assert storage.ignored == 1
    clock[0] += 5.5
    assert storage.get(key) == b, "a's record expired; b's lives until +7 s"
    clock[0] += 2
    assert storage.get(key) is None and list(storage) == []


def test_three_peers_find_each_other_from_one_bootstrap_and_the_dead_one_ages_out(identities, peer_tls):
    ttl = 6.0

    async def main():
        nodes = [PeerDHT(_trust(peer_tls)) for _ in range(3)]
        port0 = await nodes[0].start("127.0.0.1", 0)
        port1 = await nodes[1].start("127.0.0.1", 0, [("127.0.0.1", port0)])
        await nodes[2].start("127.0.0.1", 0, [("127.0.0.1", port1)])  # any peer can bootstrap the next
        for i, node in enumerate(nodes):
            ident = identities[i]
            node.keep_published(members_key(RUN, ident.peer_id), lambda ident=ident: make_record(
                ident, "member", RUN, ("127.0.0.1", 5000), step=0, now=time.time(), ttl=ttl), every=ttl / 3)
        seen = await _until(lambda: nodes[0].read(*members_keys(RUN)), lambda r: len(r) == 3, 20.0)
        assert [r.peer_id for r in seen] == ["peer-0", "peer-1", "peer-2"]
        seen2 = await _until(lambda: nodes[2].read(*members_keys(RUN)), lambda r: len(r) == 3, 20.0)
        assert len(seen2) == 3
        await nodes[1].put(ready_key(RUN, 1, "peer-1"), make_record(identities[1], "ready", RUN, ("127.0.0.1", 5000), step=1,
                                                          now=time.time(), ttl=ttl, weight=7))
        ready = await _until(lambda: nodes[2].read(*ready_keys(RUN, 1)), lambda r: len(r) == 1, 20.0)
        assert ready[0].weight == 7
        await nodes[2].stop()
        stopped = time.monotonic()
        left = await _until(lambda: nodes[0].read(*members_keys(RUN)), lambda r: len(r) == 2, 20.0)
        gone_after = time.monotonic() - stopped
        for node in nodes[:2]:
            await node.stop()
        return left, gone_after

    left, gone_after = asyncio.run(main())
    assert [r.peer_id for r in left] == ["peer-0", "peer-1"]
    assert gone_after <= ttl + 5.0, f"a dead peer stayed listed {gone_after:.1f} s with a {ttl} s ttl"


async def _until(read, ok, limit):
    end = time.monotonic() + limit
    while True:
        value = await read()
        if ok(value) or time.monotonic() > end:
            return value
        await asyncio.sleep(0.2)
