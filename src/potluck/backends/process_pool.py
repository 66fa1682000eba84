"""Virtual nodes spread over worker processes, one per core by default.

Each worker rebuilds the federation from its :class:`FederationSpec` once (data,
partitions, one model instance) and then serves any virtual node's instructions, so
only parameters cross process boundaries. Workers are started with ``spawn`` (safe
with PyTorch's threads). A worker that dies, or an instruction that misses the
deadline, costs that instruction (``NodeFailed`` / ``NodeTimedOut``); the pool is then
replaced, because a hung or dead worker cannot be reclaimed.

Any worker may serve any node, so per-node update state (the residual that top-k's
error feedback keeps, ``runtime/node.py``'s ``update_state``) lives here, in the parent:
it travels to the worker with the node's fit instruction and back with its result.
A node's state therefore follows it whichever worker it lands on, survives the pool
being replaced, and matches the in-process pool's exactly (same digests). A fit that
fails or misses the deadline leaves the node's state as it was.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

from potluck.core.errors import NodeError, NodeFailed, NodeTimedOut
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.runtime.federation import FederationSpec, build_federation
from potluck.runtime.node import NodeRunner
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, ExchangeReply, FitOutcome, NodePool

_runner: NodeRunner | None = None  # one per worker process


class WorkerAnswer(NamedTuple):
    """What a worker sends back for a call that carried the node's update state: the
    outcome, and the state after it (None: leave the node's state as it was)."""

    outcome: Any
    state: dict[str, Any] | None


def _init_worker(spec: FederationSpec) -> None:
    global _runner
    federation = build_federation(spec)
    _runner = NodeRunner(federation.task, federation.nodes, federation.attacks)  # attackers come from the spec


def _call(run: Callable[..., Any], node: str, args: tuple[Any, ...], state: dict[str, Any] | None) -> Any:
    """``run(runner, *args)`` for ``node`` in this worker. With ``state`` (the node's
    update state, sent with fits and protocol steps) the answer is a :class:`WorkerAnswer`
    carrying the state after it; a ``NodeError`` leaves the node's state as it was."""
    assert _runner is not None, "worker not initialised"
    if state is not None:
        _runner.update_state[node] = state
    try:
        result = run(_runner, *args)
    except NodeError as exc:
        return exc  # returned, not raised: the exception's args do not pickle back as-is
    finally:
        kept = _runner.update_state.pop(node, None)  # a worker keeps no node's state
    return WorkerAnswer(result, kept) if state is not None else result


def _exchange(runner: NodeRunner, node: str, step: str, payload: bytes) -> ExchangeReply:
    return ExchangeReply(node, runner.exchange(node, step, payload))


class ProcessPool(NodePool):
    def __init__(self, spec: FederationSpec, node_ids: Sequence[str], workers: int | None = None) -> None:
        self.spec = spec
        self._ids = list(node_ids)
        self.workers = workers or os.cpu_count() or 1
        self._executor: cf.ProcessPoolExecutor | None = None
        self.update_state: dict[str, dict[str, Any]] = {}  # per node, between its fits (see above)

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
        """Fit each instruction; the node's update state travels with it and back."""
        pool = self._pool()
        futures = {pool.submit(_call, NodeRunner.fit, ins.node_id, (ins,), self.update_state.get(ins.node_id, {})):
                   ins.node_id for ins in instructions}
        yield from self._collect(futures, f"no result within the round deadline of {timeout:g} s", timeout)

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        pool = self._pool()
        futures = {pool.submit(_call, NodeRunner.evaluate, ins.node_id, (ins,), None): ins.node_id for ins in instructions}
        yield from self._collect(futures, f"no result within the round deadline of {timeout:g} s", timeout)

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """One protocol step for each node in ``payloads``; node state travels like a fit's."""
        pool = self._pool()
        futures = {pool.submit(_call, _exchange, node, (node, step, payload), self.update_state.get(node, {})): node
                   for node, payload in payloads.items()}
        yield from self._collect(futures, f"no answer to {step} within {timeout:g} s", timeout)

    def _collect(self, futures: dict[cf.Future[Any], str], late: str, timeout: float) -> Iterator[Any]:
        """Each future's outcome as it completes, keeping the update state it brings back;
        ``NodeTimedOut(node, late)`` for those left at the deadline. A dead worker or a
        missed deadline replaces the pool."""
        deadline = time.monotonic() + timeout
        broken = False
        try:
            for future in cf.as_completed(futures, timeout=max(0.0, deadline - time.monotonic())):
                node = futures.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    yield NodeFailed(node, "its worker process died")
                    continue
                except Exception as exc:  # an error that escaped NodeRunner, e.g. unpicklable result
                    yield NodeFailed(node, f"{type(exc).__name__}: {exc}")
                    continue
                if isinstance(outcome, WorkerAnswer):  # it carried the node's state
                    if outcome.state is not None:  # always, as the state was sent along
                        self.update_state[node] = outcome.state
                    outcome = outcome.outcome
                yield outcome
        except cf.TimeoutError:
            broken = True
            for node in futures.values():
                yield NodeTimedOut(node, late)
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
