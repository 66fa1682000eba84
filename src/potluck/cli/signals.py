"""SIGTERM as a clean stop: the same path as Ctrl-C, so `finally` blocks run."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType


def on_sigterm(action: Callable[[], None] | None = None) -> None:
    """Run ``action`` on SIGTERM, or raise KeyboardInterrupt in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if action is not None:
            action()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
