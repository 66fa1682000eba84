"""Lines of a play labelled by who speaks them: a text-classification data set from a script.

The script is in the tinyshakespeare layout: a speech starts with the speaker's name
alone on a line, ending in a colon (``ROMEO:``), and runs to the next blank line::

    First Citizen:
    Before we proceed any further, hear me speak.

    All:
    Speak, speak.

A name line counts only at the start of a speech (at the top of the file or after a
blank line), so a spoken line that happens to end in a colon stays a spoken line.
Every non-blank line of a speech is one example; its label is the index of its speaker
among the chosen speakers: the ``k`` who speak the most lines (ties by name), or the
speakers named, in the order named. Lines of other speakers are left out.

The examples stay in file order, so ``--partition contiguous`` gives each node one
stretch of the script. tinyshakespeare has no act or scene markers, so there is no
natural one-node-per-act split; ``contiguous`` is the nearest (the file is a run of
plays, so a node holds a few plays and mostly their own speakers), and ``dirichlet``
gives label skew.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from potluck.core.errors import ConfigError, DataError

NAME_LINE = re.compile(r"^([A-Z][A-Za-z' -]*):$")


@dataclass(frozen=True)
class SpeakerLines:
    """``lines[i]`` is said by ``speakers[labels[i]]``; lines in file order."""

    lines: tuple[str, ...]
    labels: np.ndarray
    speakers: tuple[str, ...]


def spoken_lines(text: str) -> list[tuple[str, str]]:
    """Every (speaker, line) of the script, in file order; lines stripped of spaces."""
    out: list[tuple[str, str]] = []
    speaker: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            speaker = None
            continue
        match = NAME_LINE.match(line) if speaker is None else None
        if match:
            speaker = match.group(1).strip()
        elif speaker is not None:
            out.append((speaker, line))
    return out


def parse_names(names: str) -> tuple[str, ...]:
    """Speaker names from a comma-separated setting (``"ROMEO, JULIET"``); empty: none."""
    return tuple(n.strip() for n in names.split(",") if n.strip())


def choose_speakers(counts: Counter[str], k: int, names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` when given (each must speak), else the ``k`` speakers with the most lines."""
    if names:
        absent = [n for n in names if n not in counts]
        if absent:
            raise DataError(f"speaker {absent[0]!r} says no line in the text; the most frequent are "
                            f"{', '.join(n for n, _ in _ranked(counts)[:8])}")
        if len(set(names)) != len(names):
            raise ConfigError(f"speaker names must differ, got {', '.join(names)}")
        return names
    if len(counts) < k:
        raise DataError(f"the text has {len(counts)} speaker(s) with lines; {k} were asked for (speakers={k})")
    return tuple(n for n, _ in _ranked(counts)[:k])


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def speaker_lines(text: str, *, k: int, names: tuple[str, ...] = (), per_speaker: int = 0) -> SpeakerLines:
    """The chosen speakers' lines (see the module docstring), at most ``per_speaker`` each.

    A cap keeps lines spread evenly over each speaker's lines in the file (no seed
    needed), not the first ones. ``per_speaker = 0`` keeps them all. Fewer than two
    speakers is a ConfigError; a text without speeches is a DataError.
    """
    if (len(names) or k) < 2:
        raise ConfigError(f"a speaker classifier needs at least 2 speakers, got {len(names) or k}")
    said = spoken_lines(text)
    if not said:
        raise DataError("no speeches found: expected a speaker's name alone on a line ending in ':' (e.g. ROMEO:)")
    chosen = choose_speakers(Counter(s for s, _ in said), k, names)
    label_of = {name: i for i, name in enumerate(chosen)}
    positions = np.array([i for i, (s, _) in enumerate(said) if s in label_of], dtype=np.int64)
    labels = np.array([label_of[said[i][0]] for i in positions], dtype=np.int64)
    if per_speaker > 0:
        kept = [_spread(np.flatnonzero(labels == c), per_speaker) for c in range(len(chosen))]
        keep = np.sort(np.concatenate(kept))
        positions, labels = positions[keep], labels[keep]
    return SpeakerLines(tuple(said[i][1] for i in positions), labels, chosen)


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``indices``, evenly spaced over them, first and last included."""
    if len(indices) <= count:
        return indices
    picked: np.ndarray = indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(np.int64))]
    return picked
