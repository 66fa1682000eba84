"""Signed contributions and robust averaging on the mutual-TLS lane (127.0.0.1)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from potluck.core.errors import PeerRefused, SignatureError
from potluck.ledger.signing import derived_key
from potluck.peer.allreduce import butterfly
from potluck.peer.contributions import Signer
from potluck.peer.exchange import Exchange, Member
from potluck.peer.history import sign_head
from potluck.peer.lane import Lane
from potluck.peer.robust import Averaging
from potluck.peer.witness import HeadWitness, claim_to_json

pytest_plugins = ["peer_kit"]  # peer_tls, identities


async def _peers(identities, n, *, averaging=Averaging(), forger=None, quantize=False):
    prints = {i.peer_id: i.fingerprint for i in identities[:n]}
    keys = {i.peer_id: i.public_key for i in identities[:n]}
    exchanges, lanes, members = [], [], []
    for ident in identities[:n]:
        key = derived_key(9, "not mine") if ident.peer_id == forger else ident.signing_key
        ex = Exchange(ident.peer_id, prints.get, quantize=quantize, signer=Signer("run", key, keys.get),
                      averaging=averaging)
        lane = Lane(ident, ex.handle, timeout=5.0)
        ex.lane = lane
        port = await lane.start("127.0.0.1", 0)
        exchanges.append(ex)
        lanes.append(lane)
        members.append(Member(ident.peer_id, ("127.0.0.1", port), ident.fingerprint))
    return exchanges, lanes, members


def _run(identities, n, vectors, weights, deadline, **kw):
    async def main():
        exchanges, lanes, members = await _peers(identities, n, **kw)
        try:
            return await asyncio.gather(*[ex.allreduce(1, members, v, w, anchor="a" * 64, deadline=deadline)
                                          for ex, v, w in zip(exchanges, vectors, weights)])
        finally:
            for lane in lanes:
                await lane.stop()

    return asyncio.run(main())


def test_signed_median_over_the_lane_equals_the_in_process_butterfly(identities):
    rng = np.random.default_rng(4)
    vectors = [rng.normal(size=301).astype(np.float32) for _ in range(4)]
    vectors[3] = vectors[3] * np.float32(-50)  # a poisoner
    weights = [10.0, 20.0, 30.0, 1e6]
    outcomes = _run(identities, 4, vectors, weights, 20.0, averaging=Averaging("median"))
    oracle = butterfly({f"peer-{i}": v for i, v in enumerate(vectors)}, {f"peer-{i}": w for i, w in enumerate(weights)},
                       reducer=Averaging("median").reducer)["peer-0"].values
    np.testing.assert_allclose(oracle, np.median(np.stack(vectors), axis=0), rtol=1e-6, atol=1e-6)
    for out in outcomes:
        assert out.complete and not out.refused
        np.testing.assert_array_equal(out.values, oracle)
        assert sorted(out.signed) == [f"peer-{i}" for i in range(4)]  # every member's signed root, everywhere
    assert len({tuple(sorted(o.signed.items())) for o in outcomes}) == 1


def test_a_contribution_signed_with_another_key_is_refused_and_its_sender_named(identities):
    rng = np.random.default_rng(5)
    vectors = [rng.normal(size=90).astype(np.float32) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    outcomes = _run(identities, 3, vectors, weights, 6.0, forger="peer-2")
    for i in (0, 1):
        out = outcomes[i]
        assert list(out.refused) == ["peer-2"] and "does not verify" in out.refused["peer-2"]
        assert "peer-2" not in out.signed
    # the honest members' own parts are the mean of the honest chunks only
    honest = np.average(np.stack(vectors[:2]), axis=0, weights=weights[:2])
    np.testing.assert_allclose(outcomes[0].values[:30], honest[:30], rtol=1e-5, atol=1e-6)


def test_quantized_chunks_are_signed_as_the_owner_decodes_them(identities):
    rng = np.random.default_rng(6)
    vectors = [rng.normal(size=500).astype(np.float32) for _ in range(3)]
    outcomes = _run(identities, 3, vectors, [1.0, 1.0, 1.0], 20.0, quantize=True)
    for out in outcomes:
        assert out.complete and not out.refused and len(out.signed) == 3


class _Liar(HeadWitness):
    """Shows a forked history to every other member after the first."""

    def claim(self, step, head, root, receiver):
        forked = head if receiver in (self.me, "peer-0") else "f" * 64
        return sign_head(self.key, self.run, self.me, step, forked, root)


def test_a_peer_that_shows_two_heads_is_named_by_every_honest_member(identities):
    keys = {i.peer_id: i.public_key for i in identities[:4]}

    async def main():
        exchanges, lanes, members = await _peers(identities, 4)
        witnesses = []
        for ex, ident in zip(exchanges, identities[:4]):
            kind = _Liar if ident.peer_id == "peer-3" else HeadWitness
            w = kind(ident.peer_id, "run", ident.signing_key, keys.get)
            w.lane = ex.lane
            ex.more_ops.update({"head": w.handle, "heads": w.handle})
            witnesses.append(w)
        try:
            honest = await asyncio.gather(*[w.compare(1, members, "a" * 64, "r", 10.0) for w in witnesses])
            again = await asyncio.gather(*[w.compare(2, members[:3], "b" * 64, "r", 10.0)
                                           for w in witnesses if not isinstance(w, _Liar)])
            return honest, again
        finally:
            for lane in lanes:
                await lane.stop()

    found, without_liar = asyncio.run(main())
    for i in range(3):
        assert [(e.peer, e.step) for e in found[i]] == [("peer-3", 1)], i
        a, b = found[i][0].claims
        assert {a.head, b.head} == {"a" * 64, "f" * 64}
    assert all(f == [] for f in without_liar)  # honest peers alone: nobody named


def test_a_passed_off_or_unsigned_head_claim_is_refused(identities):
    keys = {i.peer_id: i.public_key for i in identities[:2]}
    w = HeadWitness("peer-0", "run", identities[0].signing_key, keys.get)
    other = sign_head(identities[1].signing_key, "run", "peer-1", 1, "h", "r")
    with pytest.raises(SignatureError, match="passed off"):
        w.handle("peer-2", {"op": "head", "step": 1, "claim": claim_to_json(other)})
    forged = sign_head(identities[0].signing_key, "run", "peer-1", 1, "h", "r")
    with pytest.raises(SignatureError, match="'peer-1'"):
        w.handle("peer-1", {"op": "head", "step": 1, "claim": claim_to_json(forged)})
    with pytest.raises(SignatureError, match="step 1"):
        w.handle("peer-1", {"op": "head", "step": 2, "claim": claim_to_json(other)})
    with pytest.raises(PeerRefused):
        w.handle("peer-1", {"op": "heads", "step": 1, "claims": "x"})
