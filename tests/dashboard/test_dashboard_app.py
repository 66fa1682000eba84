"""The dashboard's HTTP side: JSON endpoints and the token gate through Starlette's
TestClient, the live stream through a real uvicorn server on a thread (127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from dashboard_kit import Run, flip_hex_digit
from starlette.testclient import TestClient
from typer.testing import CliRunner

from potluck.cli.main import app as cli
from potluck.core.errors import ConfigError
from potluck.dashboard.app import STATIC, Settings, create_app
from potluck.dashboard.auth import COOKIE, check_bind, parse_bind, resolve_token
from potluck.dashboard.server import start_in_thread

TOKEN = "s3cret-token-of-32-characters-xx"
LOCAL = "http://127.0.0.1"


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path / "runs" / "a")
    for _ in range(2):
        r.commit()
    return r


def client(run, token=None, base_url=LOCAL) -> TestClient:
    return TestClient(create_app(Settings([run.path.parent], token=token)), base_url=base_url)


def test_the_runs_list_and_a_run_with_every_record(run):
    c = client(run)
    runs = c.get("/api/runs").json()["runs"]
    assert [(r["id"], r["status"], r["rounds"], r["metric"]) for r in runs] == [("a", "running", 2, "perplexity")]
    one = c.get("/api/runs/a").json()
    assert [r["round"] for r in one["records"]] == [1, 2]
    assert one["records"][1]["failure_causes"][0]["cause"] == "fit raised RuntimeError: out of memory"
    assert one["offset"] == (run.path / "metrics.jsonl").stat().st_size
    assert one["privacy"]["epsilon_budget"] == 4.0 and one["config"]["task"] == "fake"
    missing = c.get("/api/runs/zzz")
    assert missing.status_code == 404 and missing.json() == {"error": "no run 'zzz' among the run directories shown"}


def test_the_ledger_endpoints_name_the_first_bad_entry(run):
    c = client(run)
    assert c.get("/api/runs/a/ledger").json()["ok"] is True
    assert [x["node"] for x in c.get("/api/runs/a/ledger/1").json()["contributions"]] == ["a", "b", "c"]
    assert c.get("/api/runs/a/ledger/7").status_code == 404
    flip_hex_digit(run.path / "ledger.jsonl", 1, "contributions_root")
    view = c.get("/api/runs/a/ledger").json()
    assert view["ok"] is False and view["first_bad"]["entry"] == 1


def test_the_page_and_the_vendored_chart_library_are_served_with_its_licence(run):
    c = client(run)
    page = c.get("/")
    assert page.status_code == 200 and 'src="static/uPlot.iife.min.js"' in page.text
    assert c.get("/static/uPlot.iife.min.js").status_code == 200
    assert "MIT License" in (STATIC / "uPlot.LICENSE").read_text()
    assert "http" not in (STATIC / "index.html").read_text().replace("http-equiv", "")  # nothing from elsewhere


def test_the_dashboard_only_reads(run):
    c = client(run)
    assert c.post("/api/runs/a").status_code == 405 and c.delete("/api/runs/a").status_code == 405


@pytest.mark.parametrize("path", ["/", "/api/runs", "/api/runs/a", "/api/runs/a/ledger", "/api/runs/a/stream",
                                  "/static/dashboard.js"])
def test_with_a_token_every_request_without_it_gets_401(run, path):
    response = client(run, TOKEN, base_url="http://10.0.0.5").get(path)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    wrong = client(run, TOKEN).get(path, headers={"authorization": "Bearer " + TOKEN[:-1] + "y"})
    assert wrong.status_code == 401


def test_the_token_is_taken_from_the_header_or_the_link_which_sets_a_cookie(run):
    c = client(run, TOKEN, base_url="http://10.0.0.5")
    assert c.get("/api/runs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = c.get(f"/?token={TOKEN}")
    assert page.status_code == 200
    assert "HttpOnly" in page.headers["set-cookie"] and "SameSite=Strict" in page.headers["set-cookie"]
    assert c.cookies.get(COOKIE) == TOKEN
    assert c.get("/api/runs").status_code == 200  # the page's own requests: the cookie


def test_without_a_token_only_a_loopback_host_is_served(run):
    assert client(run, base_url="http://localhost:8050").get("/api/runs").status_code == 200
    assert client(run, base_url="http://[::1]:8050").get("/api/runs").status_code == 200
    rebound = client(run, base_url="http://attacker.example:8050").get("/api/runs")
    assert rebound.status_code == 421 and "loopback" in rebound.json()["error"]


def test_a_non_loopback_bind_is_refused_without_a_token():
    for address in ("0.0.0.0:8050", "10.0.0.5:8050", "[::]:8050", "dashboard.example.org:8050"):
        with pytest.raises(ConfigError, match="is not a loopback address, so the dashboard needs a token"):
            check_bind(parse_bind(address), None)
        check_bind(parse_bind(address), TOKEN)
    for address in ("127.0.0.1:8050", "[::1]:8050", "localhost:8050"):
        check_bind(parse_bind(address), None)
    with pytest.raises(ConfigError, match="--bind"):
        parse_bind("127.0.0.1")


def test_tokens_are_read_and_checked(tmp_path):
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert resolve_token(None, tmp_path / "t") == TOKEN
    with pytest.raises(ConfigError, match="at least 16 characters"):
        resolve_token("short", None)
    with pytest.raises(ConfigError, match="not both"):
        resolve_token(TOKEN, tmp_path / "t")
    with pytest.raises(ConfigError, match="cannot read it"):
        resolve_token(None, tmp_path / "missing")


def test_the_command_refuses_a_public_bind_without_a_token_with_a_clear_error(tmp_path):
    done = CliRunner().invoke(cli, ["dashboard", str(tmp_path), "--bind", "0.0.0.0:8050"])
    assert done.exit_code == 2
    assert "is not a loopback address, so the dashboard needs a token: pass --token" in done.output


@contextmanager
def serving(run, token=None) -> Iterator[str]:
    """The app on a real uvicorn server on a thread, on 127.0.0.1 and a free port."""
    running = start_in_thread(Settings([run.path.parent], token=token, poll_seconds=0.05), parse_bind("127.0.0.1:0"))
    try:
        yield running.url.rstrip("/")
    finally:
        running.stop()
        assert not running.thread.is_alive()


def events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, line[6:]


def test_the_live_stream_sends_each_round_committed_after_the_offset(run):
    offset = (run.path / "metrics.jsonl").stat().st_size
    with serving(run) as url, httpx.stream("GET", f"{url}/api/runs/a/stream?offset={offset}", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response.iter_lines())
        assert next(stream)[0] == "summary"  # where the run stands, first
        run.commit()
        kind, data = next(stream)
        assert kind == "record" and '"round":3' in data
        run.commit()
        kind, data = next(stream)
        assert kind == "summary" and '"rounds":3' in data
        kind, data = next(stream)
        assert kind == "record" and '"round":4' in data


def test_the_live_stream_needs_the_token_too(run):
    with serving(run, TOKEN) as url:
        assert httpx.get(f"{url}/api/runs/a/stream", timeout=10).status_code == 401


def test_the_live_stream_says_reset_when_metrics_jsonl_is_rewritten(run):
    metrics = run.path / "metrics.jsonl"
    offset = metrics.stat().st_size
    with serving(run) as url, httpx.stream("GET", f"{url}/api/runs/a/stream?offset={offset}", timeout=30) as response:
        stream = events(response.iter_lines())
        assert next(stream)[0] == "summary"
        metrics.write_bytes(metrics.read_bytes().splitlines(keepends=True)[0])  # shorter: rewritten
        assert next(stream) == ("reset", '{"offset":0}')
        kind, data = next(stream)
        assert kind == "record" and '"round":1' in data
