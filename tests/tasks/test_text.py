"""Text data for language models: vocabularies, blocks, groups, the contiguous split."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data.partition import contiguous, natural, partition
from potluck.tasks.text import Vocabulary, cut_blocks, group_passages, read_text, text_dataset

PLAY = """Preface, nobody's.
ALICE:
Hello there.

BOB:
Hi.

ALICE:
Again me, with a longer line.
"""


def test_byte_vocabulary_round_trips_any_text():
    vocab = Vocabulary.for_text("byte", "")
    text = "naïve – ünïcode ✓"
    ids = vocab.encode(text)
    assert vocab.size == 256 and ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert vocab.decode(ids) == text


def test_char_vocabulary_is_the_sorted_character_set():
    vocab = Vocabulary.for_text("char", "banana!")
    assert vocab.chars == "!abn" and vocab.size == 4
    assert vocab.encode("nab").tolist() == [3, 1, 2]
    assert vocab.decode([3, 1, 2]) == "nab"
    assert Vocabulary.for_text("char", "ananab!") == vocab  # order of the text does not matter


def test_vocabulary_errors_are_specific():
    with pytest.raises(DataError, match="'z' is not in"):
        Vocabulary.for_text("char", "abc").encode("abz")
    with pytest.raises(ConfigError, match="vocab must be one of byte, char"):
        Vocabulary.for_text("word", "abc")
    with pytest.raises(DataError, match=r"token ids must be in \[0, 3\)"):
        Vocabulary.for_text("char", "abc").decode([0, 5])


def test_blocks_predict_every_token_but_the_first_exactly_once():
    ids = np.arange(23, dtype=np.int32)
    blocks = cut_blocks(ids, 5)
    assert blocks.shape == (4, 6)  # (23 - 1) // 5 blocks; 2 tokens of tail dropped
    assert blocks[1].tolist() == [5, 6, 7, 8, 9, 10]
    targets = blocks[:, 1:].reshape(-1)
    assert targets.tolist() == list(range(1, 21))
    assert cut_blocks(ids[:5], 5).shape == (0, 6)


def test_group_passages_by_speaker_in_file_order():
    parts = group_passages(PLAY, r"^([A-Z]+):$")
    assert sorted(parts) == ["ALICE", "BOB"]
    assert parts["ALICE"] == "ALICE:\nHello there.\n\nALICE:\nAgain me, with a longer line.\n"
    assert parts["BOB"] == "BOB:\nHi.\n\n"


def test_group_pattern_errors():
    with pytest.raises(ConfigError, match="needs a capture group"):
        group_passages(PLAY, r"^[A-Z]+:$")
    with pytest.raises(ConfigError, match="not a regular expression"):
        group_passages(PLAY, r"^([A-Z+:$")
    with pytest.raises(DataError, match="matches nowhere"):
        group_passages(PLAY, r"^(CAROL):$")


def test_text_dataset_with_groups_keeps_owners_apart():
    data = text_dataset(PLAY, Vocabulary("byte"), 4, group_pattern=r"^([A-Z]+):$")
    alice = data.x[data.groups == "ALICE"]
    bob = data.x[data.groups == "BOB"]
    assert bytes(alice[0].astype(np.uint8).tolist()) == b"ALICE"
    assert bytes(bob[0].astype(np.uint8).tolist()) == b"BOB:\n"
    assert len(alice) == (len("ALICE:\nHello there.\n\nALICE:\nAgain me, with a longer line.\n") - 1) // 4
    parts = natural(data.groups, 2)
    assert {str(v) for v in np.unique(data.groups[parts[0]])} == {"ALICE"}
    assert (data.y == 0).all()


def test_text_too_short_is_a_data_error():
    with pytest.raises(DataError, match="give 1 block"):
        text_dataset("abcdefghij", Vocabulary("byte"), 8)


def test_read_text_errors(tmp_path):
    with pytest.raises(DataError, match="pass --data-path"):
        read_text(None)
    with pytest.raises(DataError, match="no such text file"):
        read_text(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8 text .bad byte at offset 2"):
        read_text(bad)


def test_contiguous_partition_gives_consecutive_runs():
    parts = contiguous(10, 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    data = text_dataset("x" * 200, Vocabulary("byte"), 10)
    assert [len(p) for p in partition(data, "contiguous", 4)] == [5, 5, 5, 4]
    with pytest.raises(DataError, match="cannot split 3 examples across 4 nodes"):
        contiguous(3, 4)
