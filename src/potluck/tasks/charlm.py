"""A small decoder-only transformer for character or byte language modelling.

Pre-norm blocks (``x + attn(ln(x))``, ``x + mlp(ln(x))``), causal multi-head attention
through ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` (flash or
memory-efficient kernels on CUDA), a GELU MLP of width 4·d, a final LayerNorm and an
untied output head. Positions are ``learned`` (an embedding per position, in the
``state_dict``) or ``rope`` (rotary, applied to queries and keys; the tables are
non-persistent buffers, so they never travel). Weights start GPT-2 style: N(0, 0.02),
zero biases, output projections scaled by 1/√(2·depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from potluck.core.errors import ConfigError
from potluck.tasks.settings import is_int

POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class LMShape:
    """The model's shape: vocabulary size, context length (tokens), width, depth, heads."""

    vocab_size: int
    context: int = 64
    width: int = 64
    depth: int = 2
    heads: int = 4
    positions: str = "learned"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "width", "depth", "heads"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"charlm setting {name} must be an integer ≥ 1, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"charlm width {self.width} must be a multiple of heads {self.heads}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"charlm positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.positions == "rope" and (self.width // self.heads) % 2:
            raise ConfigError(f"rope needs an even head width, got width/heads = {self.width // self.heads}")


def rope_tables(context: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (context, head_dim) for the rotate-half form of RoPE."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (batch, heads, T, head_dim) ``x`` by position; tables cut to T rows."""
    t = x.shape[-2]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:t].to(x.dtype) + rotated * sin[:t].to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, shape: LMShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.qkv = nn.Linear(shape.width, 3 * shape.width)
        self.proj = nn.Linear(shape.width, shape.width)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, shape: LMShape) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(shape.width)
        self.attn = CausalSelfAttention(shape)
        self.ln2 = nn.LayerNorm(shape.width)
        self.mlp = nn.Sequential(nn.Linear(shape.width, 4 * shape.width), nn.GELU(), nn.Linear(4 * shape.width, shape.width))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope)
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """Token ids (batch, T ≤ context) → next-token logits (batch, T, vocab_size)."""

    def __init__(self, shape: LMShape) -> None:
        super().__init__()
        self.shape = shape
        self.tokens = nn.Embedding(shape.vocab_size, shape.width)
        self.positions = nn.Embedding(shape.context, shape.width) if shape.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.depth))
        self.ln_f = nn.LayerNorm(shape.width)
        self.head = nn.Linear(shape.width, shape.vocab_size, bias=False)
        if shape.positions == "rope":
            cos, sin = rope_tables(shape.context, shape.width // shape.heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for out in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(out.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.shape.depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.shape.context:
            raise ValueError(f"a sequence of {t} tokens is longer than the context ({self.shape.context})")
        x = self.tokens(ids)
        rope = None
        if self.positions is not None:
            x = x + self.positions(torch.arange(t, device=ids.device))
        else:
            rope = (self.rope_cos, self.rope_sin)
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]
