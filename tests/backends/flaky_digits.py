"""A digits Task whose nodes misbehave on purpose, importable by spawned workers."""

from __future__ import annotations

import time

from potluck.tasks.builtin import resolve_task


class FlakyDigits:
    """node-001 hangs for an hour (longer than any test deadline; the pool kills it), node-002 raises; others train."""

    def __init__(self) -> None:
        self._inner = resolve_task("digits")
        self.name = "flaky-digits"

    def load_data(self, path):
        return self._inner.load_data(path)

    def build(self, info, seed):
        return self._inner.build(info, seed)

    def fit(self, params, data, config, seed):
        if data.source.startswith("node-001"):
            time.sleep(3600)
        if data.source.startswith("node-002"):
            raise RuntimeError("simulated crash in user code")
        return self._inner.fit(params, data, config, seed)

    def evaluate(self, params, data):
        return self._inner.evaluate(params, data)
