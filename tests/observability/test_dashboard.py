"""The Grafana dashboard and provisioning files: well formed, and every query names only
metrics a running server and node really export (read from their live /metrics)."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.request

import numpy as np
import pytest

from conftest import REPO

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "potluck.json"
METRIC = re.compile(r"\bpotluck_[a-z_]+")
DATASOURCE_UID = "potluck-prometheus"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(board: dict) -> list[str]:
    """Every PromQL expression: panel targets and template variables."""
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_the_dashboard_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    all_panels = panels(board)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    cells: set[tuple[int, int]] = set()
    for p in all_panels:
        assert p["type"] and p["title"], p
        pos = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(pos), p["title"]
        assert 0 <= pos["x"] and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for target in p["targets"]:
            assert target["datasource"] == p["datasource"]
            assert METRIC.search(target["expr"]), target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    titles = " ".join(p["title"].lower() for p in all_panels)
    for topic in ("progress", "round duration", "nodes", "rejected", "bytes", "primary metric", "loss", "ε", "cpu", "memory"):
        assert topic in titles, f"no panel about {topic}"


def test_provisioning_files_point_at_the_dashboard_and_its_data_source():
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    provider = (GRAFANA / "provisioning" / "dashboards" / "potluck.yaml").read_text()
    for text in (datasource, provider):
        assert text.lstrip("# \n").count("apiVersion: 1") == 1
        assert "\t" not in text
    assert re.search(r"^\s+uid: potluck-prometheus$", datasource, re.M)
    assert re.search(r"^\s+type: prometheus$", datasource, re.M)
    assert re.search(r"^\s+url: http://", datasource, re.M)
    assert re.search(r"^\s+type: file$", provider, re.M)
    assert re.search(r"^\s+path: /\S+$", provider, re.M)


# -- the names, against what a running server and node export ---------------------------------

def exported_names(text: str) -> set[str]:
    """Sample names a /metrics page can hold, from its ``# TYPE`` lines (so a labelled
    metric that has no sample yet still counts)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {name, f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)  # counters are typed under their _total name
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper(threading.Thread):
    """Scrapes a URL every 0.2 s until it stops answering (after having answered), like
    Prometheus; until the first answer, every 20 ms (a short run's node is up briefly)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.bodies, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.bodies.append(urllib.request.urlopen(self.url, timeout=2).read().decode())
            except OSError:
                if self.bodies:
                    return
            self.stop.wait(0.2 if self.bodies else 0.02)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A 2-round deployment in this process (plaintext on 127.0.0.1): the server's and
    the node's last /metrics pages, and the run's records."""
    from potluck.apps.node import NodeAgent, NodeConfig
    from potluck.apps.server import run_server
    from potluck.core.config import ServerConfig
    from potluck.tasks.builtin import load_digits

    root = tmp_path_factory.mktemp("live")
    data = load_digits()
    np.savez(root / "n0.npz", x=data.x[:400], y=data.y[:400])
    server_port, node_port = free_port(), free_port()
    config = ServerConfig.from_mapping(dict(
        bind="127.0.0.1:0", insecure=True, run_dir=str(root / "run"), rounds=2, min_nodes=1, fit={"epochs": 1},
        round_timeout=60.0, heartbeat_seconds=0.5, metrics_port=server_port,
    ))
    ready, result, errors = threading.Event(), {}, []
    address: list[int] = []

    def serve() -> None:
        try:
            result["server"] = run_server(config, on_ready=lambda port: (address.append(port), ready.set()))
        except BaseException as exc:  # reported below
            errors.append(exc)
            ready.set()

    server = threading.Thread(target=serve, daemon=True)
    server_scraper = Scraper(f"http://127.0.0.1:{server_port}/metrics")
    server.start()
    assert ready.wait(60) and not errors, errors
    server_scraper.start()
    agent = NodeAgent(NodeConfig(server_address=f"127.0.0.1:{address[0]}", node_id="n0",
                                 data_path=str(root / "n0.npz"), insecure=True, poll_seconds=0.5,
                                 metrics_port=node_port, key_dir=str(root / "keys")))
    node_scraper = Scraper(f"http://127.0.0.1:{node_port}/metrics")
    node_scraper.start()
    node = threading.Thread(target=agent.run, daemon=True)
    node.start()
    server.join(120)
    node.join(30)
    for scraper in (server_scraper, node_scraper):
        scraper.stop.set()
        scraper.join(5)
    agent.client.close()
    assert not errors, errors
    assert server_scraper.bodies and node_scraper.bodies
    return server_scraper.bodies[-1], node_scraper.bodies[-1], result["server"].records


@pytest.mark.slow
def test_every_metric_the_dashboard_queries_is_exported(live):
    server_page, node_page, _ = live
    exported = exported_names(server_page) | exported_names(node_page)
    used = {name for expr in queries(dashboard()) for name in METRIC.findall(expr)}
    assert used, "no potluck metric in the dashboard"
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    for name in ("potluck_round_duration_seconds_bucket", "potluck_results_rejected_total", "potluck_node_rss_bytes",
                 "potluck_privacy_epsilon", "potluck_eval_primary"):
        assert name in used, f"the dashboard does not show {name}"


@pytest.mark.slow
def test_the_live_pages_hold_the_runs_figures(live):
    from prometheus_client.parser import text_string_to_metric_families

    server_page, node_page, records = live

    def samples(page: str) -> dict[tuple, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(page) for s in family.samples}

    server, node = samples(server_page), samples(node_page)

    def get(table: dict, name: str, /, **labels: str) -> float:
        return table[(name, tuple(sorted(labels.items())))]

    run_id = next(dict(labels)["run_id"] for name, labels in server if name == "potluck_current_round")
    assert get(server, "potluck_rounds_committed_total", run_id=run_id) == 2
    assert get(server, "potluck_current_round", run_id=run_id) == records[-1].round == 2
    last = records[-1]
    assert get(server, "potluck_eval_primary", run_id=run_id, split="held_out", name=last.metric) == pytest.approx(last.primary)
    for name, value in last.metrics.items():
        assert get(server, "potluck_eval_metric", run_id=run_id, split="held_out", name=name) == pytest.approx(value)
    assert get(server, "potluck_evaluation_accuracy", run_id=run_id, split="held_out") == pytest.approx(last.primary)
    assert get(server, "potluck_evaluation_loss", run_id=run_id, split="held_out") == pytest.approx(records[-1].loss)
    assert get(server, "potluck_round_duration_seconds_count", run_id=run_id) == 2
    assert get(server, "potluck_aggregation_seconds_count", run_id=run_id) == 2
    assert get(server, "potluck_nodes_joined_total", run_id=run_id) == 1
    assert get(server, "potluck_results_accepted_total", run_id=run_id) == 3  # 2 fits, 1 final evaluation
    assert get(server, "potluck_payload_bytes_received_total", run_id=run_id) == sum(r.bytes_up for r in records)
    assert get(server, "potluck_payload_bytes_sent_total", run_id=run_id) > 0
    assert get(node, "potluck_node_instructions_total", node_id="n0", kind="fit", outcome="ok") >= 1
    assert get(node, "potluck_node_rss_bytes", node_id="n0") > 0
    assert get(node, "potluck_node_cpu_seconds_total", node_id="n0") > 0
    assert ("potluck_node_gpus", (("node_id", "n0"),)) in node
