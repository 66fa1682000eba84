"""Text for language models: a vocabulary, a text file cut into token blocks, and groups.

A text becomes a :class:`~potluck.tasks.data.dataset.Dataset` whose rows are blocks of
``context + 1`` token ids (``x``, int32): a model reads the first ``context`` tokens
and predicts the last ``context``. Consecutive blocks overlap by one token, so every
token of the text but the first is predicted exactly once. ``y`` is all zeros (a text
has no classes: the held-out split is a random sample of blocks).

Vocabularies:

    byte   the UTF-8 bytes, 256 tokens; any text, and every node agrees without looking
    char   the distinct characters of the whole file, sorted by code point; smaller, but
           nodes agree only when their files hold the same characters

Groups (for ``--partition natural``): a regular expression whose first capture group
names the owner of the text that follows a match, up to the next match; for a play,
``^([A-Z][A-Za-z ]*):$`` gives one group per speaker. Each group's passages are joined
in file order and cut into blocks on their own, so no block mixes two owners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data.dataset import Dataset

VOCABS = ("byte", "char")


@dataclass(frozen=True)
class Vocabulary:
    """``kind`` is ``byte`` or ``char``; ``chars`` the sorted characters of a char vocabulary."""

    kind: str
    chars: str = ""

    @classmethod
    def for_text(cls, kind: str, text: str) -> Vocabulary:
        if kind == "byte":
            return cls("byte")
        if kind == "char":
            if not text:
                raise DataError("a char vocabulary needs some text; the file is empty")
            return cls("char", "".join(sorted(set(text))))
        raise ConfigError(f"vocab must be one of {', '.join(VOCABS)}, got {kind!r}")

    @property
    def size(self) -> int:
        return 256 if self.kind == "byte" else len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32); a character outside a char vocabulary is a DataError."""
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as exc:
            raise DataError(f"character {exc.args[0]!r} is not in this run's char vocabulary") from None

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text for ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        values = [int(i) for i in ids]
        if any(not 0 <= i < self.size for i in values):
            raise DataError(f"token ids must be in [0, {self.size}), got {min(values)}..{max(values)}")
        if self.kind == "byte":
            return bytes(values).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in values)


def read_text(path: Path | None) -> str:
    """The UTF-8 text of a file; DataError for a missing, unreadable or non-UTF-8 file."""
    if path is None:
        raise DataError("a language-model task trains on a text file: pass --data-path FILE")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such text file" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (bad byte at offset {exc.start:,})") from None
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror}") from None


def read_blocks(path: Path, vocab: Vocabulary, context: int) -> Dataset:
    """Blocks already cut (an ``.npz`` with ``x``: one row of ``context + 1`` token ids per
    block, as ``potluck up`` writes each node's share), with ``groups`` if present."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array 'x' of token blocks; the arrays present are: {', '.join(z.files) or 'none'}")
            x, groups = z["x"], (z["groups"] if "groups" in z.files else None)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    if x.ndim != 2 or x.shape[1] != context + 1 or x.dtype.kind not in "iu":
        raise DataError(f"{path}: x must be integer blocks of {context + 1} tokens (context={context}), got {x.dtype} {x.shape}")
    if len(x) and (int(x.min()) < 0 or int(x.max()) >= vocab.size):
        raise DataError(f"{path}: token ids must be in [0, {vocab.size}) for the {vocab.kind} vocabulary")
    return Dataset(x.astype(np.int32), np.zeros(len(x), dtype=np.int64), groups, str(path))


def cut_blocks(ids: np.ndarray, context: int) -> np.ndarray:
    """Rows of ``context + 1`` tokens starting every ``context`` tokens; a short tail is dropped."""
    if context < 1:
        raise ConfigError(f"context must be at least 1, got {context}")
    count = max((len(ids) - 1) // context, 0)
    if count == 0:
        return np.zeros((0, context + 1), dtype=np.int32)
    starts = np.arange(count)[:, None] * context
    return np.ascontiguousarray(ids[starts + np.arange(context + 1)[None, :]], dtype=np.int32)


def group_passages(text: str, pattern: str) -> dict[str, str]:
    """Each owner's passages joined in file order, owners keyed by the regex's first group.

    Text before the first match belongs to no one and is left out. A pattern that does
    not compile or has no capture group is a ConfigError; one that never matches is a
    DataError.
    """
    try:
        regex = re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise ConfigError(f"group pattern {pattern!r} is not a regular expression: {exc}") from None
    if regex.groups < 1:
        raise ConfigError(f"group pattern {pattern!r} needs a capture group naming the owner, e.g. ^([A-Z]+):$")
    matches = list(regex.finditer(text))
    if not matches:
        raise DataError(f"group pattern {pattern!r} matches nowhere in the text")
    passages: dict[str, list[str]] = {}
    ends = [m.start() for m in matches[1:]] + [len(text)]
    for match, end in zip(matches, ends, strict=True):
        owner = (match.group(1) or "").strip()
        passages.setdefault(owner, []).append(text[match.start():end])
    return {owner: "".join(parts) for owner, parts in passages.items()}


def text_dataset(text: str, vocab: Vocabulary, context: int, *, group_pattern: str | None = None,
                 source: str = "<text>") -> Dataset:
    """Blocks of the whole text, or of each group's passages (``groups`` set) with a pattern.

    Owners whose passages are shorter than one block contribute nothing. Fewer than two
    blocks in all is a DataError naming the sizes.
    """
    if group_pattern is None:
        x = cut_blocks(vocab.encode(text), context)
        groups = None
    else:
        cut = [(owner, cut_blocks(vocab.encode(part), context)) for owner, part in sorted(group_passages(text, group_pattern).items())]
        kept = [(owner, blocks) for owner, blocks in cut if len(blocks)]
        x = np.concatenate([b for _, b in kept]) if kept else np.zeros((0, context + 1), dtype=np.int32)
        groups = np.array([owner for owner, b in kept for _ in range(len(b))], dtype=str)
    if len(x) < 2:
        raise DataError(f"{source}: {len(text):,} characters give {len(x)} block(s) of {context + 1} tokens; "
                        "need at least 2 (use a longer text or a smaller context)")
    return Dataset(x, np.zeros(len(x), dtype=np.int64), groups, source)
