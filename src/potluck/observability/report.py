"""The run report: accuracy and loss per round as a PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from potluck.runtime.files import atomic_write
from potluck.runtime.records import RoundRecord


def write_report(records: Sequence[RoundRecord], path: Path, title: str = "potluck run") -> None:
    """Plot centralized (and, where present, federated) accuracy and loss per round."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    rounds = [r.round for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
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
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(Path(path), buffer.getvalue())
