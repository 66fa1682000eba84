"""End to end: peer processes on 127.0.0.1 over the real kademlia DHT and the mTLS lane."""

from __future__ import annotations

import json
import time

import pytest

from potluck.apps.peer import Peers, UpSettings, follow, prepare, run_up, start_peers
from potluck.peer.rundir import PeerRunDir

pytestmark = pytest.mark.slow

DHT_SLACK = 3 * 5.0 + 2.0  # a matchmaking poll may end one DHT round trip (≤ 3 × 5 s) after its deadline


def test_three_peers_train_digits_to_one_model(tmp_path):
    lines = run_up(UpSettings(peers=3, outer_steps=3, seed=1), tmp_path / "swarm")
    assert sorted(lines) == ["peer-000", "peer-001", "peer-002"]
    finals = {records[-1]["model_digest"] for records in lines.values()}
    assert len(finals) == 1, "every peer ends with the same model"
    final = finals.pop()
    for peer_id, records in lines.items():
        assert [r["step"] for r in records] == [0, 1, 2, 3]
        assert records[-1]["loss"] < records[0]["loss"] * 0.8, f"{peer_id} did not learn: {records}"
        assert all(len(r["group"]) == 3 and r["missing_parts"] == 0 for r in records[1:])
        assert all(r["allreduce_seconds"] <= r["allreduce_deadline"] + 1.0 for r in records[1:])
        committed = PeerRunDir(tmp_path / "swarm" / peer_id, "swarm", peer_id).resume()
        assert committed is not None and (committed.step, committed.anchor.digest) == (3, final)
        rundir = PeerRunDir(tmp_path / "swarm" / peer_id, "swarm", peer_id)
        ledger = rundir.load_ledger(3)  # verifies the chain
        assert [e["step"] for e in ledger.entries] == [1, 2, 3] and ledger.entries[-1]["model"] == final
        assert all(len(e["contributions"]) == 3 for e in ledger.entries), "every member's signed root recorded"
        assert records[-1]["ledger_head"] == ledger.head and not records[-1]["equivocators"]
    heads = {PeerRunDir(tmp_path / "swarm" / p, "swarm", p).load_ledger(3).head for p in lines}
    assert len(heads) == 1, "members that always averaged together keep identical ledgers"


def test_killing_a_peer_mid_run_leaves_the_others_going_within_their_deadlines(tmp_path):
    run_dir = tmp_path / "swarm"
    settings = UpSettings(peers=3, outer_steps=6, seed=2, ttl=4.0, extra=("--deadline-floor", "3"))
    run_dir.mkdir()
    peers = start_peers(settings, run_dir, prepare(settings, run_dir))
    try:
        _wait_for_step(peers, 2, timeout=600)
        peers.procs["peer-002"].kill()  # SIGKILL: no goodbye, its records just stop being renewed
        peers.procs["peer-002"].wait()
        lines = follow(peers)
    finally:
        peers.stop_all()
    for peer_id in ("peer-000", "peer-001"):
        assert peers.procs[peer_id].returncode == 0, peers.tail(peer_id)
        records = lines[peer_id]
        assert records[-1]["step"] == 6
        assert records[-1]["loss"] < records[0]["loss"]
        for r in records[1:]:
            assert r["allreduce_seconds"] <= r["allreduce_deadline"] + 1.0, r
            assert r["matchmaking_seconds"] <= r["matchmaking_deadline"] + DHT_SLACK, r
        assert records[-1]["group"] == ["peer-000", "peer-001"], "the dead peer aged out of the groups"
    assert lines["peer-000"][-1]["model_digest"] == lines["peer-001"][-1]["model_digest"]


def _wait_for_step(peers: Peers, step: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = 0
        for peer_id in peers.procs:
            path = peers.run_dir / peer_id / "state.json"
            try:
                done += json.loads(path.read_text())["step"] >= step
            except (OSError, ValueError):
                pass
        if done == len(peers.procs):
            return
        assert all(p.poll() is None for p in peers.procs.values()), "a peer exited early"
        time.sleep(0.2)
    raise AssertionError(f"the peers did not reach step {step} within {timeout} s")


def test_peer_up_prints_every_peers_loss_per_step(tmp_path):
    from typer.testing import CliRunner

    from potluck.cli.main import app

    result = CliRunner().invoke(app, ["peer", "up", "--peers", "3", "--rounds", "2", "--run-dir", str(tmp_path / "up")])
    assert result.exit_code == 0, result.output
    for peer_id in ("peer-000", "peer-001", "peer-002"):
        for step in (0, 1, 2):
            assert any(line.startswith(f"{peer_id}  step {step:>3}  loss ") for line in result.output.splitlines())
    assert "3 peers finished with the same model" in result.output


def test_a_late_peer_joins_with_the_vouched_state_and_a_leaving_peer_is_dropped_at_once(tmp_path):
    import signal

    from potluck.apps.peer import peer_command

    run_dir = tmp_path / "swarm"
    settings = UpSettings(peers=4, outer_steps=1000, seed=3, extra=("--wait-for-peers", "3", "--deadline-floor", "3"))
    run_dir.mkdir()
    ids = prepare(settings, run_dir)
    peers = start_peers(settings, run_dir, ids[:3])
    try:
        _wait_for_step(peers, 2, timeout=600)
        dht_port = (run_dir / "peer-000" / "ports").read_text().split()[1]
        peers.spawn("peer-003", [*peer_command(settings, run_dir, "peer-003", f"127.0.0.1:{dht_port}"), "--join"])
        joined_at = _committed(peers, ["peer-003"], 1)
        peers.procs["peer-001"].send_signal(signal.SIGTERM)  # leaves, and says so
        assert peers.procs["peer-001"].wait(60) == 130, peers.tail("peer-001")
        left_at = _committed(peers, ["peer-001"], 0)
        _committed(peers, ["peer-000", "peer-002", "peer-003"], max(joined_at, left_at) + 3)
    finally:
        peers.stop_all()  # SIGTERM: they leave
    lines = {p: _metrics_of(run_dir / p) for p in ids}
    joined = lines["peer-003"][0]
    assert joined["step"] == joined_at >= 2 and len(joined["joined_from"].split(",")) >= 2, joined
    vouched = [r["model_digest"] for r in lines["peer-000"] if r["step"] == joined_at]
    assert vouched == [joined["model_digest"]], "the newcomer adopted the state the others committed"
    for peer_id in ("peer-000", "peer-002", "peer-003"):
        records = lines[peer_id]
        assert all("peer-001" not in r["group"] for r in records if r["step"] > left_at + 1), records
        assert all(not r["refused"] and not r["equivocators"] for r in records[1:])
        assert records[-1]["loss"] < lines["peer-000"][0]["loss"]
    assert any("peer-003" in r["group"] for r in lines["peer-000"]), "the newcomer averages with the others"


def _committed(peers: Peers, ids: list[str], step: int, timeout: float = 600) -> int:
    """The lowest committed step of ``ids`` once each has committed ``step`` or more."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        steps = []
        for peer_id in ids:
            try:
                steps.append(json.loads((peers.run_dir / peer_id / "state.json").read_text())["step"])
            except (OSError, ValueError):
                pass
        if len(steps) == len(ids) and min(steps) >= step:
            return int(min(steps))
        time.sleep(0.2)
    raise AssertionError(f"{ids} did not commit step {step} within {timeout} s")


def _metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_character_language_model_trains_across_peers_on_contiguous_text(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    words = ["the", "king", "shall", "speak", "to", "thee", "my", "lord", "and", "queen"]
    text = "\n".join(" ".join(rng.choice(words, 8)) for _ in range(1500))
    (tmp_path / "input.txt").write_text(text)
    fit = {"vocab": "byte", "steps": 10, "context": 16, "width": 16, "depth": 1, "heads": 2, "batch_size": 16}
    settings = UpSettings(peers=2, outer_steps=2, task="charlm", data_path=tmp_path / "input.txt",
                          partition="contiguous", averaging="median", fit=fit, seed=0)
    lines = run_up(settings, tmp_path / "lm")
    for records in lines.values():
        assert [r["step"] for r in records] == [0, 1, 2]
        assert records[-1]["loss"] < 0.8 * records[0]["loss"] and "perplexity" in records[-1]["metrics"]
    assert len({records[-1]["model_digest"] for records in lines.values()}) == 1
    with pytest.raises(Exception, match="vocab=byte"):
        run_up(UpSettings(peers=2, task="charlm", data_path=tmp_path / "input.txt", fit={"vocab": "char"}), tmp_path / "x")
