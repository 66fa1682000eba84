"""Virtual nodes spread over worker processes, one per core by default.

Each worker rebuilds the federation from its :class:`FederationSpec` once (data,
partitions, one model instance) and then serves any virtual node's instructions, so
only parameters cross process boundaries. Workers are started with ``spawn`` (safe
with PyTorch's threads). A worker that dies, or an instruction that misses the
deadline, costs that instruction (``NodeFailed`` / ``NodeTimedOut``); the pool is then
replaced, because a hung or dead worker cannot be reclaimed.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from potluck.core.errors import NodeError, NodeFailed, NodeTimedOut
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.runtime.federation import FederationSpec, build_federation
from potluck.runtime.node import NodeRunner
from potluck.runtime.pool import EvaluateOutcome, FitOutcome

_runner: NodeRunner | None = None  # one per worker process


def _init_worker(spec: FederationSpec) -> None:
    global _runner
    federation = build_federation(spec)
    _runner = NodeRunner(federation.task, federation.nodes)


def _call(method: str, ins: Any) -> Any:
    assert _runner is not None, "worker not initialised"
    try:
        return getattr(_runner, method)(ins)
    except NodeError as exc:
        return exc  # returned, not raised: the exception's args do not pickle back as-is


class ProcessPool:
    def __init__(self, spec: FederationSpec, node_ids: Sequence[str], workers: int | None = None) -> None:
        self.spec = spec
        self._ids = list(node_ids)
        self.workers = workers or os.cpu_count() or 1
        self._executor: cf.ProcessPoolExecutor | None = None

    def node_ids(self) -> Sequence[str]:
        return self._ids

    def _pool(self) -> cf.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.spec,),
            )
        return self._executor

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        return self._run("fit", instructions, timeout)

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self._run("evaluate", instructions, timeout)

    def _run(self, method: str, instructions: Sequence[Any], timeout: float) -> Iterator[Any]:
        pool = self._pool()
        futures = {pool.submit(_call, method, ins): ins.node_id for ins in instructions}
        deadline = time.monotonic() + timeout
        broken = False
        try:
            for future in cf.as_completed(futures, timeout=max(0.0, deadline - time.monotonic())):
                node = futures.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    broken = True
                    yield NodeFailed(node, "its worker process died")
                except Exception as exc:  # an error that escaped NodeRunner, e.g. unpicklable result
                    yield NodeFailed(node, f"{type(exc).__name__}: {exc}")
        except cf.TimeoutError:
            broken = True
            for node in futures.values():
                yield NodeTimedOut(node, f"no result within the round deadline of {timeout:g} s")
        finally:
            if broken:
                self._discard()

    def _discard(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # The executor keeps its worker processes private; reach in to kill hung ones.
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.kill()  # hung or dead workers cannot finish; a new pool replaces them
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
