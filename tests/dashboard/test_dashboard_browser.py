"""The dashboard in a real headless Chromium, served by a real ``potluck dashboard`` process
on 127.0.0.1 with a token, over a run directory this test commits rounds to through the
real commit protocol: the run's chart gains a point per committed round without the
page reloading; after one byte of ledger.jsonl changes, the ledger view names the bad
entry; a request without the token gets 401. A screenshot of each view is written to
``$POTLUCK_DASHBOARD_SCREENSHOTS`` (default: the test's tmp folder).

Needs Debian's chromium (``apt-get install chromium``) and the playwright package (its
browser downloads are not used): skipped without them on a developer's machine, failed
in CI (``CI`` set).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dashboard_kit import Run, flip_hex_digit

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "browser-test-token-0123456789abcdef"
VENV_BIN = Path(sys.executable).parent
WAIT_MS = 60_000  # an upper bound: every wait ends as soon as its condition holds


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture
def run(tmp_path) -> Run:
    r = Run(tmp_path / "runs" / "a")
    for _ in range(2):
        r.commit()
    return r


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """``potluck dashboard ARGS --bind 127.0.0.1:0``; its page's address."""
    command = [str(VENV_BIN / "potluck"), "dashboard", *args, "--bind", "127.0.0.1:0", "--poll", "0.1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        url, deadline = "", time.monotonic() + 60
        while not url and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "serving http://" in line:
                url = line.split("serving ", 1)[1].split("?", 1)[0].split(" ", 1)[0]
        assert url, f"potluck dashboard did not start (exit {process.poll()})"
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
def dashboard(tmp_path, run) -> Iterator[str]:
    """The dashboard over ``run``'s folder, with a token."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    with serving(str(run.path.parent), "--token-file", str(tmp_path / "token")) as url:
        yield url


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def rounds_drawn(page, chart: str = "primary") -> int:
    return page.evaluate(f"document.querySelector('#chart-{chart}')?.dataset.rounds | 0")


def test_the_dashboard_follows_a_run_live_names_a_tampered_entry_and_wants_its_token(tmp_path, run, dashboard, browser):
    shots = Path(os.environ.get("POTLUCK_DASHBOARD_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    assert page.goto(f"{dashboard}?token={TOKEN}#/run/a").status == 200

    # The run view: a point per committed round, appended by the live stream.
    page.wait_for_function("document.querySelector('#chart-primary')?.dataset.rounds === '2'")
    page.wait_for_function("document.querySelector('#live-state').dataset.state === 'live'")
    loaded_at = page.evaluate("window.__dashboardLoadedAt")
    for expected in (3, 4, 5):
        assert run.commit() == expected
        page.wait_for_function(f"document.querySelector('#chart-primary').dataset.rounds === '{expected}'")
        primary = page.evaluate("potluckDashboard.charts.find(c => c.figure.id === 'primary').chart.data")
        assert primary[0] == list(range(1, expected + 1))  # the chart's own x values: one per round
        assert primary[1][-1] == pytest.approx(40.0 / expected)
    assert page.evaluate("window.__dashboardLoadedAt") == loaded_at, "the page reloaded"
    assert rounds_drawn(page, "epsilon") == 5 and rounds_drawn(page, "nodes") == 5
    assert "out of memory" in page.inner_text("#failures")
    assert "round 5 of 6" in page.inner_text("#run-summary")
    page.screenshot(path=str(shots / "dashboard-run.png"), full_page=True)

    # The runs list, with two runs ticked to overlay their curves.
    other = Run(run.path.parent / "b")
    for _ in range(3):
        other.commit()
    page.evaluate("location.hash = '#/'")
    page.wait_for_selector("#runs-table input[data-run='a']").check()
    page.wait_for_selector("#runs-table input[data-run='b']").check()
    page.wait_for_function("potluckDashboard.compare?.data.length === 3")
    overlay = page.evaluate("potluckDashboard.compare.data")
    assert overlay[0] == [1, 2, 3, 4, 5] and len(overlay) == 3  # rounds; run a; run b
    assert overlay[2][3:] == [None, None] and overlay[1][4] == pytest.approx(8.0)
    assert "perplexity" in page.inner_text("#runs-table")
    page.screenshot(path=str(shots / "dashboard-runs.png"), full_page=True)

    # The ledger: verifies; after one byte of ledger.jsonl changes, names the first bad entry.
    page.evaluate("location.hash = '#/ledger/a'")
    page.wait_for_selector("#ledger-verdict[data-ok='true']")
    assert page.locator("#ledger-table tr.entry").count() == 6
    page.screenshot(path=str(shots / "dashboard-ledger.png"), full_page=True)
    flip_hex_digit(run.path / "ledger.jsonl", 3, "model_digest")
    page.click("#ledger-refresh")
    page.wait_for_selector("#ledger-verdict[data-first-bad='3']")
    assert "First bad entry: entry 3 — the server's signature does not verify" in page.inner_text("#ledger-verdict")
    assert "bad-entry" in page.get_attribute("#ledger-table tr[data-entry='3']", "class")
    assert page.evaluate("window.__dashboardLoadedAt") == loaded_at, "the page reloaded"
    page.screenshot(path=str(shots / "dashboard-ledger-tampered.png"), full_page=True)

    # Without the token: 401, for the page and for the live stream.
    stranger = browser.new_context().new_page()
    assert stranger.goto(dashboard).status == 401
    for path in ("api/runs", "api/runs/a/stream"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(dashboard + path, timeout=30)
        assert refused.value.code == 401
    assert sorted(p.name for p in shots.glob("dashboard-*.png")) == [
        "dashboard-ledger-tampered.png", "dashboard-ledger.png", "dashboard-run.png", "dashboard-runs.png"]


def test_the_chart_gains_a_point_per_round_of_a_real_simulation(tmp_path, browser):
    """A real ``potluck simulate`` started after the page opened on its (not yet existing)
    run directory: every value the chart's round count takes is recorded in the page, and
    must be 1, 2, …, N: one point per committed round, drawn as it commits."""
    run_dir, rounds = tmp_path / "runs" / "sim", 8
    with serving(str(run_dir)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{url}#/run/sim")
        page.wait_for_function("document.querySelector('#live-state').dataset.state === 'live'")
        page.evaluate("""() => {
            window.seen = [];
            new MutationObserver((changes) => {
              for (const c of changes) if (c.target.id === 'chart-primary' && c.attributeName === 'data-rounds')
                window.seen.push([c.oldValue, c.target.dataset.rounds]);
            }).observe(document.querySelector('#charts'),
                       { subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ['data-rounds'] });
        }""")
        loaded_at = page.evaluate("window.__dashboardLoadedAt")
        simulate = subprocess.Popen([str(VENV_BIN / "potluck"), "simulate", "--rounds", str(rounds), "--nodes", "4",
                                     "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            page.wait_for_function(f"document.querySelector('#chart-primary')?.dataset.rounds === '{rounds}'",
                                   timeout=300_000)
            assert simulate.wait(timeout=120) == 0, simulate.stderr.read().decode() if simulate.stderr else ""
        finally:
            if simulate.poll() is None:
                stop(simulate)
        changes = page.evaluate("window.seen")
        # Each record event draws in its own task, and the observer runs after each: one change per draw.
        assert [int(new) for _, new in changes] == list(range(1, rounds + 1)), changes
        assert page.evaluate("window.__dashboardLoadedAt") == loaded_at, "the page reloaded"
        page.wait_for_function("document.querySelector('#run-summary').textContent.includes('finished')")
