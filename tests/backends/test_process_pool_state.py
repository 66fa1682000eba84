"""Per-node update state (error feedback) in the process pool: it follows the node, not the worker."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest

from potluck.apps.simulate import run_simulation
from potluck.backends import process_pool
from potluck.backends.process_pool import ProcessPool
from potluck.core.errors import NodeFailed
from potluck.core.messages import FitInstruction
from potluck.core.params import Params
from potluck.runtime.node import NodeData, NodeRunner
from potluck.tasks.protocol import FitOutput
from potluck.updates.pipeline import UpdatePipeline
from potluck.updates.topk import TopK

START = Params.from_arrays({"w": np.zeros(4, np.float32)})


class Step:
    """Test task: each fit moves the model by a fixed step (fails on request)."""

    name = "step"

    def fit(self, params, data, config, seed):
        if config.get("fail"):
            raise RuntimeError("asked to fail")
        return FitOutput(Params.from_arrays({"w": params["w"] + np.array([4, 3, 2, 1], np.float32)}), 1, {})


def test_state_travels_with_the_instruction_and_no_worker_keeps_it(monkeypatch):
    # Threads stand in for worker processes: the parent's bookkeeping is what is tested.
    monkeypatch.setattr(process_pool, "_runner", NodeRunner(Step(), {"a": NodeData([], []), "b": NodeData([], [])}))
    pool = ProcessPool(spec=None, node_ids=["a", "b"], workers=1)  # type: ignore[arg-type]
    pool._executor = cf.ThreadPoolExecutor(1)
    config = UpdatePipeline([TopK(0.25)]).to_config()  # one of 4 values per round
    try:
        for rnd in (1, 2):
            results = list(pool.fit([FitInstruction(rnd, "a", START, config, rnd)], 10.0))
            assert [r.node_id for r in results] == ["a"]
        # Round 1 sent 4 and kept [0, 3, 2, 1]; round 2 sent 3 + 3 and kept [4, 0, 4, 2].
        np.testing.assert_array_equal(pool.update_state["a"]["topk"]["residual"], [4, 0, 4, 2])
        assert process_pool._runner.update_state == {}
        failed = list(pool.fit([FitInstruction(3, "a", START, {**config, "fail": True}, 3)], 10.0))
        assert isinstance(failed[0], NodeFailed)
        np.testing.assert_array_equal(pool.update_state["a"]["topk"]["residual"], [4, 0, 4, 2])  # unchanged
        assert "b" not in pool.update_state
    finally:
        pool.close()


@pytest.mark.slow
def test_worker_processes_give_the_in_process_digest_with_error_feedback(tmp_path, small_config):
    configs = [small_config(tmp_path / str(w), workers=w, rounds=3, compression="topk", compression_ratio=0.05)
               for w in (1, 2)]
    one, two = (run_simulation(c) for c in configs)
    assert one.final_params.digest == two.final_params.digest
    assert [r.bytes_up for r in one.records] == [r.bytes_up for r in two.records]
