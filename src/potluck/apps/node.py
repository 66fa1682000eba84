"""``node``: train on local data when the server asks; only updates leave the machine.

The node dials out, joins, and long-polls. Before it joins for real it builds its model
for the data shape the server announces and checks that the parameter schema matches
the server's, so a wrong Task is refused with a clear message instead of failing later.
When the server goes away, the node retries with exponential backoff and jitter, then
rejoins the run in progress.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from potluck.apps.node_ledger import NodeProvenance
from potluck.apps.resources import local_resources
from potluck.core.config import NodeConfig as NodeConfig  # re-exported: NodeAgent's settings
from potluck.core.errors import (
    NodeError,
    ParamsError,
    PotluckError,
    SchemaMismatch,
    TransportError,
    UnexpectedResult,
    UnknownId,
)
from potluck.core.messages import EvaluateInstruction, FitInstruction
from potluck.core.params import Params
from potluck.core.seeds import rng_for
from potluck.runtime.logcontext import bind_log_fields, log_fields
from potluck.runtime.node import NodeData, NodeRunner
from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo, Task
from potluck.transport.certs import load_pem_bundle
from potluck.transport.client import FleetClient
from potluck.transport.fleet_messages import IncomingResult, JoinInfo, OutgoingInstruction, Welcome

log = logging.getLogger(__name__)


class NodeAgent:
    """One node's loop. ``stop()`` (e.g. from SIGTERM) makes ``run()`` leave and return."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.task: Task = resolve_task(config.task)
        if config.model_id is not None and config.model_id != self.task.name:
            raise SchemaMismatch(f"--model-id {config.model_id!r} is not what task {config.task!r} trains ({self.task.name!r})")
        data = self.task.load_data(Path(str(config.data_path)))
        order = rng_for(0, "node-val", config.node_id).permutation(len(data))
        n_val = int(len(data) * config.val_fraction) if len(data) > 1 else 0
        self.data = NodeData(data.subset(order[n_val:], source=f"{config.node_id} train"),
                             data.subset(order[:n_val], source=f"{config.node_id} val"))
        tls = None if config.insecure else load_pem_bundle(Path(config.tls_dir), "node", config.node_id)
        mb = 2**20
        self.client = FleetClient(config.server_address, tls, chunk_bytes=int(config.chunk_mb * mb),
                                  max_message_bytes=int(config.max_message_mb * mb), bulk=not config.no_bulk)
        self.provenance = NodeProvenance(config.node_id, self.client, tls_dir=config.tls_dir, key_dir=config.key_dir,
                                         leave_on_mismatch=config.leave_on_ledger_mismatch)
        self._stop = threading.Event()
        self._built_for: bytes | None = None
        self._runner: NodeRunner | None = None
        self._runner_run: str | None = None  # the run _runner's update state belongs to
        self.rounds_done = 0
        self.metrics: Any = None  # NodeMetrics while run() serves them (metrics_port set)
        self.run_id: str | None = None  # the run last joined

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        """Serve until the run finishes (0) or ``stop()``; fatal refusals raise."""
        with log_fields(node_id=self.config.node_id), self._served_metrics():
            return self._run()

    @contextmanager
    def _served_metrics(self) -> Iterator[None]:
        if self.config.metrics_port is None:
            yield
            return
        from potluck.observability.endpoint import final_scrape, serve_metrics  # prometheus_client only when asked
        from potluck.observability.metrics import NodeMetrics

        self.metrics = NodeMetrics(None, self.config.node_id)
        server = serve_metrics(self.metrics.registry, self.config.metrics_host, self.config.metrics_port)
        log.info("node %s: metrics at %s", self.config.node_id, server.url)
        try:
            yield
            final_scrape(server, self._stop)  # the run is over (unless stopped): let the last figures be read
        finally:
            server.close()

    def _run(self) -> int:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                welcome = self._join()
                backoff = 0.5
                if self._serve(welcome):
                    return 0
            except (TransportError, UnknownId) as exc:
                delay = random.uniform(0, backoff)  # full jitter: a restarted server is not hit all at once
                log.warning("node %s: %s; retrying in %.1f s", self.config.node_id, exc, delay)
                self._stop.wait(delay)
                backoff = min(backoff * 2, self.config.max_backoff)
        return 0

    def _join(self) -> Welcome:
        probe = self.client.join(JoinInfo(self.config.node_id, self.task.name, "", len(self.data.train)))
        if self._built_for != probe.data_info_json:
            raw = json.loads(probe.data_info_json)
            info = DataInfo(tuple(raw["input_shape"]), int(raw["num_classes"]))
            self._schema = self.task.build(info, 0).schema_digest
            self._built_for = probe.data_info_json
        if self._schema != probe.schema_digest:
            raise SchemaMismatch(
                f"the server's model {probe.model_id!r} has parameter schema {probe.schema_digest[:12]}…, "
                f"this node's task builds {self._schema[:12]}…: install the same Task version as the server"
            )
        offer = local_resources()
        welcome = self.client.join(JoinInfo(self.config.node_id, self.task.name, self._schema, len(self.data.train),
                                            cpus=offer.cpus, memory_bytes=offer.memory_bytes, gpus=offer.gpus,
                                            public_key=self.provenance.public_key))
        self.provenance.start(welcome)
        self.run_id = welcome.run_id
        bind_log_fields(run_id=welcome.run_id)
        if self.metrics is not None:
            self.metrics.joined(offer.cpus, offer.gpus)
        log.info("node %s joined run %s at round %d", self.config.node_id, welcome.run_id, welcome.current_round)
        return welcome

    def _serve(self, welcome: Welcome) -> bool:
        """Pull and answer instructions; True when the run is over."""
        if self._runner is None or self._runner_run != welcome.run_id:
            # One runner per run, kept across rejoins: update stages' state (top-k's error
            # feedback residual) carries over; it is lost when this process restarts.
            self._runner, self._runner_run = NodeRunner(self.task, {self.config.node_id: self.data}), welcome.run_id
        runner = self._runner
        last_beat = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_beat > welcome.heartbeat_seconds:
                reported = self.provenance.head
                beat = self.client.heartbeat(welcome.session, reported)
                self.provenance.check(welcome.session, beat.ledger_head)
                if beat.run_finished:
                    self.provenance.acknowledge(welcome.session, reported)
                    return True
                last_beat = time.monotonic()
            ins = self.client.pull(welcome.session, min(self.config.poll_seconds, welcome.heartbeat_seconds))
            if ins is None:
                last_beat = 0.0  # nothing to do: ask right away whether the run is over
                continue
            bind_log_fields(round=ins.round)
            self.provenance.check(welcome.session, ins.ledger_head)
            if self.metrics is not None:
                self.metrics.received(len(ins.payload))
            result = self._answer(welcome, runner, ins)
            if result is None:
                if self.metrics is not None:
                    self.metrics.instruction(ins.kind, ins.round, ok=False)
                continue
            if self.metrics is not None:
                self.metrics.sent(len(result.payload))
                self.metrics.instruction(ins.kind, ins.round, ok=True)
            self.rounds_done += ins.kind == "fit"
        try:
            self.client.leave(welcome.session, "stopped")
        except PotluckError as exc:  # leaving is a courtesy; the server also notices silence
            log.debug("node %s: could not say it is leaving: %s", self.config.node_id, exc)
        return True

    def _answer(self, welcome: Welcome, runner: NodeRunner, ins: OutgoingInstruction) -> IncomingResult | None:
        """Carry out one instruction and send its result; None when it failed or was refused
        (the server counts it as a missed result at its deadline)."""
        try:
            if ins.kind == "exchange":  # a step of secure aggregation's key agreement or unmasking
                reply = runner.exchange(self.config.node_id, str(ins.config.get("step", "")), bytes(ins.payload))
                result = IncomingResult(welcome.session, ins.instruction_id, ins.round, 0, payload=reply,
                                        run_id=ins.run_id)
            elif ins.kind == "fit":
                params = Params.decode(ins.payload)
                out = runner.fit(FitInstruction(ins.round, self.config.node_id, params, ins.config, ins.seed))
                payload, signature, digest = self.provenance.sign(ins, out)
                result = IncomingResult(welcome.session, ins.instruction_id, ins.round, out.num_examples,
                                        metrics=dict(out.metrics), payload=payload, run_id=ins.run_id,
                                        signature=signature, payload_digest=digest)
            else:
                params = Params.decode(ins.payload)
                ev = runner.evaluate(EvaluateInstruction(ins.round, self.config.node_id, params, ins.config))
                result = IncomingResult(welcome.session, ins.instruction_id, ins.round, ev.num_examples,
                                        loss=ev.loss, metrics=dict(ev.metrics), run_id=ins.run_id)
        except NodeError as exc:
            log.error("node %s: round %d %s failed: %s", self.config.node_id, ins.round, ins.kind, exc)
            return None
        try:
            self.client.push(result)
        except (UnexpectedResult, ParamsError) as exc:  # late, or refused: the server counted it; go on
            log.warning("node %s: round %d %s result refused: %s", self.config.node_id, ins.round, ins.kind, exc)
            return None
        return result
