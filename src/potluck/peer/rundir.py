"""A peer's run directory: its model after each outer step, committed atomically, resumable.

Layout::

    checkpoints/step-0003.safetensors        the anchor (model) after outer step 3
    checkpoints/step-0003.outer.safetensors  the outer optimizer's state (Nesterov velocity)
    state.json                               the commit mark: last step and both files' SHA-256
    model.safetensors                        a copy of the latest anchor, for people and tools
    metrics.jsonl                            one JSON line per committed outer step
    ledger.jsonl                             the hash-chained ledger of outer steps (history.py)
    keys/ed25519.pem                         the peer's signing key (mode 0600)

Commit of step k: both checkpoint files (temp file, fsync, rename), then ``state.json``
the same way; step k is committed iff the mark names it. A peer killed at any moment
resumes from the last mark (checking both digests); older checkpoints are removed
after a commit, keeping the previous step as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import ParamsError, RunDirError
from potluck.core.files import append_line, atomic_write, remove
from potluck.core.params import Params
from potluck.peer.history import StepLedger


@dataclass(frozen=True)
class Committed:
    step: int
    anchor: Params
    outer_state: Mapping[str, np.ndarray]


class PeerRunDir:
    def __init__(self, path: Path, run_id: str, peer_id: str) -> None:
        self.path, self.run_id, self.peer_id = Path(path), run_id, peer_id
        self.checkpoints = self.path / "checkpoints"
        self.mark = self.path / "state.json"
        self.metrics = self.path / "metrics.jsonl"
        self.key_file = self.path / "keys" / "ed25519.pem"
        self.ledger_file = self.path / "ledger.jsonl"

    def save_ledger(self, ledger: StepLedger) -> None:
        """Written whole and atomically before the step's commit mark."""
        atomic_write(self.ledger_file, ledger.lines().encode())

    def load_ledger(self, step: int) -> StepLedger:
        """The ledger up to committed ``step`` (a later entry, written before a commit that
        did not happen, is dropped); LedgerError when the chain does not verify."""
        if not self.ledger_file.exists():
            return StepLedger()
        try:
            text = self.ledger_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunDirError(f"cannot read {self.ledger_file}: {exc.strerror}") from exc
        ledger = StepLedger.from_lines(text)
        ledger.entries = [e for e in ledger.entries if e["step"] <= step]
        return ledger

    def create(self) -> None:
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}") from exc

    def _files(self, step: int) -> tuple[Path, Path]:
        return (self.checkpoints / f"step-{step:04d}.safetensors",
                self.checkpoints / f"step-{step:04d}.outer.safetensors")

    def commit(self, step: int, anchor: Params, outer_state: Mapping[str, np.ndarray],
               record: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """Commit step ``step``; returns the bytes written (model, outer state: b"" for none)."""
        model_file, outer_file = self._files(step)
        model_bytes = bytes(anchor.encode())
        outer_bytes = bytes(Params.from_arrays(dict(outer_state)).encode()) if outer_state else b""
        atomic_write(model_file, model_bytes)
        atomic_write(outer_file, outer_bytes)
        mark = {"run": self.run_id, "peer": self.peer_id, "step": step,
                "model": hashlib.sha256(model_bytes).hexdigest(), "outer": hashlib.sha256(outer_bytes).hexdigest()}
        atomic_write(self.mark, json.dumps(mark, indent=1).encode())
        atomic_write(self.path / "model.safetensors", model_bytes)
        append_line(self.metrics, json.dumps(dict(record), sort_keys=True))
        for old in self._files(step - 2):
            remove(old)
        return model_bytes, outer_bytes

    def resume(self) -> Committed | None:
        """The last committed step, or None for a fresh directory; RunDirError when the
        directory belongs to another run or peer, or a checkpoint does not match its mark."""
        if not self.mark.exists():
            return None
        try:
            mark = json.loads(self.mark.read_text(encoding="utf-8"))
            step = int(mark["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{self.mark} is not a peer commit mark: {exc}") from exc
        if (mark.get("run"), mark.get("peer")) != (self.run_id, self.peer_id):
            raise RunDirError(f"{self.path} holds run {mark.get('run')!r} of peer {mark.get('peer')!r}, "
                              f"not run {self.run_id!r} of peer {self.peer_id!r}: pick another --run-dir")
        model_file, outer_file = self._files(step)
        model_bytes, outer_bytes = self._read(model_file, mark["model"]), self._read(outer_file, mark["outer"])
        try:
            anchor = Params.decode(model_bytes)
            outer = dict(Params.decode(outer_bytes)) if outer_bytes else {}
        except ParamsError as exc:
            raise RunDirError(f"checkpoint of step {step} in {self.path}: {exc}") from exc
        return Committed(step, anchor, outer)

    @staticmethod
    def _read(path: Path, digest: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise RunDirError(f"{path} does not match the SHA-256 its commit mark holds")
        return data
