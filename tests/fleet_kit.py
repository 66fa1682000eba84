"""Shared by the fleet tests: a CA with node certificates, a served FleetPool, and a
well-behaved round that shows the server still serves after whatever a test did.

Loaded as a pytest plugin by tests/conftest.py, so the ``tls``, ``fleet`` and
``clocked_fleet`` fixtures are available to every test; the helpers are imported by name.

Deadlines: a test that needs a round deadline to pass (a late result, a node dropped
for the round) uses ``clocked_fleet``, whose pool runs on a :class:`FakeClock`, and
moves the clock past the deadline itself; nothing then depends on how fast the machine
is. Every other wait here is only an upper bound that ends early when things go well
(``dispatch``'s deadline ends with the result, ``join(60)`` with the thread)."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from potluck.backends.fleet import FleetPool
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.testing import FakeClock
from potluck.transport.certs import PemBundle, _issue, init_ca, issue_node, issue_server, load_pem_bundle
from potluck.transport.client import FleetClient
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.server import ServerOptions, start_server

MODEL = Params.from_arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})


def make_tls(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    init_ca(root / "tls")
    issue_server(root / "tls", ["127.0.0.1"])
    for node in ("a", "b", "stranger"):
        issue_node(root / "tls", node)
    init_ca(root / "other")
    issue_node(root / "other", "a")
    now = datetime.now(timezone.utc)
    _issue(root / "tls", "node", "old", [], not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    return root


@contextlib.contextmanager
def serve_fleet(tls, **options):
    """A FleetPool served over mutual TLS with small limits (1 MiB payloads and messages);
    ``clock=`` gives the pool another clock (a :class:`FakeClock`)."""
    # These tests are about the transport; signed updates have their own (test_fleet_signatures.py).
    extra = {"clock": options.pop("clock")} if "clock" in options else {}
    pool = FleetPool(run_id="r1", model_id="m", schema=MODEL.schema, data_info_json=b"{}", allow={"a", "b", "old"},
                     heartbeat_seconds=1.0, max_payload_bytes=1 << 20, require_signatures=options.pop("signed", False),
                     **extra)
    opts = {"max_message_bytes": 1 << 20, "chunk_bytes": 1 << 18, **options}
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(tls / "tls", "server"), ServerOptions(**opts),
                                ledger=pool)
    try:
        yield pool, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def client(tls, address, node="a", folder="tls", **kw) -> FleetClient:
    if node == "old":  # expired: skip the client's own check, so the server is what refuses it
        d = tls / folder
        bundle = PemBundle((d / "ca.crt").read_bytes(), (d / "nodes/old.crt").read_bytes(), (d / "nodes/old.key").read_bytes())
    else:
        bundle = load_pem_bundle(tls / folder, "node", node)
    return FleetClient(address, bundle, call_timeout=5.0, **kw)


def join(c: FleetClient, node="a", schema=MODEL.schema_digest) -> str:
    return c.join(JoinInfo(node, "m", schema, 10)).session


def dispatch(pool: FleetPool, nodes, rnd=1, timeout=60.0):
    """Run one fit round in a thread; returns (thread, outcomes list). The round ends when
    every node's outcome is in, so the deadline only bounds a round that goes wrong."""
    outcomes: list = []
    ins = [FitInstruction(rnd, n, MODEL, {"lr": 0.1}, 7) for n in nodes]
    t = threading.Thread(target=lambda: outcomes.extend(pool.fit(ins, timeout)), daemon=True)
    t.start()
    return t, outcomes


def delta(value=1.0) -> bytes:
    return Params.from_arrays({k: np.full_like(v, value) for k, v in MODEL.items()}, ParamsKind.DELTA).encode()


def well_behaved_round(pool, tls, address, node="b"):
    """A full round with a good node: the server still serves after a refusal."""
    c = client(tls, address, node)
    session = join(c, node)
    t, outcomes = dispatch(pool, [node], rnd=pool.current_round + 1)
    ins = c.pull(session, 5)
    assert ins is not None and ins.kind == "fit" and ins.config == {"lr": 0.1} and ins.seed == 7
    assert Params.decode(ins.payload).digest == MODEL.digest
    assert c.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=delta())) is False
    t.join(60)
    assert isinstance(outcomes[0], FitResult) and outcomes[0].num_examples == 10
    c.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory)


@pytest.fixture
def fleet(tls):
    with serve_fleet(tls) as served:
        yield served


@pytest.fixture
def clocked_fleet(tls):
    """Like ``fleet``, on a fake clock: ``pool, address, clock``; ``clock.advance(s)``
    moves the pool's deadlines and node liveness, and nothing else does."""
    clock = FakeClock()
    with serve_fleet(tls, clock=clock) as (pool, address):
        yield pool, address, clock
