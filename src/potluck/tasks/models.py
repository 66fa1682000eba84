"""Small reference networks for the built-in tasks."""

from __future__ import annotations

import math

from torch import nn

from potluck.core.errors import TaskError
from potluck.tasks.protocol import DataInfo


def mlp(info: DataInfo, hidden: tuple[int, ...] = (64,)) -> nn.Module:
    """Flatten, then ``hidden`` ReLU layers, then one logit per class."""
    width = math.prod(info.input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, info.num_classes))
    return nn.Sequential(*layers)


def small_cnn(info: DataInfo, channels: tuple[int, int] = (16, 32)) -> nn.Module:
    """Two conv–ReLU–pool stages and a linear head, for (H, W) or (H, W, C) images.

    Channels-last input is moved to channels-first inside the model, so data loaders
    keep the natural (N, H, W, C) layout.
    """
    shape = info.input_shape
    if len(shape) not in (2, 3) or min(shape[:2]) < 4:
        raise TaskError(f"the cnn task needs images of shape (H, W) or (H, W, C) with H, W ≥ 4, got {shape}")
    in_ch = 1 if len(shape) == 2 else shape[2]
    h, w = shape[0] // 4, shape[1] // 4
    return nn.Sequential(
        _ToChannelsFirst(len(shape)),
        nn.Conv2d(in_ch, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels[1] * h * w, info.num_classes),
    )


class _ToChannelsFirst(nn.Module):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x.unsqueeze(1) if self.rank == 2 else x.permute(0, 3, 1, 2)
