"""Tables with a size limit, for what a long-running server keeps per id or per reason.

A server runs for days and meets ids it cannot trust to be few (instruction ids, node
ids, refusal reasons from its servicer): every table it keeps for the whole run has a
cap here, so memory stays bounded whatever the nodes send.
"""

from __future__ import annotations

import collections

# Distinct refusal reasons a pool counts; the vocabulary (the pool's and the servicer's)
# is about 30 names, so the cap is only reached if a caller invents reasons.
MAX_REASONS = 64
OTHER_REASON = "other"


class RecentIds:
    """Up to ``cap`` ids, each with a short note; adding one more forgets the oldest.

    Adding an id already held moves it to the newest end. Lookups and additions are
    O(1) (a dict keeps insertion order).
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"a RecentIds table needs a cap of at least 1, got {cap}")
        self.cap = cap
        self._notes: dict[str, str] = {}

    def add(self, key: str, note: str = "") -> None:
        self._notes.pop(key, None)
        self._notes[key] = note
        while len(self._notes) > self.cap:
            del self._notes[next(iter(self._notes))]

    def note(self, key: str) -> str | None:
        """The note ``key`` was added with; None when it was never added or is forgotten."""
        return self._notes.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._notes

    def __len__(self) -> int:
        return len(self._notes)


class RejectionCounts(collections.Counter[str]):
    """Refusals by reason, for metrics and tests (``counts["late"]``).

    At most :data:`MAX_REASONS` keys: once ``MAX_REASONS - 1`` distinct reasons are
    held, a new one is counted as ``"other"``.
    """

    def note(self, reason: str) -> None:
        if reason not in self and len(self) >= MAX_REASONS - 1:
            reason = OTHER_REASON
        self[reason] += 1
