"""Structured logs: one JSON object per line, with the run, round and node where known."""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
import threading

import pytest

from potluck.core.records import RoundRecord
from potluck.observability.logs import JsonFormatter, RoundLog, make_handler
from potluck.runtime.logcontext import bind_log_fields, current_log_fields, log_fields, set_process_log_fields

POTLUCK = [sys.executable, "-m", "potluck.cli"]


@pytest.fixture
def capture():
    """A logger writing JSON lines to a buffer; yields (logger, lines())."""
    set_process_log_fields(run_id=None, node_id=None, round=None)  # whatever an earlier test's app left
    buffer = io.StringIO()
    logger = logging.getLogger(f"potluck.test.{id(buffer)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = make_handler("json", buffer)
    logger.addHandler(handler)
    yield logger, lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logger.removeHandler(handler)
    set_process_log_fields(run_id=None, node_id=None, round=None)


def test_a_line_has_time_level_logger_message(capture):
    logger, lines = capture
    logger.warning("hello %s", "world")
    (line,) = lines()
    assert line["level"] == "WARNING"
    assert line["logger"] == logger.name
    assert line["message"] == "hello world"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert not {"run_id", "round", "node_id"} & set(line)  # not known: not written


def test_context_fields_process_fields_and_callables(capture):
    logger, lines = capture
    current = {"round": 7}
    set_process_log_fields(run_id="r1", round=lambda: current["round"])
    logger.info("a")
    with log_fields(round=3, node_id="n0"):
        logger.info("b")
        bind_log_fields(round=4)
        logger.info("c")
    logger.info("d")
    a, b, c, d = lines()
    assert (a["run_id"], a["round"]) == ("r1", 7)
    assert (b["run_id"], b["round"], b["node_id"]) == ("r1", 3, "n0")
    assert c["round"] == 4
    assert d["round"] == 7 and "node_id" not in d  # the block undid both


def test_fields_are_per_thread_and_process_fields_reach_every_thread(capture):
    logger, lines = capture
    set_process_log_fields(run_id="r1")

    def work() -> None:
        logger.info("from a thread")

    with log_fields(round=2):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    (line,) = lines()
    assert line["run_id"] == "r1" and "round" not in line


def test_a_failing_field_never_breaks_a_line(capture):
    logger, lines = capture
    set_process_log_fields(round=lambda: 1 / 0)
    logger.info("still written")
    assert lines()[0]["message"] == "still written"
    assert current_log_fields() == {}


def test_extras_exceptions_nan_and_newlines(capture):
    logger, lines = capture
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed\nover two lines", extra={"perplexity": math.nan, "nodes": 3})
    out = lines()
    assert len(out) == 1
    (line,) = out
    assert line["message"] == "failed\nover two lines"
    assert line["perplexity"] is None and line["nodes"] == 3
    assert "ValueError: boom" in line["exception"]


def test_round_log_writes_the_round_figures(capture):
    logger, lines = capture
    record = RoundRecord(round=2, num_nodes=3, sampled=3, seconds=0.5, model_digest="d",
                         metrics={"loss": 2.5, "perplexity": 12.25}, metric="perplexity")
    RoundLog(logger).on_commit(record, None, None)
    (line,) = lines()
    assert line["round"] == 2 and line["metric"] == "perplexity" and line["nodes"] == 3
    assert line["metrics"] == {"loss": 2.5, "perplexity": 12.25} and line["loss"] == 2.5
    assert line["message"].startswith("round 2 committed: perplexity 12.2500, loss 2.5000, 3 of 3 nodes")


def test_the_text_format_is_unchanged():
    buffer = io.StringIO()
    handler = make_handler("text", buffer)
    handler.handle(logging.LogRecord("potluck.x", logging.INFO, __file__, 1, "plain %d", (1,), None))
    assert buffer.getvalue().rstrip().endswith(" INFO potluck.x: plain 1")
    with pytest.raises(ValueError, match="log format must be one of text, json, got 'yaml'"):
        make_handler("yaml")


def test_json_formatter_alone_is_one_line():
    formatter = JsonFormatter()
    line = formatter.format(logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", None, None))
    assert "\n" not in line and json.loads(line)["message"] == "a\nb"


@pytest.mark.slow
def test_simulate_with_json_logs_writes_only_json_on_stderr(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [*POTLUCK, "simulate", "--rounds", "2", "--nodes", "3", "--fit", "epochs=1", "--run-dir", str(run_dir),
         "--log-format", "json", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line parses
    assert all({"time", "level", "logger", "message", "run_id"} <= set(line) for line in lines), lines
    assert all(line["run_id"] == "run" for line in lines)
    rounds = [line for line in lines if line["logger"] == "potluck.rounds"]
    assert [line["round"] for line in rounds] == [1, 2]
    assert any(line["message"].startswith("metrics at http://127.0.0.1:") for line in lines)
