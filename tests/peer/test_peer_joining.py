"""Joining: the newest state two other peers vouch for, fetched over the lane and checked."""

from __future__ import annotations

import asyncio
import time

import pytest

from potluck.core.errors import PeerRefused
from potluck.peer.exchange import Exchange, Member
from potluck.peer.joining import StateServer, Vouched, fetch_state, state_label, vouched_state
from potluck.peer.lane import Lane
from potluck.peer.records import make_record, parse_record

pytest_plugins = ["peer_kit"]  # peer_tls, identities

MODEL, OUTER = b"model bytes of step 4", b"velocity of step 4"


def _member(identity, state):
    raw = make_record(identity, "member", "run", ("127.0.0.1", 1), step=5, now=time.time(), ttl=5, state=state)
    return parse_record(raw)


def test_the_newest_state_named_by_two_other_peers_is_chosen(identities):
    s4, s3 = state_label(4, MODEL, OUTER), state_label(3, b"old", b"")
    records = [_member(identities[0], s4), _member(identities[1], s3), _member(identities[2], s3)]
    v = vouched_state(records, "peer-3")
    assert (v.step, v.vouchers) == (3, ("peer-1", "peer-2")), "one voucher is not enough for step 4"
    records.append(_member(identities[3], s4))
    assert vouched_state(records, "peer-9").vouchers == ("peer-0", "peer-3")
    assert vouched_state(records, "peer-3").step == 3, "a peer does not vouch for itself"
    assert vouched_state([_member(identities[0], ""), _member(identities[1], "")], "x") is None
    assert vouched_state([_member(identities[0], "x:y"), _member(identities[1], "x:y")], "z") is None


def test_the_state_is_fetched_and_a_server_of_other_bytes_is_named(identities):
    prints = {i.peer_id: i.fingerprint for i in identities[:3]}
    vouched = Vouched(4, *state_label(4, MODEL, OUTER).split(":")[1:], ("peer-1", "peer-2"))

    async def main():
        lanes, members = [], []
        for ident, (model, outer) in zip(identities[:3], [(b"", b""), (b"a lie", OUTER), (MODEL, OUTER)]):
            ex, server = Exchange(ident.peer_id, prints.get), StateServer()
            if model:
                server.update(4, model, outer, [])
                server.update(5, b"the next step", b"", [0.5, "x", -1.0, 0.7])  # committed again meanwhile: step 4 is still served
            ex.more_ops["state?"] = server.handle
            lane = Lane(ident, ex.handle, timeout=5.0)
            lanes.append(lane)
            members.append(Member(ident.peer_id, ("127.0.0.1", await lane.start("127.0.0.1", 0)), ident.fingerprint))
        try:
            got = await fetch_state(lanes[0], members[1:], vouched, 10.0)
            with pytest.raises(PeerRefused, match="peer-1.*not the one peer-1, peer-2 signed"):
                await fetch_state(lanes[0], members[1:2], vouched, 10.0)
            with pytest.raises(PeerRefused, match="before this peer committed"):
                await fetch_state(lanes[1], members[:1], vouched, 10.0)
            with pytest.raises(PeerRefused, match="state of step 2; this peer holds steps 4, 5"):
                await fetch_state(lanes[0], members[2:], Vouched(2, "m", "o", ("peer-2",)), 10.0)
            return got
        finally:
            for lane in lanes:
                await lane.stop()

    got = asyncio.run(main())
    assert (got.model, got.outer, got.server, got.allreduces) == (MODEL, OUTER, "peer-2", (0.5, 0.7))


def test_a_peer_that_left_is_no_longer_a_member(identities):
    from potluck.peer.dht import RecordStorage
    from potluck.peer.matchmaking import Directory, refresh

    now = time.time()
    member = make_record(identities[1], "member", "run", ("127.0.0.1", 1), step=3, now=now, ttl=5)
    leave = make_record(identities[1], "leave", "run", ("127.0.0.1", 1), step=3, now=now + 0.5, ttl=5)
    storage = RecordStorage(clock=lambda: now + 1)
    storage[b"k"] = member
    storage[b"k"] = leave  # the newest record of a peer replaces the older one
    assert storage.get(b"k") == leave

    class _DHT:
        async def read(self, *keys):
            return [_member(identities[0], ""), parse_record(leave)]

    directory = Directory({})
    asyncio.run(refresh(_DHT(), "run", directory))
    assert list(directory.members) == ["peer-0"]
