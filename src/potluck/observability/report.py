"""The run report: accuracy and loss per round as a PNG (and ε, when the run accounts privacy)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from potluck.core.files import atomic_write
from potluck.core.records import RoundRecord


def write_report(records: Sequence[RoundRecord], path: Path, title: str = "potluck run") -> None:
    """Plot centralized (and, where present, federated) accuracy and loss per round, and
    the privacy spent (ε at the run's δ) per round when records carry ``extras["epsilon"]``."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    rounds = [r.round for r in records]
    private = [r for r in records if "epsilon" in r.extras]
    fig, axes = plt.subplots(1, 3 if private else 2, figsize=(15 if private else 10, 4), dpi=100)
    ax_acc, ax_loss = axes[0], axes[1]
    ax_acc.plot(rounds, [r.accuracy for r in records], marker=".", label="held-out")
    ax_loss.plot(rounds, [r.loss for r in records], marker=".", label="held-out")
    fed = [r for r in records if not math.isnan(r.federated_accuracy)]
    if fed:
        ax_acc.plot([r.round for r in fed], [r.federated_accuracy for r in fed], "s", label="nodes' validation")
        ax_loss.plot([r.round for r in fed], [r.federated_loss for r in fed], "s", label="nodes' validation")
    for ax, name in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if private:
        ax_eps = axes[2]
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
