"""What a FleetPool keeps for the whole run stays bounded, and what it forgets is refused, never accepted.

The pool is called directly (as the servicer would), without gRPC: these tests are
about its tables. The transport's own tests are in tests/transport/.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from potluck.backends.fleet import FleetPool
from potluck.backends.fleet.bounded import MAX_REASONS, OTHER_REASON, RecentIds, RejectionCounts
from potluck.core.errors import NodeTimedOut, UnexpectedResult, UnknownId
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.ledger.chain import Head
from potluck.runtime.pool import ExchangeReply
from potluck.testing import FakeClock
from potluck.transport.fleet_messages import IncomingResult, JoinInfo

MODEL = Params.from_arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})
DELTA = Params.from_arrays({k: np.ones_like(v) for k, v in MODEL.items()}, ParamsKind.DELTA).encode()


def make_pool(**kw) -> FleetPool:
    return FleetPool(run_id="r", model_id="m", schema=MODEL.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     require_signatures=False, **kw)


def join(pool: FleetPool, node: str) -> str:
    return pool.join(JoinInfo(node, "m", MODEL.schema_digest, 10), None).session


def in_thread(target) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def fit_round(pool: FleetPool, session: str, node: str, rnd: int) -> IncomingResult:
    """One fit round that ``node`` answers; returns the result it pushed."""
    outcomes: list = []
    t = in_thread(lambda: outcomes.extend(pool.fit([FitInstruction(rnd, node, MODEL, {}, 0)], 30.0)))
    ins = pool.next_instruction(session, 10.0, None)
    assert ins is not None and ins.round == rnd
    result = IncomingResult(session, ins.instruction_id, rnd, 10, payload=DELTA)
    assert pool.submit(result, None) is False
    t.join(10)
    assert [type(o) for o in outcomes] == [FitResult]
    return result


def test_recent_ids_keep_the_newest_up_to_the_cap():
    ids = RecentIds(3)
    for i in range(10):
        ids.add(f"i{i}", f"note {i}")
        assert len(ids) <= 3
    assert "i9" in ids and "i7" in ids and "i6" not in ids
    ids.add("i7", "again")  # re-adding makes it the newest: i8 is now the oldest
    ids.add("i10")
    assert "i8" not in ids and ids.note("i7") == "again" and ids.note("i0") is None
    with pytest.raises(ValueError, match="cap of at least 1"):
        RecentIds(0)


def test_refusal_reasons_are_capped_and_nothing_is_lost_from_the_total():
    counts = RejectionCounts()
    for i in range(500):
        counts.note(f"reason-{i}")
    counts.note("reason-0")  # a reason already held keeps its own count
    assert len(counts) == MAX_REASONS
    assert counts["reason-0"] == 2 and counts[OTHER_REASON] == 500 - (MAX_REASONS - 1)
    assert sum(counts.values()) == 501


def test_the_pool_counts_invented_refusal_reasons_within_the_cap():
    pool = make_pool()
    for i in range(200):
        pool.count_refusal(f"made_up_{i}")
    assert len(pool.rejections) == MAX_REASONS and sum(pool.rejections.values()) == 200


def test_answered_ids_are_capped_and_a_forgotten_one_is_refused_not_accepted():
    pool = make_pool(remember=2)
    session = join(pool, "a")
    results = [fit_round(pool, session, "a", rnd) for rnd in (1, 2, 3)]
    assert len(pool.book.answered) == 2 and not pool.book.open
    assert pool.submit(results[-1], None) is True  # remembered: a repeat, acknowledged and ignored
    assert pool.rejections["duplicate"] == 1
    with pytest.raises(UnknownId, match="no instruction"):  # forgotten: unknown, not accepted again
        pool.submit(results[0], None)
    assert pool.rejections["unknown_instruction"] == 1


def test_closed_ids_are_capped():
    pool = make_pool(remember=3)
    join(pool, "a")
    for rnd in range(1, 6):  # nobody answers: every instruction closes at its deadline
        outcomes = list(pool.fit([FitInstruction(rnd, "a", MODEL, {}, 0)], 0.0))
        assert [type(o) for o in outcomes] == [NodeTimedOut]
    assert len(pool.book.closed) == 3 and not pool.book.open


def test_an_abandoned_dispatch_closes_what_it_opened():
    pool = make_pool()
    sessions = {node: join(pool, node) for node in ("a", "b")}
    gen = pool.fit([FitInstruction(1, n, MODEL, {}, 0) for n in ("a", "b")], 30.0)
    first: list = []

    def read_one_and_stop():
        first.append(next(gen))
        gen.close()

    t = in_thread(read_one_and_stop)
    pulled = {node: pool.next_instruction(s, 10.0, None) for node, s in sessions.items()}
    a = pulled["a"]
    assert a is not None and pulled["b"] is not None
    pool.submit(IncomingResult(sessions["a"], a.instruction_id, 1, 10, payload=DELTA), None)
    t.join(10)
    assert not t.is_alive() and isinstance(first[0], FitResult)
    assert not pool.book.open
    late = IncomingResult(sessions["b"], pulled["b"].instruction_id, 1, 10, payload=DELTA)
    with pytest.raises(UnexpectedResult, match="abandoned"):
        pool.submit(late, None)
    with pytest.raises(UnknownId):  # nor can its payload still be fetched
        pool.pulled_payload(sessions["b"], pulled["b"].instruction_id, None)


def test_silent_nodes_are_forgotten_and_live_ones_kept():
    clock = FakeClock()
    pool = make_pool(clock=clock, forget_after=40.0)
    sessions = {node: join(pool, node) for node in ("a", "b")}
    pool.ledger_seen(sessions["a"], "old-head", None)
    assert not pool.ledger_service.heard_end("a", Head(3, "new-head"))
    clock.advance(30)
    pool.heartbeat(sessions["b"], None)
    clock.advance(15)  # a: silent 45 s, b: 15 s
    assert pool.node_ids() == []  # neither is live (node_ttl is 4 s) ...
    assert pool.node_info("a") is None and pool.node_info("b") is not None  # ... but only a is forgotten
    assert len(pool.registry) == 1
    assert pool.ledger_service.heard_end("a", Head(3, "new-head"))  # its verified head is forgotten too
    with pytest.raises(UnknownId, match="join again"):
        pool.heartbeat(sessions["a"], None)
    again = join(pool, "a")  # and it may join again
    assert pool.node_ids() == ["a"] and pool.heartbeat(again, None).current_round == 0


def test_the_registry_looks_for_silent_nodes_at_most_every_eighth_of_forget_after():
    clock = FakeClock()
    pool = make_pool(clock=clock, forget_after=80.0)
    join(pool, "a")
    clock.advance(81)
    assert pool.node_info("a") is not None  # nobody looked yet
    pool.node_ids()
    assert pool.node_info("a") is None
    join(pool, "b")
    clock.advance(75)
    pool.node_ids()  # looks: b, silent 75 s, is kept
    join(pool, "c")
    clock.advance(8)  # under 80 / 8 s since that look: b, silent 83 s, is still held
    pool.node_ids()
    assert pool.node_info("b") is not None
    clock.advance(2)
    pool.node_ids()
    assert pool.node_info("b") is None and pool.node_info("c") is not None


def test_forget_after_shorter_than_node_ttl_is_refused():
    with pytest.raises(ValueError, match="forget_after"):
        make_pool(node_ttl=10.0, forget_after=5.0)


def test_dispatches_at_the_same_time_each_get_their_own_outcomes():
    pool = make_pool()
    sessions = {node: join(pool, node) for node in ("a", "b")}
    fits: list = []
    exchanges: list = []
    t1 = in_thread(lambda: fits.extend(pool.fit([FitInstruction(1, "a", MODEL, {}, 0)], 30.0)))
    t2 = in_thread(lambda: exchanges.extend(pool.exchange("step", {"b": b"hello"}, 30.0)))
    for node, session in sessions.items():
        ins = pool.next_instruction(session, 10.0, None)
        assert ins is not None
        payload = DELTA if node == "a" else b"reply"
        pool.submit(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=payload), None)
    t1.join(10)
    t2.join(10)
    assert [type(o) for o in fits] == [FitResult]
    assert exchanges == [ExchangeReply("b", b"reply")]
