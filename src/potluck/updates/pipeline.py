"""Update stages: what a node does to its delta before sending it, and what the server undoes.

A run chooses its stages on the server — clipping, noise, quantisation, sparsification,
masking — and they travel to the nodes inside the fit config, under keys that start
with ``update.``, so every node applies the same pipeline whichever backend carries the
instruction. Stages run in the run's order on the node (typically clip → noise →
compress) and are undone in reverse on the server, which turns each result back into
a DELTA with the model's schema before the aggregator sees it.

A stage may keep per-node state between rounds (error feedback keeps the residual);
the node runner holds one ``state`` dict per node and passes it in.

>>> UpdatePipeline(()).to_config()
{}
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from potluck.core.errors import ConfigError, ParamsError
from potluck.core.messages import Scalar
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.core.seeds import rng_for

PREFIX = "update."
_STAGES_KEY = PREFIX + "stages"
Schema = tuple[SchemaEntry, ...]


class UpdateStage(abc.ABC):
    """One step of the pipeline. Subclasses set ``name`` and register with :func:`register`."""

    name: ClassVar[str]

    def settings(self) -> dict[str, Scalar]:
        """This stage's options, as sent to nodes (``update.<name>.<option>``)."""
        return {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Scalar]) -> UpdateStage:
        """The stage a node builds from what :meth:`settings` sent. Raise ConfigError
        for unknown or invalid options."""
        if settings:
            raise ConfigError(f"update stage {cls.name} takes no options, got {sorted(settings)}")
        return cls()

    @abc.abstractmethod
    def encode(self, update: Params, state: dict[str, Any], rng: np.random.Generator) -> Params:
        """Node side: transform ``update`` (a DELTA). ``state`` persists across this node's rounds."""

    def decode(self, wire: Params, schema: Schema) -> Params:
        """Server side: undo :meth:`encode`, whose input had ``schema`` (identity for clip/noise).
        Raise ParamsError for a result this stage cannot have produced."""
        return wire

    def wire_schema(self, schema: Schema) -> Schema:
        """The schema of what :meth:`encode` sends for a model of ``schema``."""
        return schema


STAGES: dict[str, type[UpdateStage]] = {}


def register(cls: type[UpdateStage]) -> type[UpdateStage]:
    """Class decorator: make a stage available by its ``name``."""
    STAGES[cls.name] = cls
    return cls


class UpdatePipeline:
    """The stages of one run, in order."""

    def __init__(self, stages: Sequence[UpdateStage]) -> None:
        self.stages = tuple(stages)

    def __bool__(self) -> bool:
        return bool(self.stages)

    def to_config(self) -> dict[str, Scalar]:
        """Fit-config entries that let a node rebuild this pipeline (empty when there are no stages)."""
        if not self.stages:
            return {}
        out: dict[str, Scalar] = {_STAGES_KEY: ",".join(s.name for s in self.stages)}
        for stage in self.stages:
            out.update({f"{PREFIX}{stage.name}.{k}": v for k, v in stage.settings().items()})
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Scalar]) -> tuple[UpdatePipeline, dict[str, Scalar]]:
        """The pipeline described in ``config`` and the rest of it (the Task's own settings)."""
        rest = {k: v for k, v in config.items() if not k.startswith(PREFIX)}
        names = config.get(_STAGES_KEY, "")
        if not isinstance(names, str):
            raise ConfigError(f"{_STAGES_KEY} must be a comma-separated string, got {names!r}")
        stages = []
        for name in filter(None, names.split(",")):
            if name not in STAGES:
                raise ConfigError(f"unknown update stage {name!r}; this node knows: {', '.join(sorted(STAGES))}")
            own = f"{PREFIX}{name}."
            settings = {k[len(own):]: v for k, v in config.items() if k.startswith(own)}
            stages.append(STAGES[name].from_settings(settings))
        known = {_STAGES_KEY} | {k for k in config if any(k.startswith(f"{PREFIX}{s.name}.") for s in stages)}
        stray = sorted(k for k in config if k.startswith(PREFIX) and k not in known)
        if stray:
            raise ConfigError(f"update setting {stray[0]!r} belongs to no stage of this run")
        return cls(stages), rest

    def encode(self, update: Params, state: dict[str, Any], seed: int) -> Params:
        """Node side: run every stage; each gets its own slice of ``state`` and its own RNG."""
        for stage in self.stages:
            update = stage.encode(update, state.setdefault(stage.name, {}), rng_for(seed, "update", stage.name))
        return update

    def decode(self, wire: Params, schema: Schema) -> Params:
        """Server side: undo the stages in reverse, then check the result fits the model."""
        inputs = [schema]  # the schema each stage was given on the node
        for stage in self.stages:
            inputs.append(stage.wire_schema(inputs[-1]))
        wire.check_schema(inputs[-1], what="encoded update")
        for stage, given in zip(reversed(self.stages), reversed(inputs[:-1])):
            wire = stage.decode(wire, given)
        wire.check_schema(schema, what="decoded update")
        if wire.kind is not ParamsKind.DELTA:
            raise ParamsError("a decoded update must be a DELTA")
        return wire

    def wire_schema(self, schema: Schema) -> Schema:
        for stage in self.stages:
            schema = stage.wire_schema(schema)
        return schema
