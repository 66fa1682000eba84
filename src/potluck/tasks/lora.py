"""LoRA adapters (through the ``peft`` library) on a frozen base model: only adapters travel.

``add_lora(model, rank, alpha, targets, seed)`` injects rank-``rank`` adapters into the
model's ``targets`` linear layers in place (``peft.inject_adapter_in_model``) and freezes
everything else but ``also_train`` (a classifier's new head, in ``minilm-speaker``). The
task's parameters are then the adapter tensors (and that head) alone
(``trainable_params``): they are what nodes send and strategies aggregate, a tiny
fraction of the model. The base stays on every node as the checkpoint it was loaded
from (``load_base``, or the package that ships it), so every node must hold the same
base; the run's ``model.safetensors`` holds the adapters only.

``peft`` is imported only when LoRA is asked for (it pulls in ``transformers``, which
takes seconds to import): ``pip install 'potluck[lora]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from potluck.core.errors import ConfigError, DataError, PotluckError
from potluck.core.params import Params


def load_base(model: nn.Module, path: Path) -> None:
    """Load a full checkpoint (safetensors, as a run's ``model.safetensors``) into ``model``.

    DataError for a missing or unreadable file; SchemaMismatch when its tensors are not
    this model's (another width, depth or vocabulary).
    """
    from potluck.tasks.torch_task import load_params_into

    try:
        params = Params.decode(Path(path).read_bytes())
    except OSError as exc:
        raise DataError(f"cannot read the base checkpoint {path}: {exc.strerror}") from None
    except PotluckError as exc:
        raise DataError(f"the base checkpoint {path} is not a safetensors model: {exc}") from None
    load_params_into(model, params)


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int,
             also_train: Sequence[str] = ()) -> nn.Module:
    """``model`` with LoRA adapters on the ``targets`` linear layers; all else frozen but
    the parameters whose names start with one of ``also_train`` (a new head, say).

    Adapters start as peft does (A random, seeded; B zero), so the adapted model equals
    the base until it trains.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ConfigError(f"lora_rank needs the peft library: pip install peft ({exc})") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about a model without a HF config; ours has none by design
        adapted = inject_adapter_in_model(config, model)
    for name, p in adapted.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith(tuple(also_train)))
    return adapted


def trainable_params(model: nn.Module) -> Params:
    """The parameters that train (the adapters, and any ``also_train``), by name, in module order."""
    return Params.from_arrays(
        {n: p.detach().cpu().numpy() for n, p in model.named_parameters() if p.requires_grad}, copy=True
    )


def load_trainable(model: nn.Module, params: Params) -> None:
    """Copy ``params`` into the trainable parameters; SchemaMismatch if they differ."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = tuple((n, tuple(p.shape), str(p.dtype).replace("torch.", "")) for n, p in named)
    params.check_schema(expected, what="adapter parameters for the model")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only numpy arrays, only read
        for name, p in named:
            p.copy_(torch.from_numpy(params[name]))
