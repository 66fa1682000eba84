"""SGD (with momentum, weight decay) and Adam as plain tensor updates.

``torch.optim`` imports ``torch._dynamo`` the first time an optimizer is created,
which costs 1–2 s per process: more than a whole simulated run of a small model. These
updates follow ``torch.optim.SGD`` and ``torch.optim.Adam`` (default options, no
``nesterov``/``amsgrad``) step for step; the tests check them against torch.optim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class LocalSGD:
    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad
            if self.weight_decay:
                d = d.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self._buffers[i]
                if buf is None:
                    buf = self._buffers[i] = d.clone()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = buf
            p.add_(d, alpha=-self.lr)


class LocalAdam:
    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self._m = [torch.zeros_like(p) for p in self.params]
        self._v = [torch.zeros_like(p) for p in self.params]
        self._t = [0] * len(self.params)  # per parameter, as torch counts: skipped steps don't count

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for i, (p, m, v) in enumerate(zip(self.params, self._m, self._v, strict=True)):
            if p.grad is None:
                continue
            self._t[i] += 1
            correction1 = 1 - b1 ** self._t[i]
            correction2_sqrt = math.sqrt(1 - b2 ** self._t[i])
            g = p.grad if not self.weight_decay else p.grad.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / correction1)


class LocalAdamW(LocalAdam):
    """AdamW as ``torch.optim.AdamW``: weight decay decoupled from the gradient.

    Each step first shrinks a decayed parameter by ``lr * weight_decay``, then takes an
    Adam step without decay. ``decay`` says per parameter whether it decays (commonly
    matrices do, biases and norms don't); default all. ``lr`` may be changed between
    steps (a schedule sets it).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay: Iterable[bool] | None = None,
    ) -> None:
        listed = list(params)
        flags = [True] * len(listed) if decay is None else list(decay)
        kept = [(p, f) for p, f in zip(listed, flags, strict=True) if p.requires_grad]
        super().__init__([p for p, _ in kept], lr=lr, betas=betas, eps=eps, weight_decay=0.0)
        self.decoupled_decay = weight_decay
        self._decays = [f for _, f in kept]

    @torch.no_grad()
    def step(self) -> None:
        if self.decoupled_decay:
            for p, decays in zip(self.params, self._decays, strict=True):
                if decays and p.grad is not None:
                    p.mul_(1 - self.lr * self.decoupled_decay)
        super().step()


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """The learning rate at ``step`` (0-based) of ``total``: a linear warm-up over ``warmup``
    steps to ``peak``, then a cosine decay to ``floor * peak`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup - 1, 1)
    progress = min((step - warmup) / span, 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
