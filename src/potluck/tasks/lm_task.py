"""The ``charlm`` task: a small transformer language model on any UTF-8 text file.

Settings come from the run's ``[fit]`` table (``-F key=value``). The first six shape
the data and the model (as do ``init_from`` and the LoRA settings), so they are fixed when the task is made (``potluck simulate``
and ``potluck server`` pass the run's fit settings); the rest apply to each round::

    vocab        byte | char                         byte
    context      tokens a block predicts              64
    width        model width d                        64
    depth        transformer blocks                   2
    heads        attention heads (divide width)       4
    positions    learned | rope                       learned
    init_from    a full charlm checkpoint to start from  ""  (none: a fresh seeded model)
    lora_rank    LoRA rank r; 0 trains the full model  0   (r > 0: only adapters travel)
    lora_alpha   LoRA scale numerator (scale α/r)      16.0
    lr           peak AdamW learning rate             0.003
    warmup       linear warm-up steps per round       10
    steps        local optimizer steps per round      50
    batch_size   blocks per step                      16
    weight_decay AdamW decay of matrices              0.01
    grad_clip    max global gradient norm (0: off)    1.0
    proximal_mu  FedProx μ (sent by the strategy)     0.0
    device       auto | cpu | cuda[:N]                auto
    amp          auto | off | bf16                    auto

Each round runs ``steps`` AdamW steps whose rate warms up linearly over ``warmup`` steps
and decays by a cosine to a tenth of ``lr``. Metrics: ``loss`` is the mean next-token
cross-entropy in nats over every predicted token, ``perplexity = exp(loss)`` is the
primary metric (lower is better). A uniform model over V tokens has perplexity V.

With ``lora_rank`` > 0 the base model (from ``init_from``, e.g. an earlier run's
``model.safetensors``) is frozen and LoRA adapters (``peft``) are trained on the
attention and MLP layers; the task's parameters are the adapters alone, so only they
travel and are aggregated (see tasks/lora.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
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
from potluck.tasks.charlm import CharTransformer, LMShape
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.devices import amp_dtype, autocast, check_amp_name, check_device_name, resolve_device
from potluck.tasks.lora import add_lora, load_base, load_trainable, trainable_params
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput, MetricSpec
from potluck.tasks.settings import check_known, is_int, is_number, settings_over
from potluck.tasks.text import VOCABS, Vocabulary, read_blocks, read_text, text_dataset
from potluck.tasks.torch_optim import LocalAdamW, warmup_cosine
from potluck.tasks.torch_task import load_params_into, params_from_module

PERPLEXITY = MetricSpec("perplexity", higher_is_better=False)
MODEL_KEYS = ("vocab", "context", "width", "depth", "heads", "positions", "init_from", "lora_rank", "lora_alpha")
LORA_TARGETS = ("qkv", "proj", "mlp.0", "mlp.2")
EVAL_BATCH = 256


@dataclass(frozen=True)
class LMSettings:
    vocab: str = "byte"
    context: int = 64
    width: int = 64
    depth: int = 2
    heads: int = 4
    positions: str = "learned"
    init_from: str = ""
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lr: float = 0.003
    warmup: int = 10
    steps: int = 50
    batch_size: int = 16
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    proximal_mu: float = 0.0
    device: str = "auto"
    amp: str = "auto"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def merged(self, config: Mapping[str, Any]) -> LMSettings:
        """These settings with ``config``'s known keys over them (others ignored), checked."""
        return settings_over(self, config).checked()

    def checked(self) -> LMSettings:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"charlm setting {name} must be {rule}, got {getattr(self, name)!r}")

        if self.vocab not in VOCABS:
            raise bad("vocab", " or ".join(VOCABS))
        for name in ("steps", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer ≥ 1")
        for name in ("warmup", "lora_rank"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer ≥ 0")
        if not isinstance(self.init_from, str):
            raise bad("init_from", "a path to a .safetensors checkpoint")
        if not is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise bad("lora_alpha", "a finite number > 0")
        for name in ("lr", "weight_decay", "grad_clip", "proximal_mu"):
            value = getattr(self, name)
            if not is_number(value) or value < 0 or (name == "lr" and value == 0):
                raise bad(name, "a finite number > 0" if name == "lr" else "a finite number ≥ 0")
        check_device_name(self.device)
        check_amp_name(self.amp)
        self.shape(1)  # the model settings' own checks
        return self

    def shape(self, vocab_size: int) -> LMShape:
        return LMShape(vocab_size, self.context, self.width, self.depth, self.heads, self.positions)


class CharLMTask:
    """A decoder-only transformer language model (see the module docstring).

    ``group_pattern`` is the regex that names each passage's owner for ``--partition
    natural`` (``potluck simulate --group-column REGEX``).
    """

    metric = PERPLEXITY

    def __init__(self, name: str = "charlm", settings: LMSettings | None = None, *,
                 group_pattern: str | None = None, num_threads: int | None = 1) -> None:
        self.name = name
        self.settings = (settings or LMSettings()).checked()
        self.group_pattern = group_pattern
        self.vocab: Vocabulary | None = Vocabulary("byte") if self.settings.vocab == "byte" else None
        self._num_threads = num_threads
        self._model: nn.Module | None = None
        self._device_setting = self.settings.device

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, group_pattern: str | None = None) -> CharLMTask:
        """A task shaped by a run's fit settings; unknown keys are left to check_fit_config."""
        return cls(settings=LMSettings().merged(options), group_pattern=group_pattern)

    def load_data(self, path: Path | None) -> Dataset:
        """Blocks of a UTF-8 text file, or blocks already cut (``.npz``, byte vocabulary only)."""
        if path is not None and Path(path).suffix == ".npz":
            if self.vocab is None:
                raise ConfigError(f"task {self.name}: blocks already cut ({path}) need vocab=byte (a char vocabulary comes from the text)")
            return read_blocks(Path(path), self.vocab, self.settings.context)
        text = read_text(path)
        self.vocab = Vocabulary.for_text(self.settings.vocab, text)
        return text_dataset(text, self.vocab, self.settings.context, group_pattern=self.group_pattern, source=str(path))

    def build(self, info: DataInfo, seed: int) -> Params:
        if self.vocab is None:
            raise TaskError(f"task {self.name}: a char vocabulary comes from the text: call load_data() before build()")
        if info.input_shape != (self.settings.context + 1,):
            raise ConfigError(f"task {self.name}: the data holds blocks of shape {info.input_shape}, "
                              f"this model reads context={self.settings.context} (+1 target): set the same context")
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        torch.manual_seed(seed)
        model: nn.Module = CharTransformer(self.settings.shape(self.vocab.size))
        s = self.settings
        if s.init_from:
            load_base(model, Path(s.init_from))
        if s.lora_rank > 0:
            model = add_lora(model, s.lora_rank, s.lora_alpha, LORA_TARGETS, seed)
        self._model = model
        return self._export(model)

    def _export(self, model: nn.Module) -> Params:
        """What travels: the adapters under LoRA, else the whole state_dict."""
        return trainable_params(model) if self.settings.lora_rank > 0 else params_from_module(model)

    def check_fit_config(self, config: ConfigDict) -> None:
        """ConfigError for an unknown or invalid setting, or a model setting this task was not built with."""
        check_known(self.name, config, LMSettings.keys())
        merged = self.settings.merged(config)
        changed = [k for k in MODEL_KEYS if getattr(merged, k) != getattr(self.settings, k)]
        if changed:
            raise ConfigError(f"task {self.name}: {changed[0]}={getattr(merged, changed[0])!r} shapes the model, "
                              f"which was made with {changed[0]}={getattr(self.settings, changed[0])!r}")
        self._device_setting = merged.device

    def _ready_model(self, params: Params, device: torch.device) -> nn.Module:
        if self._model is None:
            raise TaskError(f"task {self.name}: build() must be called before fit/evaluate/generate")
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
        blocks = _blocks(data, self.name)
        params_list = [p for p in model.parameters() if p.requires_grad]
        optimizer = LocalAdamW(params_list, lr=s.lr, weight_decay=s.weight_decay, decay=[p.ndim >= 2 for p in params_list])
        anchors = [p.detach().clone() for p in params_list] if s.proximal_mu > 0 else []
        batches = _batches(len(blocks), s.batch_size, torch.Generator().manual_seed(seed))
        total = 0.0
        for step in range(s.steps):
            optimizer.lr = warmup_cosine(step, s.steps, s.warmup, s.lr)
            batch = blocks[next(batches)].to(device, torch.long)
            optimizer.zero_grad()
            with autocast(device, precision):
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            if anchors:
                loss = loss + 0.5 * s.proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(params_list, anchors))
            loss.backward()
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params_list, s.grad_clip)
            optimizer.step()
            total += float(loss.detach())
        mean_loss = total / s.steps
        if not math.isfinite(mean_loss):
            raise NonFiniteError(f"task {self.name}: training loss became {mean_loss} (lower the lr?)")
        return FitOutput(self._export(model), len(blocks), {"train_loss": mean_loss})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        device = resolve_device(self._device_setting)
        model = self._ready_model(params, device)
        model.eval()
        blocks = _blocks(data, self.name)
        if len(blocks) == 0:
            raise TaskError(f"task {self.name}: cannot evaluate on an empty data set ({data.source})")
        loss_sum, tokens = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(blocks), EVAL_BATCH):
                batch = blocks[start:start + EVAL_BATCH].to(device, torch.long)
                logits = model(batch[:, :-1]).float()
                loss_sum += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
                tokens += batch[:, 1:].numel()
        loss = loss_sum / tokens
        return EvalOutput(loss, len(blocks), {"perplexity": math.exp(min(loss, 700.0))})

    def generate(self, params: Params, prompt: str, *, tokens: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
        """``prompt`` and ``tokens`` more sampled at ``temperature`` (0: always the likeliest)."""
        if self.vocab is None:
            raise TaskError(f"task {self.name}: load the run's text first (its char vocabulary)")
        if tokens < 0 or not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"generate needs tokens ≥ 0 and a temperature ≥ 0, got {tokens} and {temperature}")
        model = self._ready_model(params, resolve_device(self._device_setting))
        model.eval()
        ids = self.vocab.encode(prompt).tolist() or _start_ids(self.vocab)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        out: list[int] = []
        with torch.no_grad():
            for _ in range(tokens):
                window = torch.tensor([(ids + out)[-self.settings.context:]], dtype=torch.long)
                logits = model(window.to(next(model.parameters()).device))[0, -1].float().cpu()
                if temperature == 0:
                    out.append(int(logits.argmax()))
                else:
                    probs = torch.softmax(logits / temperature, dim=0)
                    out.append(int(torch.multinomial(probs, 1, generator=generator)))
        return prompt + self.vocab.decode(out)


def _start_ids(vocab: Vocabulary) -> list[int]:
    """What an empty prompt starts from: a newline where the vocabulary has one."""
    return vocab.encode("\n").tolist() if vocab.kind == "byte" or "\n" in vocab.chars else [0]


def _blocks(data: Dataset, task: str) -> torch.Tensor:
    x = np.asarray(data.x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise TaskError(f"task {task}: expected blocks of token ids, got {x.dtype} of shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of ``size`` indices, each pass over ``0..n-1`` in a fresh seeded order."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:size]
        pending = pending[size:]
