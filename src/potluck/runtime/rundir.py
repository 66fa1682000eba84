"""The run directory and its commit protocol.

Layout::

    config.toml                          the resolved configuration of the run
    checkpoints/round-0007.safetensors   global model after round 7 (round 0: initial)
    checkpoints/round-0007.strategy.safetensors   strategy state after round 7
    checkpoints/round-0007.json          the round's record + file digests: the commit mark
    metrics.jsonl                        one JSON line per committed round
    model.safetensors                    the final model
    report.png                           accuracy and loss per round

Invariant: round k is committed iff ``round-k.json`` exists; it is written (atomically)
only after both safetensors files of round k are complete, and it names their SHA-256.
``metrics.jsonl`` is appended after the mark, so on resume it is rebuilt from the
marks: a crash between the two loses no figure.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from potluck.core.errors import ParamsError, RunDirError
from potluck.core.params import Params
from potluck.runtime.files import append_line, atomic_write
from potluck.runtime.records import RoundRecord
from potluck.strategies.base import Strategy

_MARK = re.compile(r"^round-(\d{4,})\.json$")


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # -- paths --------------------------------------------------------------------

    def _stem(self, rnd: int) -> Path:
        return self.checkpoints / f"round-{rnd:04d}"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    # -- lifecycle ----------------------------------------------------------------

    def create(self, config_toml: str) -> None:
        """Start a new run here; refuse a folder that already holds one."""
        if self.config_file.exists():
            raise RunDirError(f"{self.path} already holds a run: pass --resume to continue it, or another --run-dir")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from exc
        atomic_write(self.config_file, config_toml.encode())

    def read_config(self) -> str:
        try:
            return self.config_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RunDirError(f"{self.path} holds no run to resume (no config.toml)") from None

    # -- commit -------------------------------------------------------------------

    def commit(self, record: RoundRecord, params: Params, strategy_state: dict[str, np.ndarray]) -> None:
        """Make round ``record.round`` durable (see the module docstring for the order)."""
        stem = self._stem(record.round)
        model_bytes = params.encode()
        state_bytes = Params.from_arrays(strategy_state, copy=False).encode()
        atomic_write(stem.with_suffix(".safetensors"), model_bytes)
        atomic_write(stem.parent / f"{stem.name}.strategy.safetensors", state_bytes)
        mark = {
            "record": record.to_json(),
            "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
            "strategy_sha256": hashlib.sha256(state_bytes).hexdigest(),
        }
        atomic_write(stem.with_suffix(".json"), json.dumps(mark, sort_keys=True).encode())
        if record.round > 0:
            append_line(self.metrics_file, json.dumps(record.to_json(), sort_keys=True))

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> None:
        self.commit(record, params, strategy.state())

    def write_final(self, params: Params) -> None:
        atomic_write(self.model_file, params.encode())

    # -- reading back -------------------------------------------------------------

    def committed_rounds(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for f in self.checkpoints.iterdir() if (m := _MARK.match(f.name)))

    def load(self, rnd: int) -> tuple[Params, dict[str, np.ndarray], RoundRecord]:
        """Model, strategy state and record of committed round ``rnd``, digests checked."""
        stem = self._stem(rnd)
        try:
            mark = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
            model_bytes = stem.with_suffix(".safetensors").read_bytes()
            state_bytes = (stem.parent / f"{stem.name}.strategy.safetensors").read_bytes()
        except (OSError, ValueError) as exc:
            raise RunDirError(f"round {rnd} in {self.path} is not readable: {exc}") from exc
        for what, data, key in (("model", model_bytes, "model_sha256"), ("strategy state", state_bytes, "strategy_sha256")):
            if hashlib.sha256(data).hexdigest() != mark.get(key):
                raise RunDirError(f"round {rnd} in {self.path}: the {what} file does not match its recorded digest")
        try:
            params = Params.decode(model_bytes)
            state = dict(Params.decode(state_bytes))
        except ParamsError as exc:
            raise RunDirError(f"round {rnd} in {self.path}: {exc}") from exc
        return params, state, RoundRecord.from_json(mark["record"])

    def prepare_resume(self) -> int:
        """The last committed round; drops files of a half-written later round and
        rebuilds ``metrics.jsonl`` from the commit marks."""
        rounds = self.committed_rounds()
        if not rounds:
            raise RunDirError(f"{self.path} has no committed round to resume from")
        last = rounds[-1]
        for f in self.checkpoints.iterdir():
            m = re.match(r"^round-(\d{4,})\.", f.name)
            if (m and int(m.group(1)) > last) or f.name.startswith("."):
                f.unlink()
        lines = [json.dumps(self.load(r)[2].to_json(), sort_keys=True) for r in rounds if r > 0]
        atomic_write(self.metrics_file, ("\n".join(lines) + "\n" if lines else "").encode())
        return last

    def records(self) -> list[RoundRecord]:
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [RoundRecord.from_json(json.loads(line)) for line in lines if line.strip()]
