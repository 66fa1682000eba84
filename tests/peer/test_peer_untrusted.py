"""Untrusted peers: robust averaging of parts, signed contributions, ledgers and equivocation."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import ConfigError, LedgerError, SignatureError
from potluck.ledger.signing import derived_key, public_bytes
from potluck.peer.allreduce import butterfly, part_bounds
from potluck.peer.contributions import check_chunk, check_contribution, sign_contribution
from potluck.peer.history import StepLedger, check_claim, find_equivocations, root_dissenters, sign_head
from potluck.peer.robust import Averaging
from potluck.peer.runner import split_holdout
from potluck.peer.simulation import SimSettings, simulate_peers
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.partition import iid
from potluck.tasks.protocol import DataInfo


def _trimmed_oracle(stack: np.ndarray, trim: float) -> np.ndarray:
    k = int(np.floor(trim * stack.shape[0] + 1e-9))
    ordered = np.sort(stack, axis=0)
    return ordered[k:stack.shape[0] - k].mean(axis=0)


@pytest.mark.parametrize("members", [2, 3, 5, 8])
@pytest.mark.parametrize("size", [1, 7, 300])
def test_robust_butterfly_matches_numpy_median_and_trimmed_mean(members, size):
    rng = np.random.default_rng(members * 1000 + size)
    vectors = {f"p{i}": rng.normal(size=size).astype(np.float32) for i in range(members)}
    vectors["p0"] = vectors["p0"] * np.float32(1000)  # an outlier with a huge weight
    weights = {p: 1.0 + i for i, p in enumerate(sorted(vectors))}
    weights["p0"] = 1e6
    stack = np.stack([vectors[p] for p in sorted(vectors)]).astype(np.float64)
    for averaging, oracle in [(Averaging("median"), np.median(stack, axis=0)),
                              (Averaging("trimmed", 0.25), _trimmed_oracle(stack, 0.25))]:
        outcomes = butterfly(vectors, weights, reducer=averaging.reducer)
        for outcome in outcomes.values():
            assert outcome.complete
            np.testing.assert_allclose(outcome.values, oracle.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_robust_reducer_counts_only_chunks_that_arrived():
    vectors = {f"p{i}": np.full(6, float(i), np.float32) for i in range(5)}
    lost = {"p4"}
    outcomes = butterfly(vectors, dict.fromkeys(vectors, 1.0), lambda s, r, phase: phase == "gather" or s not in lost,
                         Averaging("median").reducer)
    bounds = part_bounds(6, 5)
    values = outcomes["p0"].values
    for i, (start, stop) in enumerate(bounds):
        expected = np.median([0, 1, 2, 3, 4]) if i == 4 else np.median([0, 1, 2, 3])  # p4 always hears itself
        assert (values[start:stop] == expected).all()


def test_averaging_settings_are_checked():
    with pytest.raises(ConfigError, match="--averaging"):
        Averaging("krum")
    with pytest.raises(ConfigError, match="--trim"):
        Averaging("trimmed", 0.5)
    assert type(Averaging("mean").reducer(0, 3, ["a"])).__name__ == "PartReducer"


def _signed(vector, parts=4, name="alice", key_name=None):
    bounds = part_bounds(vector.shape[0], parts)
    key = derived_key(0, key_name or name)
    c, tree = sign_contribution(key, name, "run", 3, "g1", 10.0, vector, bounds)
    return c, tree, bounds


def test_a_signed_contribution_checks_and_each_chunk_is_in_its_root():
    vector = np.arange(10, dtype=np.float32)
    c, tree, bounds = _signed(vector)
    check_contribution(c, public_bytes(derived_key(0, "alice")), run="run", step=3, group="g1")
    for i, (start, stop) in enumerate(bounds):
        check_chunk(c, i, len(bounds), vector[start:stop], tree.path(i))


def test_refused_contributions_name_the_sender_and_the_reason():
    vector = np.arange(10, dtype=np.float32)
    c, tree, bounds = _signed(vector, key_name="someone else")
    with pytest.raises(SignatureError, match="'alice'.*does not verify"):
        check_contribution(c, public_bytes(derived_key(0, "alice")), run="run", step=3, group="g1")
    c, tree, bounds = _signed(vector)
    with pytest.raises(SignatureError, match="'alice'.*step 3"):
        check_contribution(c, public_bytes(derived_key(0, "alice")), run="run", step=4, group="g1")
    with pytest.raises(SignatureError, match="no member record"):
        check_contribution(c, None, run="run", step=3, group="g1")
    tampered = vector[slice(*bounds[1])] * 2
    with pytest.raises(SignatureError, match="part 1 from 'alice'"):
        check_chunk(c, 1, len(bounds), tampered, tree.path(1))
    with pytest.raises(SignatureError):  # the right chunk presented as another part
        check_chunk(c, 2, len(bounds), vector[slice(*bounds[1])], tree.path(1))


def _ledger(steps=3, model="m"):
    ledger = StepLedger()
    for s in range(1, steps + 1):
        ledger.append(s, ["b", "a"], [("b", "r2"), ("a", "r1")], f"{model}{s}")
    return ledger


def test_the_step_ledger_chains_and_detects_tampering():
    ledger = _ledger()
    again = StepLedger.from_lines(ledger.lines())
    assert again.head == ledger.head and again.head_at(2) == ledger.head_at(2) != ledger.head
    assert ledger.entries[0]["group"] == ["a", "b"]
    with pytest.raises(LedgerError, match="after step 3"):
        ledger.append(3, ["a"], [], "x")
    ledger.entries[1]["contributions"][0][1] = "forged"
    with pytest.raises(LedgerError, match="entry 1.*Merkle root"):
        ledger.verify()
    ledger.entries[1]["root"] = "0" * 64
    ledger.entries[1]["contributions"][0][1] = "r1"
    with pytest.raises(LedgerError, match="entry 1"):
        ledger.verify()
    text = _ledger().lines().splitlines()
    with pytest.raises(LedgerError, match="does not link"):
        StepLedger.from_lines("\n".join([text[0], text[2]]))


def test_two_signed_heads_for_one_step_name_the_equivocator():
    honest, fork = _ledger(), _ledger(model="other")
    key = derived_key(0, "mallory")
    root = honest.entries[-1]["root"]
    to_alice = sign_head(key, "run", "mallory", 3, honest.head, root)
    to_bob = sign_head(key, "run", "mallory", 3, fork.head, root)
    bobs = sign_head(derived_key(0, "bob"), "run", "bob", 3, _ledger(model="b").head, root)
    for claim in (to_alice, to_bob):
        check_claim(claim, public_bytes(key))
    with pytest.raises(SignatureError, match="'mallory'"):
        check_claim(to_alice, public_bytes(derived_key(0, "bob")))
    assert find_equivocations([to_alice, bobs, to_alice]) == []
    found = find_equivocations([to_alice, bobs, to_bob])
    assert [(e.peer, e.step) for e in found] == [("mallory", 3)]
    assert "'mallory' equivocates" in str(found[0]) and found[0].claims == (to_alice, to_bob)
    odd = sign_head(derived_key(0, "carol"), "run", "carol", 3, "h", "another root")
    assert root_dissenters([to_alice, bobs, odd]) == ["carol"]


@pytest.fixture(scope="module")
def digits8():
    task = resolve_task("digits")
    data = task.load_data(None)
    splits = [split_holdout(data.subset(p), 0) for p in iid(len(data), 8, 0)]
    return task, splits, task.build(DataInfo.from_dataset(data), 0)


def test_poisoning_two_of_eight_diverges_with_the_mean_and_not_with_robust_averaging(digits8):
    task, splits, initial = digits8
    base = {"outer_steps": 4, "group_size": 8}
    clean = simulate_peers(task, splits, initial, SimSettings(**base))[-1].mean_loss
    plain = simulate_peers(task, splits, initial, SimSettings(**base, poisoners=2))
    assert plain[-1].mean_loss > 3 * clean and plain[-1].mean_loss > plain[0].mean_loss  # visibly diverges
    for averaging in (Averaging("median"), Averaging("trimmed", 0.25)):
        robust = simulate_peers(task, splits, initial, SimSettings(**base, poisoners=2, averaging=averaging))
        assert robust[-1].mean_loss <= 1.10 * clean, averaging
        assert robust[-1].distinct_models == 1


def test_a_forger_is_refused_and_named_and_a_liar_is_caught(digits8):
    task, splits, initial = digits8
    settings = SimSettings(outer_steps=2, group_size=8, forgers=1, liars=1, seed=3)
    roles = settings.adversaries([f"peer-{i:03d}" for i in range(8)])
    forger = next(p for p, r in roles.items() if r == "forger")
    liar = next(p for p, r in roles.items() if r == "liar")
    steps = simulate_peers(task, splits, initial, settings)
    for step in steps:
        assert list(step.refused) == [forger] and "does not verify" in step.refused[forger]
        assert list(step.equivocators) == [liar] and "equivocates" in step.equivocators[liar]
        assert step.distinct_models == 2  # the group of 7, and the forger alone
    assert simulate_peers(task, splits, initial, SimSettings(outer_steps=1, group_size=8))[0].equivocators == {}
    with pytest.raises(ConfigError, match="adversaries"):
        SimSettings(poisoners=5, liars=4).adversaries(["a"] * 8)


@pytest.mark.slow
def test_the_untrusted_peers_benchmark_runs_at_small_sizes():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "benchmarks/peer_untrusted.py", "--peers", "4", "--steps", "1",
                           "--size", "1000"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 poisoners, median" in done.stdout and "reduce one part" in done.stdout
