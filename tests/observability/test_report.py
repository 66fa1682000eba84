"""report.png plots the task's primary metric and the loss (and ε when the run spent privacy)."""

from __future__ import annotations

import matplotlib
import pytest

from potluck.core.records import RoundRecord
from potluck.observability import report

PNG = b"\x89PNG\r\n\x1a\n"


def records(metric: str, extras: dict | None = None) -> list[RoundRecord]:
    return [RoundRecord(rnd, 2, 2, 0.1, "d", metrics={"loss": 1.0 / rnd, metric: 10.0 / rnd},
                        federated_metrics={"loss": 1.1 / rnd, metric: 11.0 / rnd} if rnd == 3 else {},
                        metric=metric, extras=extras or {}) for rnd in (1, 2, 3)]


@pytest.mark.parametrize(("metric", "extras", "labels"), [
    ("perplexity", None, ["perplexity", "loss"]),
    ("mse", {"epsilon": 1.5, "delta": 1e-5}, ["mse", "loss", "privacy spent ε"]),
    ("loss", None, ["loss"]),
])
def test_the_panels_follow_the_primary_metric(tmp_path, monkeypatch, metric, extras, labels):
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    figures, really_close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    path = tmp_path / "report.png"
    report.write_report(records(metric, extras), path, title="t")
    assert path.read_bytes()[:8] == PNG
    (figure,) = figures
    assert [ax.get_ylabel() for ax in figure.axes] == labels
    held_out, *federated = figure.axes[0].get_lines()
    assert list(held_out.get_ydata()) == [r.metrics[labels[0]] for r in records(metric)]
    assert [list(line.get_xdata()) for line in federated] == [[3]]  # the round that evaluated on nodes
    really_close(figure)
