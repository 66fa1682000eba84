"""The /metrics endpoint: loopback, a clear error for a taken port, a final scrape before exit."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from potluck.core.errors import ConfigError
from potluck.core.records import RoundRecord
from potluck.observability.endpoint import MetricsServer
from potluck.observability.metrics import RunMetrics, RunMonitor


def record(rnd: int) -> RoundRecord:
    return RoundRecord(round=rnd, num_nodes=1, sampled=1, seconds=0.1, model_digest="d", metrics={"loss": 1.0})

def test_the_endpoint_serves_the_registry_on_loopback_and_stops():
    reg = CollectorRegistry()
    RunMetrics(reg, "r1").on_commit(record(1), None, None)
    server = MetricsServer(reg)  # port 0: any free one
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert 'potluck_rounds_committed_total{run_id="r1"} 1.0' in body
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            MetricsServer(reg, port=server.port)  # taken
    finally:
        server.close()
        server.close()  # idempotent
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(server.url, timeout=2)


def test_closing_waits_for_a_final_scrape_only_when_something_scrapes():
    monitor = RunMonitor("r1", rounds=1)
    monitor.close(wait_for_final_scrape=True)  # never served: nothing to wait for

    monitor = RunMonitor("r1", rounds=1)
    url = monitor.serve()
    bodies: list[str] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                bodies.append(urllib.request.urlopen(url, timeout=2).read().decode())
            except OSError:
                return
            stop.wait(0.2)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    while not bodies and scraper.is_alive():  # the first page, or the scraper's error
        stop.wait(0.05)
    assert bodies, "the endpoint never answered"
    monitor.run.on_commit(record(1), None, None)
    monitor.close(wait_for_final_scrape=True)
    stop.set()
    scraper.join(5)
    assert 'potluck_rounds_committed_total{run_id="r1"} 1.0' in bodies[-1]
