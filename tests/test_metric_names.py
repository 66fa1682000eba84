"""Nothing outside the tasks names a task's metric: records, metrics.jsonl, the CLI,
reports, Prometheus and the DP/robust paths carry whatever the task reports."""

from __future__ import annotations

import re
from pathlib import Path

import potluck
from potluck.core.records import COMPAT_METRICS

PACKAGE = Path(potluck.__file__).parent
# The one line allowed to name it: the keys metrics.jsonl keeps for older runs' readers.
ALLOWED = {
    ("core/records.py", 'COMPAT_METRICS = ("accuracy",)'),
    # --stop-at METRIC=VALUE: metrics whose direction is known by name (others take >= or <=),
    # and the examples its help and docstring give.
    ("core/sections.py", 'HIGHER_IS_BETTER = ("accuracy", "f1", "auc", "precision", "recall", "r2")'),
    ("core/sections.py", '"""``accuracy=0.97`` → ``("accuracy", True, 0.97)``: the metric, whether the run stops'),
    ("core/sections.py", 'None, "End the run after the first round whose held-out metric reaches a target: accuracy=0.97, "'),
}


def test_accuracy_is_named_only_by_the_tasks_and_the_documented_compatibility_keys():
    found = set()
    for path in PACKAGE.rglob("*"):
        relative = path.relative_to(PACKAGE)
        if not path.is_file() or relative.parts[0] == "tasks" or path.suffix in (".pyc", ".so"):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if re.search("accura", line, re.IGNORECASE):
                found.add((relative.as_posix(), line.strip()))
    assert found == ALLOWED, sorted(found - ALLOWED)
    assert COMPAT_METRICS == ("accuracy",)
