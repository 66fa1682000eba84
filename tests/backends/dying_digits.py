"""A digits Task whose node-003 kills its own process mid-fit, importable by Ray actors."""

from __future__ import annotations

import os

from flaky_digits import FlakyDigits


class DyingDigits(FlakyDigits):
    """FlakyDigits (node-001 hangs, node-002 raises), and node-003's process dies."""

    def fit(self, params, data, config, seed):
        if data.source.startswith("node-003"):
            os._exit(3)
        return super().fit(params, data, config, seed)
