"""Virtual nodes on Ray actors, on this machine or a Ray cluster (``--backend ray``).

Mirrors :class:`~potluck.backends.process_pool.ProcessPool` on Ray: each actor rebuilds
the federation from the small :class:`FederationSpec` once (data, partitions, one Task
instance) and then serves any virtual node's instructions, one at a time, so only
parameters travel. An actor reserves ``node_cpus`` CPUs and ``node_gpus`` GPUs
(fractions share a GPU); by default there are as many actors as the cluster's
resources hold, at most one per node.

Instructions wait in one queue and go to whichever actor is free, so a slow node holds
up only its own actor. Per-node update state (top-k's residual) lives here, in the
driver, and travels with the node's fit instruction and back with its result, exactly
as in the process pool; results therefore do not depend on which actor served a node,
and the same seed gives the same model digest in-process, over worker processes and
over Ray (with the same thread count per Task, which Ray sets from ``node_cpus``).

Failures cost only the affected instruction: an actor that dies yields ``NodeFailed``
and is replaced; at the deadline every outstanding instruction yields ``NodeTimedOut``
and the actors still busy with one are killed and replaced (a hung call cannot be
reclaimed). Ray is imported only when this pool is made; without it, ``ConfigError``
names the extra to install.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import potluck
from potluck.backends.process_pool import WorkerAnswer
from potluck.core.errors import ConfigError, NodeError, NodeFailed, NodeTimedOut
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.runtime.federation import FederationSpec, build_federation
from potluck.runtime.node import NodeRunner
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, ExchangeReply, FitOutcome, NodePool

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'potluck[ray]'"

# One queued call: the node it is for, and how to start it on an actor (→ an ObjectRef).
Job = tuple[str, Callable[[Any], Any]]


def import_ray() -> Any:
    """The ``ray`` module, or ``ConfigError`` naming the extra that installs it."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ConfigError(f"--backend ray needs Ray, which is not installed here: {INSTALL_HINT}") from exc


class NodeHost:
    """What one Ray actor runs: the federation's Task and data, serving any virtual node.

    Results and node errors are returned, never raised (a raised ``NodeError`` would
    come back wrapped in Ray's own error). A fit takes the node's update state and
    returns it updated; the actor keeps no node's state between calls.
    """

    def __init__(self, spec: FederationSpec) -> None:
        federation = build_federation(spec)
        self.runner = NodeRunner(federation.task, federation.nodes, federation.attacks)

    def call(self, method: str, ins: Any, params: Any, state: dict[str, Any] | None) -> Any:
        """Run ``ins`` (sent without its parameters, which come once per round as ``params``)."""
        ins = dataclasses.replace(ins, params=params)
        if state is not None:
            self.runner.update_state[ins.node_id] = state
        try:
            result = getattr(self.runner, method)(ins)
        except NodeError as exc:
            result = exc
        finally:
            kept = self.runner.update_state.pop(ins.node_id, None)
        return WorkerAnswer(result, kept) if state is not None else result

    def exchange(self, node: str, step: str, payload: bytes, state: dict[str, Any]) -> WorkerAnswer:
        self.runner.update_state[node] = state
        try:
            return WorkerAnswer(ExchangeReply(node, self.runner.exchange(node, step, payload)),
                                self.runner.update_state.get(node))
        except NodeError as exc:
            return WorkerAnswer(exc, None)  # a failed step leaves the node's state as it was
        finally:
            self.runner.update_state.pop(node, None)

    def where(self) -> str:
        """The ``potluck`` package this actor imported (tests check it is the driver's)."""
        return str(potluck.__file__)


def worker_pythonpath() -> str:
    """PYTHONPATH for actors: this ``potluck``'s folder first, then the driver's own
    source folders (a Task given as module:attribute), not its site-packages or stdlib."""
    own = os.path.dirname(os.path.dirname(os.path.abspath(potluck.__file__)))
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [own]
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if (os.path.isdir(path) and path not in paths and "site-packages" not in path
                and "dist-packages" not in path and not any(path.startswith(p + os.sep) for p in prefixes)):
            paths.append(path)
    extra = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*paths, *([extra] if extra else [])])


def actors_that_fit(resources: Mapping[str, float], node_cpus: float, node_gpus: float) -> int:
    """How many actors of ``node_cpus`` CPUs and ``node_gpus`` GPUs the cluster's
    ``resources`` (``ray.cluster_resources()``) hold."""
    fits = math.floor(resources.get("CPU", 0.0) / node_cpus + 1e-9) if node_cpus > 0 else sys.maxsize
    if node_gpus > 0:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / node_gpus + 1e-9))
    return fits


class RayPool(NodePool):
    """Virtual nodes on Ray actors; see the module docstring.

    Args:
        spec: the federation every actor rebuilds.
        node_ids: the virtual nodes, in a stable order.
        address: ``local`` (start Ray on this machine for the run), ``auto`` (join the
            cluster ``ray start`` runs on this machine), ``HOST:PORT`` of a cluster's
            head, or ``ray://HOST:PORT`` (Ray Client). Ignored when Ray is already
            initialised in this process (that cluster is used, and left running).
        actors: how many actors; default: as many as the cluster's resources hold.
        node_cpus, node_gpus: what each actor reserves.
    """

    def __init__(self, spec: FederationSpec, node_ids: Sequence[str], *, address: str = "local",
                 actors: int | None = None, node_cpus: float = 1.0, node_gpus: float = 0.0) -> None:
        self._ray = import_ray()
        if not self._ray.is_initialized():
            check_reachable(address)  # at once: before the run directory is made
        self.spec = spec
        self._ids = list(node_ids)
        self.address, self.wanted, self.node_cpus, self.node_gpus = address, actors, node_cpus, node_gpus
        self._hosts: list[Any] = []  # actor handles; None where one must be (re)started
        self._started_ray = False
        self.update_state: dict[str, dict[str, Any]] = {}  # per node, between its fits (as ProcessPool's)

    def node_ids(self) -> Sequence[str]:
        return self._ids

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        return self._run(self._jobs("fit", instructions), timeout, "no result within the round deadline")

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self._run(self._jobs("evaluate", instructions), timeout, "no result within the round deadline")

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """One protocol step for each node in ``payloads``; node state travels like a fit's."""
        def job(node: str, payload: bytes) -> Callable[[Any], Any]:
            state = self.update_state.get(node, {})
            return lambda host: host.exchange.remote(node, step, payload, state)

        return self._run([(node, job(node, payload)) for node, payload in payloads.items()], timeout,
                         f"no answer to {step} within the deadline")

    def _jobs(self, method: str, instructions: Sequence[FitInstruction] | Sequence[EvaluateInstruction]) -> list[Job]:
        """One job per instruction. The model goes into Ray's object store once per round,
        not once per node; a fit carries its node's update state."""
        self._start()
        shared: dict[int, Any] = {}  # id(params) -> ObjectRef
        jobs: list[Job] = []
        for ins in instructions:
            if id(ins.params) not in shared:
                shared[id(ins.params)] = self._ray.put(ins.params)
            bare = dataclasses.replace(ins, params=None)  # type: ignore[arg-type]  # they travel apart
            state = self.update_state.get(ins.node_id, {}) if method == "fit" else None
            jobs.append((ins.node_id, _call_job(method, bare, shared[id(ins.params)], state)))
        return jobs

    # -- scheduling ---------------------------------------------------------------

    def _run(self, jobs: list[Job], timeout: float, late: str) -> Iterator[Any]:
        """Feed ``jobs`` to free actors; one outcome per job, in completion order."""
        deadline = time.monotonic() + timeout
        ray = self._ray
        self._start()
        queue = collections.deque(jobs)
        idle = collections.deque(range(len(self._hosts)))
        running: dict[Any, tuple[int, str]] = {}  # ObjectRef -> (actor slot, node)
        try:
            while queue or running:
                while queue and idle:
                    slot = idle.popleft()
                    node, start = queue.popleft()
                    running[start(self._host(slot))] = (slot, node)
                left = deadline - time.monotonic()
                ready = ray.wait(list(running), num_returns=1, timeout=left)[0] if left > 0 else []
                if not ready:
                    break
                slot, node = running.pop(ready[0])
                outcome, dead = self._outcome(ready[0], node)
                if dead:
                    self._replace(slot)
                idle.append(slot)
                yield outcome
            for node in [n for _, n in running.values()] + [n for n, _ in queue]:
                yield NodeTimedOut(node, f"{late} of {timeout:g} s")
        finally:
            for slot, _ in running.values():  # hung (or abandoned) calls: their actors cannot be reclaimed
                self._replace(slot)

    def _outcome(self, ref: Any, node: str) -> tuple[Any, bool]:
        """The outcome a finished call gives, and whether its actor died."""
        ray = self._ray
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            return NodeFailed(node, f"its Ray actor died: {_first_line(exc)}"), True
        except Exception as exc:  # an error that escaped NodeRunner, or a result Ray could not move
            return NodeFailed(node, f"{type(exc).__name__}: {_first_line(exc)}"), False
        if isinstance(answer, WorkerAnswer):  # a fit or a protocol step: it carried the node's state
            if answer.state is not None:
                self.update_state[node] = answer.state
            answer = answer.outcome
        return answer, False

    # -- actors -------------------------------------------------------------------

    def _start(self) -> None:
        """Connect to Ray (starting it for ``local``) and size the actor set, once."""
        if self._hosts:
            return
        ray = self._ray
        if not ray.is_initialized():
            extra = {"include_dashboard": False} if self.address == "local" else {}
            check_reachable(self.address)
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, **extra)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot use the Ray cluster at --ray-address {self.address}: "
                                  f"{_first_line(exc)}") from exc
            self._started_ray = True
        resources = ray.cluster_resources()
        fits = actors_that_fit(resources, self.node_cpus, self.node_gpus)
        if fits < 1:
            raise ConfigError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: not "
                f"enough for one actor of --node-cpus {self.node_cpus:g} and --node-gpus {self.node_gpus:g}")
        count = min(self.wanted or fits, fits, max(1, len(self._ids)))
        if self.wanted and self.wanted > count:
            log.warning("Ray: %d actors asked for, %d fit the cluster (or the nodes); using %d",
                        self.wanted, count, count)
        self._hosts = [None] * count
        log.info("Ray: %d actors of %g CPUs and %g GPUs each", count, self.node_cpus, self.node_gpus)

    def _host(self, slot: int) -> Any:
        if self._hosts[slot] is None:
            ray = self._ray
            actor = ray.remote(NodeHost).options(
                num_cpus=self.node_cpus, num_gpus=self.node_gpus, max_restarts=0,
                runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}})
            self._hosts[slot] = actor.remote(self.spec)
        return self._hosts[slot]

    def _replace(self, slot: int) -> None:
        """Kill the actor in ``slot``; the next call there starts a fresh one."""
        actor, self._hosts[slot] = self._hosts[slot], None
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception as exc:  # already gone
                log.debug("Ray: killing an actor: %s", exc)

    def hosts(self) -> list[Any]:
        """The live actors (started if need be), e.g. to ask where they run."""
        self._start()
        return [self._host(slot) for slot in range(len(self._hosts))]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this pool started it. Idempotent."""
        for slot in range(len(self._hosts)):
            self._replace(slot)
        self._hosts = []
        if self._started_ray:
            self._started_ray = False
            self._ray.shutdown()


def _call_job(method: str, bare: Any, params: Any, state: dict[str, Any] | None) -> Callable[[Any], Any]:
    return lambda host: host.call.remote(method, bare, params, state)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """``ConfigError`` unless a cluster address (HOST:PORT, ray://HOST:PORT) accepts a TCP
    connection within ``timeout`` seconds; Ray itself would retry for minutes."""
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Ray cluster at --ray-address {address}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
