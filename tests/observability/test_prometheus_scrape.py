"""A real Prometheus scrapes a real `potluck up --nodes 2` on 127.0.0.1.

Debian's ``prometheus`` package (.ci/run installs it) runs with a temporary config and
storage; this test starts it and stops it by PID. What Prometheus recorded is read back
through its HTTP API and compared with the run directory's ``metrics.jsonl``. The same
deployment runs with ``--log-format json``, so its logs are checked line by line too.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROMETHEUS = shutil.which("prometheus")
POTLUCK = [sys.executable, "-m", "potluck.cli"]
ROUNDS = 4
EPOCHS = 40  # slow enough (most of a second a round) that a 1 s scrape interval sees every node while it works


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free consecutive ports")


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Prometheus:
    def __init__(self, root: Path, targets: list[str]) -> None:
        self.port = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: potluck\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready: " + self.log.read_text()[-2000:])

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: labels (without __name__) → value."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert reply["status"] == "success", reply
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in reply["data"]["result"]}

    def only(self, expr: str) -> float:
        values = self.query(expr)
        assert len(values) == 1, (expr, values)
        return next(iter(values.values()))


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus package (apt-get install prometheus)")
def test_prometheus_scrapes_a_deployment_and_records_its_rounds(tmp_path):
    base = free_ports(3)  # the server on base, node i on base + 1 + i
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{base + i}" for i in range(3)])
    run_dir = tmp_path / "run"
    err = open(tmp_path / "up.err", "wb")
    try:
        up = subprocess.Popen(
            [*POTLUCK, "up", "--nodes", "2", "--rounds", str(ROUNDS), "--fit", f"epochs={EPOCHS}", "--run-dir", str(run_dir),
             "--metrics-port", str(base), "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            assert up.wait(600) == 0, (tmp_path / "up.err").read_text()[-3000:]
        finally:
            stop(up)

        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = records[-1]
        assert last["round"] == ROUNDS

        def recorded(expr: str) -> dict:  # the last value each series had, whether or not its target is still up
            return prometheus.query(f"last_over_time({expr}[10m])")

        (labels,) = recorded("potluck_rounds_planned")
        run_id = dict(labels)["run_id"]
        assert dict(labels)["instance"] == f"127.0.0.1:{base}"
        deadline = time.monotonic() + 20  # the final scrape may still be on its way into storage
        while recorded("potluck_current_round") != {labels: ROUNDS}:
            assert time.monotonic() < deadline, recorded("potluck_current_round")
            time.sleep(0.5)

        assert prometheus.only("last_over_time(potluck_rounds_committed_total[10m])") == ROUNDS
        assert prometheus.only("last_over_time(potluck_rounds_planned[10m])") == ROUNDS
        accuracy = prometheus.only('last_over_time(potluck_evaluation_accuracy{split="held_out"}[10m])')
        assert accuracy == pytest.approx(last["accuracy"], rel=1e-12)
        primary = prometheus.only(f'last_over_time(potluck_eval_primary{{split="held_out",name="{last["metric"]}"}}[10m])')
        assert primary == pytest.approx(last["metrics"][last["metric"]], rel=1e-12)
        loss = prometheus.only('last_over_time(potluck_evaluation_loss{split="held_out"}[10m])')
        assert loss == pytest.approx(last["loss"], rel=1e-12)
        assert prometheus.only("last_over_time(potluck_round_duration_seconds_count[10m])") == ROUNDS
        assert prometheus.only("last_over_time(potluck_round_duration_seconds_sum[10m])") == pytest.approx(
            sum(r["seconds"] for r in records), rel=1e-9)
        assert prometheus.only("last_over_time(potluck_nodes_joined_total[10m])") == 2
        assert prometheus.only("max_over_time(potluck_nodes_connected[10m])") == 2
        assert prometheus.only("last_over_time(potluck_payload_bytes_received_total[10m])") == sum(
            r["bytes_up"] for r in records)
        assert prometheus.only("last_over_time(potluck_payload_bytes_sent_total[10m])") > 0

        rss = recorded("potluck_node_rss_bytes")
        assert sorted(dict(labels)["node_id"] for labels in rss) == ["node-000", "node-001"]
        assert all(v > 10 * 2**20 for v in rss.values())
        fits = recorded('potluck_node_instructions_total{kind="fit",outcome="ok"}')
        assert sorted(fits.values()) == [ROUNDS, ROUNDS]
        assert len(recorded("potluck_node_gpus")) == 2
    finally:
        err.close()
        stop(prometheus.proc)

    _check_json_logs(run_dir, run_id, tmp_path / "up.err")


def _check_json_logs(run_dir: Path, run_id: str, up_err: Path) -> None:
    """Every line every process wrote is a JSON object with the fields it knows."""
    logs = run_dir / "deployment" / "logs"

    def lines(path: Path) -> list[dict]:
        out = [json.loads(line) for line in path.read_text().splitlines()]
        assert out, f"{path.name} is empty"
        for line in out:
            assert {"time", "level", "logger", "message"} <= set(line), line
        return out

    server = lines(logs / "server.log")
    opened = next(i for i, line in enumerate(server) if "run_id" in line)  # from when the run directory is open
    assert all(line["run_id"] == run_id for line in server[opened:]), server
    assert any(line["message"].startswith("potluck server: listening") for line in server[opened:])
    assert any(line.get("round") == 0 and "joined" in line["message"] for line in server)
    for node in ("node-000", "node-001"):
        node_lines = lines(logs / f"{node}.log")
        assert all(line["node_id"] == node for line in node_lines), node_lines
        joined = next(i for i, line in enumerate(node_lines) if "joined run" in line["message"])
        assert all(line["run_id"] == run_id for line in node_lines[joined:]), node_lines
    rounds = [line["round"] for line in lines(up_err) if line["logger"] == "potluck.rounds"]
    assert rounds == list(range(1, ROUNDS + 1))
