"""Where a PyTorch task computes: ``device`` and ``amp`` fit settings, resolved once.

    device   "auto" (CUDA when present, else CPU) | "cpu" | "cuda" | "cuda:N"
    amp      "auto" (bf16 autocast on a CUDA device that supports it, else off) | "off" | "bf16"

Mixed precision runs only on CUDA: on CPU, bf16 autocast is slower for the small models
potluck ships and would change results, so ``amp="bf16"`` with a CPU device is a
ConfigError rather than a silent no-op. Weights stay float32 (autocast casts per
operation), so parameters travel and aggregate in float32 wherever training ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from potluck.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "off", "bf16")


def check_device_name(name: object) -> str:
    """``name`` if it is a device setting potluck understands; ConfigError otherwise."""
    if not isinstance(name, str) or not (name in DEVICES or _is_cuda_index(name)):
        raise ConfigError(f"fit setting device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")
    return name


def check_amp_name(name: object) -> str:
    if name not in AMP_MODES:
        raise ConfigError(f"fit setting amp must be one of {', '.join(AMP_MODES)}, got {name!r}")
    return str(name)


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting; ConfigError when CUDA is asked for but absent."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"fit setting device={name}: this machine has no CUDA device (torch sees none)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"fit setting device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for full float32."""
    check_amp_name(amp)
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ConfigError("fit setting amp=bf16 needs a CUDA device (set device=cuda or amp=off)")
    if not torch.cuda.is_bf16_supported():
        if amp == "auto":
            return None
        raise ConfigError("fit setting amp=bf16: this CUDA device does not support bfloat16")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; nothing at all when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def _is_cuda_index(name: str) -> bool:
    head, sep, index = name.partition(":")
    return head == "cuda" and sep == ":" and index.isdigit()
