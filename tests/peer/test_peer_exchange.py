"""The group all-reduce over the mutual-TLS lane, on 127.0.0.1, against numpy."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from potluck.core.errors import AccessDenied, PeerRefused
from potluck.peer.allreduce import butterfly, group_digest
from potluck.peer.exchange import Exchange, Member
from potluck.peer.lane import Lane

pytest_plugins = ["peer_kit"]  # peer_tls, identities


async def _peers(identities, n, *, quantize=False):
    prints = {i.peer_id: i.fingerprint for i in identities[:n]}
    exchanges, lanes, members = [], [], []
    for ident in identities[:n]:
        ex = Exchange(ident.peer_id, prints.get, quantize=quantize)
        lane = Lane(ident, ex.handle, timeout=5.0)
        ex.lane = lane
        port = await lane.start("127.0.0.1", 0)
        exchanges.append(ex)
        lanes.append(lane)
        members.append(Member(ident.peer_id, ("127.0.0.1", port), ident.fingerprint))
    return exchanges, lanes, members


def _vectors(n, size=1001):
    rng = np.random.default_rng(n)
    return [rng.normal(size=size).astype(np.float32) for _ in range(n)], [float(w) for w in rng.integers(1, 50, n)]


def test_three_peers_all_reduce_to_the_same_weighted_mean(identities):
    async def main():
        exchanges, lanes, members = await _peers(identities, 3)
        vectors, weights = _vectors(3)
        try:
            return await asyncio.gather(*[
                ex.allreduce(1, members, v, w, anchor="a" * 64, deadline=20.0)
                for ex, v, w in zip(exchanges, vectors, weights)]), vectors, weights
        finally:
            for lane in lanes:
                await lane.stop()

    outcomes, vectors, weights = asyncio.run(main())
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    oracle = butterfly({f"peer-{i}": v for i, v in enumerate(vectors)}, {f"peer-{i}": w for i, w in enumerate(weights)})
    for out in outcomes:
        assert out.complete
        np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out.values, oracle["peer-0"].values)
    assert len({out.values.tobytes() for out in outcomes}) == 1


def test_quantized_chunks_average_within_the_quantization_error(identities):
    async def main():
        exchanges, lanes, members = await _peers(identities, 2, quantize=True)
        vectors, weights = _vectors(2)
        try:
            outs = await asyncio.gather(*[ex.allreduce(1, members, v, w, anchor="a", deadline=20.0)
                                          for ex, v, w in zip(exchanges, vectors, weights)])
            return outs, vectors, weights
        finally:
            for lane in lanes:
                await lane.stop()

    outcomes, vectors, weights = asyncio.run(main())
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    step = max(float(v.max() - v.min()) for v in vectors) / 255
    assert np.abs(outcomes[0].values - expected).max() <= step
    np.testing.assert_array_equal(outcomes[0].values, outcomes[1].values)


def test_a_member_that_never_answers_costs_at_most_the_deadline(identities):
    """peer-2 is in the group but dead: the others end by the deadline with the weighted
    mean of the two of them, and peer-2's part (orphaned) is zero on both."""
    async def main():
        exchanges, lanes, members = await _peers(identities, 3)
        await lanes[2].stop()
        vectors, weights = _vectors(3)
        started = time.monotonic()
        try:
            outs = await asyncio.gather(*[ex.allreduce(4, members, v, w, anchor="a", deadline=3.0)
                                          for ex, v, w in zip(exchanges[:2], vectors, weights)])
            return outs, vectors, weights, time.monotonic() - started
        finally:
            for lane in lanes[:2]:
                await lane.stop()

    outcomes, vectors, weights, took = asyncio.run(main())
    assert took < 3.0 + 2.0, f"took {took:.1f} s with a 3 s deadline"
    mean2 = np.average(np.stack(vectors[:2]), axis=0, weights=weights[:2])
    third = 1001 // 3 + 1
    for out in outcomes:
        assert out.missing_parts == (2,)
        np.testing.assert_allclose(out.values[:2 * third], mean2[:2 * third], rtol=1e-5, atol=1e-6)
        assert not out.values[2 * third:].any()
    np.testing.assert_array_equal(outcomes[0].values, outcomes[1].values)


def test_the_lane_refuses_an_impostor_and_strangers(identities):
    async def main():
        exchanges, lanes, members = await _peers(identities, 2)
        impostor = Member("peer-1", members[1].address, identities[0].fingerprint)
        try:
            with pytest.raises(AccessDenied, match="not the one"):
                await lanes[0].call(impostor.address, impostor.peer_id, impostor.fingerprint, {"op": "reduce"})
            stranger = Exchange("peer-3", lambda p: identities[3].fingerprint)
            lane3 = Lane(identities[3], stranger.handle)
            with pytest.raises(PeerRefused, match="no live member record"):
                await lane3.call(members[0].address, "peer-0", members[0].fingerprint,
                                 {"op": "reduce", "step": 1, "group": "x"})
        finally:
            for lane in lanes:
                await lane.stop()

    asyncio.run(main())


def test_a_part_that_reached_only_some_members_is_repaired_from_them(identities):
    """peer-2 sends its reduced part to peer-0 only, then dies: peer-1 gets it from peer-0,
    and both end complete and identical."""
    async def main():
        exchanges, lanes, members = await _peers(identities, 3)
        owner = exchanges[2]
        original = owner._gather

        async def gather_to_peer0_only(other, step, session, reduced, until):
            if other.peer_id == "peer-0":
                await original(other, step, session, reduced, until)
                await lanes[2].stop()

        owner._gather = gather_to_peer0_only
        vectors, weights = _vectors(3)
        try:
            outs = await asyncio.gather(*[ex.allreduce(2, members, v, w, anchor="a", deadline=6.0)
                                          for ex, v, w in zip(exchanges, vectors, weights)])
            return outs, vectors, weights
        finally:
            for lane in lanes:
                await lane.stop()

    outcomes, vectors, weights = asyncio.run(main())
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    for out in outcomes[:2]:
        assert out.complete
        np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outcomes[0].values, outcomes[1].values)


def test_malformed_and_non_finite_requests_are_refused_with_the_reason(identities):
    async def main():
        exchanges, lanes, members = await _peers(identities, 2)
        exchanges[0]._join(7, ("peer-0", "peer-1"), 4, "a")  # joined: requests are checked on arrival
        digest = group_digest(7, ["peer-0", "peer-1"])
        base = {"step": 7, "group": digest}
        try:
            with pytest.raises(PeerRefused, match="NaN"):
                await lanes[1].call(members[0].address, "peer-0", members[0].fingerprint,
                                    {**base, "op": "gather", "part": 1, "weight": 1.0},
                                    np.array([np.nan, 0], np.float32).tobytes())
            with pytest.raises(PeerRefused, match="malformed"):
                await lanes[1].call(members[0].address, "peer-0", members[0].fingerprint,
                                    {**base, "op": "reduce", "part": 0, "weight": "heavy", "anchor": "a"},
                                    np.zeros(2, np.float32).tobytes())
            with pytest.raises(PeerRefused, match="trained from model"):
                await lanes[1].call(members[0].address, "peer-0", members[0].fingerprint,
                                    {**base, "op": "reduce", "part": 0, "weight": 1.0, "anchor": "b"},
                                    np.zeros(2, np.float32).tobytes())
        finally:
            for lane in lanes:
                await lane.stop()

    asyncio.run(main())


def test_members_that_saw_different_groups_settle_on_identical_views(identities):
    """peer-0 and peer-1 saw {0, 1}; peer-2 saw {0, 1, 2} (a late record): 0 and 1 average
    together, peer-2 goes alone, nobody waits past the budget."""
    async def main():
        exchanges, lanes, members = await _peers(identities, 3)
        views = [members[:2], members[:2], members]
        started = time.monotonic()
        try:
            agreed = await asyncio.gather(*[ex.agree(5, view, 3.0) for ex, view in zip(exchanges, views)])
            return [[m.peer_id for m in group] for group in agreed], time.monotonic() - started
        finally:
            for lane in lanes:
                await lane.stop()

    agreed, took = asyncio.run(main())
    assert agreed == [["peer-0", "peer-1"], ["peer-0", "peer-1"], ["peer-2"]]
    assert took < 3.0 + 2.0
