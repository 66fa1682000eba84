"""One peer's loop in this process: alone it trains locally; restarted, it resumes after its last commit."""

from __future__ import annotations

import asyncio

from potluck.peer.identity import issue_peer
from potluck.peer.rundir import PeerRunDir
from potluck.peer.runner import PeerConfig, run_peer
from potluck.transport.certs import init_ca


def test_a_lone_peer_trains_and_resumes_where_it_stopped(tmp_path):
    tls = tmp_path / "tls"
    init_ca(tls)
    issue_peer(tls, "solo")
    cfg = PeerConfig(peer_id="solo", tls_dir=tls, run_dir=tmp_path / "solo", run_id="r", outer_steps=2,
                     deadline_floor=1.0, deadline_ceiling=5.0, ttl=3.0)
    first = asyncio.run(run_peer(cfg))
    assert [r.step for r in first] == [0, 1, 2]
    assert first[-1].loss < first[0].loss and first[-1].group == ("solo",)
    more = PeerConfig(**{**cfg.__dict__, "outer_steps": 3})
    second = asyncio.run(run_peer(more))
    assert [r.step for r in second] == [3]
    committed = PeerRunDir(tmp_path / "solo", "r", "solo").resume()
    assert committed.step == 3 and committed.anchor.digest == second[-1].model_digest
