"""A run's optional protections, built from its settings the same way for every command.

Node-side update stages (clipping, noise, compression, masking; see
``strategies/updates.py``) and round guards (budgets that end a run cleanly; see
``runtime/coordinator.RoundGuard``). ``potluck simulate`` and ``potluck server`` both
build theirs here, so a setting means the same thing in simulation and deployment.
Each kind of protection contributes through its own function below.
"""

from __future__ import annotations

from typing import Any

from potluck.runtime.coordinator import RoundGuard
from potluck.strategies.updates import UpdatePipeline, UpdateStage


def update_pipeline(config: Any) -> UpdatePipeline:
    """The stages nodes apply to their updates, in order: privacy first, then compression."""
    stages: list[UpdateStage] = [*_privacy_stages(config), *_compression_stages(config)]
    return UpdatePipeline(stages)


def round_guards(config: Any) -> list[RoundGuard]:
    """Guards checked before every round (e.g. the privacy budget)."""
    return [*_privacy_guards(config)]


def _privacy_stages(config: Any) -> list[UpdateStage]:
    return []


def _privacy_guards(config: Any) -> list[RoundGuard]:
    return []


def _compression_stages(config: Any) -> list[UpdateStage]:
    return []
