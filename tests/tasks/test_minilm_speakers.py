"""Lines of a play labelled by speaker (tasks/speakers.py), against hand-counted scripts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.speakers import choose_speakers, parse_names, speaker_lines, spoken_lines

SCRIPT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
Hear me now:

All:
Resolved. resolved.

MENENIUS:
What work's, my countrymen, in hand?
Where go you with bats and clubs?
Speak, I pray you.
"""


def test_every_line_of_a_speech_is_its_speakers():
    said = spoken_lines(SCRIPT)
    assert said == [
        ("First Citizen", "Before we proceed any further, hear me speak."),
        ("All", "Speak, speak."),
        ("First Citizen", "You are all resolved rather to die than to famish?"),
        ("First Citizen", "Hear me now:"),  # ends in ':' inside a speech: a spoken line, not a name
        ("All", "Resolved. resolved."),
        ("MENENIUS", "What work's, my countrymen, in hand?"),
        ("MENENIUS", "Where go you with bats and clubs?"),
        ("MENENIUS", "Speak, I pray you."),
    ]


def test_the_most_frequent_speakers_are_chosen_ties_by_name():
    # MENENIUS 3 lines, First Citizen 3, All 2: the tie goes by name ('First Citizen' < 'MENENIUS')
    got = speaker_lines(SCRIPT, k=2)
    assert got.speakers == ("First Citizen", "MENENIUS")
    assert got.lines[:3] == ("Before we proceed any further, hear me speak.",
                             "You are all resolved rather to die than to famish?", "Hear me now:")
    assert got.labels.tolist() == [0, 0, 0, 1, 1, 1]  # file order kept; All left out


def test_named_speakers_in_the_order_named():
    got = speaker_lines(SCRIPT, k=2, names=parse_names(" MENENIUS, All "))
    assert got.speakers == ("MENENIUS", "All")
    assert got.labels.tolist() == [1, 1, 0, 0, 0]
    assert got.lines[0] == "Speak, speak."


def test_a_cap_keeps_lines_spread_over_the_text():
    text = "".join(f"A:\nline a{i}\n\nB:\nline b{i}\n\n" for i in range(10))
    got = speaker_lines(text, k=2, per_speaker=4)
    assert got.lines == ("line a0", "line b0", "line a3", "line b3", "line a6", "line b6", "line a9", "line b9")
    assert np.bincount(got.labels).tolist() == [4, 4]
    assert speaker_lines(text, k=2, per_speaker=50).lines == speaker_lines(text, k=2).lines


def test_bad_choices_are_named():
    with pytest.raises(DataError, match="speaker 'JULIET' says no line.*First Citizen, MENENIUS, All"):
        speaker_lines(SCRIPT, k=2, names=("All", "JULIET"))
    with pytest.raises(DataError, match="3 speaker.*5 were asked"):
        speaker_lines(SCRIPT, k=5)
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        speaker_lines(SCRIPT, k=1)
    with pytest.raises(ConfigError, match="must differ"):
        choose_speakers(Counter({"A": 1, "B": 2}), 2, ("A", "A"))
    with pytest.raises(DataError, match="no speeches found"):
        speaker_lines("just some prose\nwithout any speaker\n", k=2)
