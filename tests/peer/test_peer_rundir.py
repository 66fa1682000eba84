"""A peer's run directory: commit, resume, and refusals that name the problem."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import RunDirError
from potluck.core.params import Params
from potluck.peer.rundir import PeerRunDir


def _model(value: float) -> Params:
    return Params.from_arrays({"w": np.full((2, 3), value, np.float32)})


def test_commit_then_resume_returns_the_last_step(tmp_path):
    rd = PeerRunDir(tmp_path, "run", "a")
    rd.create()
    assert rd.resume() is None
    for step in range(4):
        rd.commit(step, _model(step), {"velocity": np.full(6, step, np.float32)}, {"step": step})
    got = rd.resume()
    assert got.step == 3 and got.anchor.digest == _model(3).digest
    np.testing.assert_array_equal(got.outer_state["velocity"], np.full(6, 3, np.float32))
    assert len(rd.metrics.read_text().splitlines()) == 4
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == [
        "step-0002.outer.safetensors", "step-0002.safetensors", "step-0003.outer.safetensors", "step-0003.safetensors"]


def test_resume_refuses_another_peer_or_a_changed_checkpoint(tmp_path):
    rd = PeerRunDir(tmp_path, "run", "a")
    rd.create()
    rd.commit(1, _model(1), {}, {"step": 1})
    with pytest.raises(RunDirError, match="not run 'run' of peer 'b'"):
        PeerRunDir(tmp_path, "run", "b").resume()
    (rd.checkpoints / "step-0001.safetensors").write_bytes(_model(2).encode())
    with pytest.raises(RunDirError, match="does not match the SHA-256"):
        rd.resume()
