"""LocalSGD and LocalAdam against torch.optim.SGD and torch.optim.Adam (the oracle)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from potluck.tasks.torch_optim import LocalAdam, LocalSGD

STEPS = 5


def twin_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return copy.deepcopy(model), copy.deepcopy(model)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)) for _ in range(STEPS)]


def train(model: nn.Module, optimizer, data) -> None:
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


SGD_CASES = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "weight_decay": {"weight_decay": 0.01},
    "momentum+weight_decay": {"momentum": 0.9, "weight_decay": 0.01},
}


@pytest.mark.parametrize("options", SGD_CASES.values(), ids=SGD_CASES.keys())
def test_local_sgd_matches_torch_sgd(options):
    ours, theirs = twin_models()
    start = [p.detach().clone() for p in ours.parameters()]
    data = batches()
    train(ours, LocalSGD(ours.parameters(), lr=0.1, **options), data)
    train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, **options), data)
    assert_same_parameters(ours, theirs)
    # The comparison is not vacuous: the weights moved.
    assert any(not torch.equal(p, s) for p, s in zip(ours.parameters(), start, strict=True))


ADAM_CASES = {
    "defaults": {},
    "weight_decay": {"weight_decay": 0.01},
    "betas": {"betas": (0.5, 0.9), "eps": 1e-6},
}


@pytest.mark.parametrize("options", ADAM_CASES.values(), ids=ADAM_CASES.keys())
def test_local_adam_matches_torch_adam(options):
    ours, theirs = twin_models()
    start = [p.detach().clone() for p in ours.parameters()]
    data = batches()
    train(ours, LocalAdam(ours.parameters(), lr=0.01, **options), data)
    train(theirs, torch.optim.Adam(theirs.parameters(), lr=0.01, **options), data)
    assert_same_parameters(ours, theirs)
    assert any(not torch.equal(p, s) for p, s in zip(ours.parameters(), start, strict=True))


def test_zero_grad_clears_gradients():
    model, _ = twin_models()
    opt = LocalSGD(model.parameters(), lr=0.1)
    x, y = batches()[0]
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make", [lambda ps: LocalSGD(ps, lr=0.1, momentum=0.9), lambda ps: LocalAdam(ps, lr=0.1)],
                         ids=["sgd", "adam"])
def test_frozen_parameters_are_not_touched(make):
    model, _ = twin_models()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = make(model.parameters())
    assert all(p.requires_grad for p in opt.params) and len(opt.params) == 3
    train(model, opt, batches())
    assert torch.equal(model[0].weight, frozen)


class TwoHeads(nn.Module):
    """Head ``b`` only takes part from step 2 on, so early on its grads are None."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        return self.a(x) + self.b(x) if use_b else self.a(x)


@pytest.mark.parametrize(
    ("ours_cls", "theirs_cls", "options"),
    [
        (LocalSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
        (LocalAdam, torch.optim.Adam, {"lr": 0.05}),
        (LocalAdam, torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.01}),
    ],
    ids=["sgd", "adam", "adam+weight_decay"],
)
def test_parameters_without_grad_are_skipped_like_torch(ours_cls, theirs_cls, options):
    torch.manual_seed(3)
    ours = TwoHeads()
    theirs = copy.deepcopy(ours)
    b_start = ours.b.weight.detach().clone()
    o1, o2 = ours_cls(ours.parameters(), **options), theirs_cls(theirs.parameters(), **options)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4))
    for step in range(STEPS):
        for model, opt in ((ours, o1), (theirs, o2)):
            opt.zero_grad()
            model(x, use_b=step >= 2).pow(2).mean().backward()
            opt.step()
        if step < 2:
            # Skipped: not even weight decay moves a parameter without a gradient.
            assert torch.equal(ours.b.weight, b_start)
    assert not torch.equal(ours.b.weight, b_start)
    assert_same_parameters(ours, theirs)


def test_local_adamw_matches_torch_adamw_with_decay_on_matrices_only():
    from potluck.tasks.torch_optim import LocalAdamW

    ours, ref = twin_models()
    params = list(ours.parameters())
    mine = LocalAdamW(params, lr=0.01, weight_decay=0.1, decay=[p.ndim >= 2 for p in params])
    ref_params = list(ref.parameters())
    oracle = torch.optim.AdamW([{"params": [p for p in ref_params if p.ndim >= 2], "weight_decay": 0.1},
                                {"params": [p for p in ref_params if p.ndim < 2], "weight_decay": 0.0}], lr=0.01)
    train(ours, mine, batches())
    train(ref, oracle, batches())
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_schedule():
    from potluck.tasks.torch_optim import warmup_cosine

    lrs = [warmup_cosine(s, 12, 2, 1.0) for s in range(12)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)  # the floor, at the last step
    assert lrs[2 + 9 // 2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decays monotonically after warm-up
    assert warmup_cosine(0, 1, 0, 0.3) == pytest.approx(0.3)
