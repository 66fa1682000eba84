"""Reading run directories for the dashboard: the catalog, summaries, status, and following
metrics.jsonl as it grows."""

from __future__ import annotations

import os
import time

import pytest
from dashboard_kit import Run, flip_hex_digit

from potluck.core.errors import UnknownId
from potluck.dashboard.ledger import LedgerViews, ledger_entry
from potluck.dashboard.runs import RunCatalog, privacy_budget, read_config, run_status, summary
from potluck.dashboard.tail import MetricsTail


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path / "runs" / "a")
    for _ in range(3):
        r.commit()
    return r


def test_the_catalog_lists_run_directories_folders_of_runs_and_runs_yet_to_start(tmp_path, run):
    other = Run(tmp_path / "elsewhere" / "a")  # same folder name as the fixture's run
    (tmp_path / "runs" / "not-a-run").mkdir()
    catalog = RunCatalog([tmp_path / "runs", other.path, tmp_path / "later"])
    listed = catalog.runs()
    assert sorted(listed) == sorted(["later", *(k for k in listed if k.startswith("a~"))])
    assert len([k for k in listed if k.startswith("a~")]) == 2  # two folders named a: told apart by their path
    assert catalog.find("later") == tmp_path / "later"
    with pytest.raises(UnknownId, match="no run 'not-a-run'"):
        catalog.find("not-a-run")
    Run(tmp_path / "runs" / "b")  # a new run in the folder appears on the next listing
    assert "b" in catalog.runs()


def test_a_summary_names_the_task_strategy_rounds_and_best_round_in_the_metrics_direction(run):
    catalog = RunCatalog([run.path])
    s = summary("a", run.path, catalog)
    assert (s["task"], s["strategy"], s["rounds"], s["planned"]) == ("fake", "fedavg", 3, 6)
    assert (s["metric"], s["higher_is_better"]) == ("perplexity", False)
    assert s["best"] == {"round": 3, "value": pytest.approx(40 / 3)}  # the lowest perplexity
    assert s["status"] == "running" and s["problems"] == []
    assert privacy_budget(read_config(run.path)[0]) == {"mechanism": "gaussian", "epsilon_budget": 4.0, "delta": 1e-05}


def test_status_follows_the_files_finished_after_the_final_model_stopped_when_quiet(run, tmp_path):
    records = RunCatalog([run.path]).records(run.path)[0].records
    assert run_status(run.path, records).state == "running"
    assert run_status(run.path, records, now=time.time() + 3600).state == "stopped"
    run.finish()
    assert run_status(run.path, records, now=time.time() + 3600).state == "finished"
    assert run_status(tmp_path / "nothing", []).state == "waiting"


def test_the_tail_hands_out_complete_lines_once_and_starts_over_when_the_file_is_rewritten(run):
    tail = MetricsTail(run.path / "metrics.jsonl")
    assert [r.round for r in tail.poll().records] == [1, 2, 3]
    assert tail.poll() is None  # nothing new: one stat
    line = (run.path / "metrics.jsonl").read_bytes().splitlines(keepends=True)[0]
    with open(run.path / "metrics.jsonl", "ab") as f:
        f.write(line[:20])  # being appended: not a line yet
    assert tail.poll() is None
    run.path.joinpath("metrics.jsonl").write_bytes(line + b'{"round": 2}\n[1]\n')  # shorter: rewritten
    read = tail.poll()
    assert read.reset and [r.round for r in read.records] == [1]
    assert read.problems[0].startswith("line 2 of metrics.jsonl is not a round record")
    assert read.problems[1].startswith("line 3 of metrics.jsonl is not a round record: a JSON list")


def test_records_are_reread_only_when_metrics_jsonl_changes(run):
    catalog = RunCatalog([run.path])
    first = catalog.records(run.path)
    assert catalog.records(run.path) is not None and catalog.records(run.path)[0] is first[0]
    run.commit()
    assert len(catalog.records(run.path)[0].records) == 4


def test_the_ledger_view_verifies_and_names_the_first_bad_entry_after_one_byte_changes(run):
    views = LedgerViews()
    view = views.view(run.path)
    assert view["ok"] and view["first_bad"] is None and len(view["entries"]) == 4
    assert [e["kind"] for e in view["entries"]] == ["run_started", "round", "round", "round"]
    assert all(len(e["hash"]) == 64 and len(e["signature"]) == 128 for e in view["entries"])
    assert views.view(run.path) is view  # unchanged files: the verdict is kept
    flip_hex_digit(run.path / "ledger.jsonl", 2, "model_digest")
    os.utime(run.path / "ledger.jsonl", ns=(1, 1))  # even with the old size, a new time
    bad = views.view(run.path)
    assert not bad["ok"] and bad["first_bad"] == {"entry": 2, "message": "the server's signature does not verify"}
    assert bad["entries"][2]["problems"][0] == "the server's signature does not verify"
    assert bad["entries"][1]["problems"] == []


def test_a_ledger_entry_comes_with_its_contributions_and_signatures(run):
    entry = ledger_entry(run.path, 2)
    assert [c["node"] for c in entry["contributions"]] == ["a", "b", "c"]
    assert all(len(c["signature"]) == 128 for c in entry["contributions"])
    with pytest.raises(UnknownId, match="has no entry 9"):
        ledger_entry(run.path, 9)


def test_a_run_without_a_ledger_says_so(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text('task = "fake"\n')
    view = LedgerViews().view(tmp_path / "r")
    assert view == {"present": False, "message": f"{tmp_path / 'r'} is not a run directory (no ledger.jsonl, "
                                                 "no checkpoints/round-*.json)"}


def test_a_default_folder_of_runs_may_not_exist_yet(tmp_path):
    catalog = RunCatalog([], folders=[tmp_path / "runs"])
    assert catalog.runs() == {}
    Run(tmp_path / "runs" / "first")
    assert list(catalog.runs()) == ["first"]
