"""`simulate` with metrics: served during the run, closed after it, and free to change on resume."""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request

import pytest

from potluck.apps.simulate import run_simulation


def test_metrics_are_served_during_the_run_and_may_change_on_resume(tmp_path, small_config, caplog, monkeypatch):
    monkeypatch.setattr("potluck.observability.endpoint.FINAL_SCRAPE_SECONDS", 0.2)  # nobody scrapes after the run
    pages: list[str] = []

    class Scrape:  # a round hook that reads the endpoint while the run is on
        def on_commit(self, record, params, strategy) -> None:
            url = re.search(r"metrics at (\S+)", caplog.text).group(1)
            pages.append(urllib.request.urlopen(url, timeout=5).read().decode())

    caplog.set_level(logging.INFO, logger="potluck")
    config = small_config(tmp_path, rounds=2, nodes=3, metrics_port=0)
    run_simulation(config, hooks=[Scrape()])
    assert len(pages) == 2
    assert re.search(r'^potluck_current_round\{run_id="run"\} 1\.0$', pages[1], re.M)  # hooks before it ran first
    assert "potluck_evaluation_accuracy" in pages[1]  # the classifier's gauge, kept for older dashboards
    assert re.search(r'^potluck_eval_metric\{name="accuracy",run_id="run",split="held_out"\} ', pages[1], re.M)
    url = re.search(r"metrics at (\S+)", caplog.text).group(1)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(url, timeout=2)  # closed with the run

    resumed = run_simulation(config.replace(rounds=3, metrics_port=None, log_format="json"), resume=True)
    assert resumed.resumed_from == 2 and resumed.records[-1].round == 3
