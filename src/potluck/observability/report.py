"""The run report: the task's primary metric and loss per round as a PNG (and ε, when the run
accounts privacy)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from potluck.core.files import atomic_write
from potluck.core.records import RoundRecord


def write_report(records: Sequence[RoundRecord], path: Path, title: str = "potluck run") -> None:
    """Plot the primary metric the records name (perplexity, mse, …) and loss per
    round, held-out and (where present) on the nodes' validation splits, and the privacy
    spent (ε at the run's δ) per round when records carry ``extras["epsilon"]``. A task
    ranked by loss gets one loss panel."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    metric = records[-1].metric if records else "loss"
    shown = ["loss"] if metric == "loss" else [metric, "loss"]
    private = [r for r in records if "epsilon" in r.extras]
    panels = len(shown) + bool(private)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], shown):
        _plot_metric(ax, records, name)
    if private:
        ax_eps = axes[0][-1]
        delta = private[-1].extras.get("delta", math.nan)
        ax_eps.plot([r.round for r in private], [r.extras["epsilon"] for r in private], marker=".",
                    color="tab:red", label=f"δ = {delta:g}")
        ax_eps.set_xlabel("round")
        ax_eps.set_ylabel("privacy spent ε")
        ax_eps.grid(alpha=0.3)
        ax_eps.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(Path(path), buffer.getvalue())


def _plot_metric(ax: Any, records: Sequence[RoundRecord], name: str) -> None:
    """One metric per round: held-out as a line, the nodes' validation as squares."""
    ax.plot([r.round for r in records], [r.metrics.get(name, math.nan) for r in records], marker=".", label="held-out")
    fed = [r for r in records if name in r.federated_metrics]
    if fed:
        ax.plot([r.round for r in fed], [r.federated_metrics[name] for r in fed], "s", label="nodes' validation")
    ax.set_xlabel("round")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
