"""Each command's configuration, composed of the sections in ``core/sections.py``.

Every field is declared once, in its section, with its type, default, rule, help text
and whether a resumed run may change it; a configuration only chooses its sections
and adds the rules that relate them. Every field is a TOML key of the same name
(``strategy_options`` and ``fit`` are TOML tables) and a flag of ``potluck <command>``
(``potluck.cli.options``); flags win over the file. Values are checked by type and
range with messages that name the file and the key; a strategy's options and the fit
settings are checked by their owners.

=================  =============================================================
SimulationConfig   ``potluck simulate``: task, round, federation, validation,
                   protections, monitoring
ServerConfig       ``potluck server``: task, round, protections, monitoring,
                   transport, fleet
NodeConfig         ``potluck node``: node, task, validation, node loop,
                   transport, monitoring
=================  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from potluck.core.errors import RunDirError
from potluck.core.protection_settings import COMPRESSIONS, DP_MODES, ProtectionSection
from potluck.core.sections import (
    ATTACKS,
    LOG_FORMATS,
    PARTITIONS,
    SECAGG_DROPOUT_AT,
    FederationSection,
    FleetSection,
    MonitoringSection,
    NodeLoopSection,
    NodeSection,
    RoundSection,
    TaskSection,
    TransportSection,
    ValidationSection,
)
from potluck.core.settings import Rule, Settings, check_rules, resumable_names, resume_conflicts, show

__all__ = [
    "ATTACKS", "COMPRESSIONS", "DP_MODES", "LOG_FORMATS", "PARTITIONS", "SECAGG_DROPOUT_AT", "SERVER_RUN_DIR",
    "NodeConfig", "ServerConfig", "SimulationConfig", "check_resume", "check_rules",
]

SERVER_RUN_DIR = "runs/server"  # a server started again without --run-dir resumes the run here


@dataclass(frozen=True)
class SimulationConfig(MonitoringSection, ProtectionSection, ValidationSection, FederationSection, RoundSection,
                       TaskSection):
    """All settings of ``potluck simulate`` (see ``potluck simulate --help``)."""

    def population(self) -> int:
        return self.nodes

    def _rules(self) -> list[Rule]:
        return [("min_nodes", self.min_nodes <= self.nodes, f"in [1, nodes={show(self.nodes)}]")]


@dataclass(frozen=True)
class ServerConfig(FleetSection, TransportSection, MonitoringSection, ProtectionSection, RoundSection, TaskSection):
    """All settings of ``potluck server`` (see ``potluck server --help``).

    ``data_path`` is held-out data the server evaluates on (and learns the model's input
    shape from); without it, a task with bundled data holds out ``test_fraction`` of it.
    """

    def population(self) -> int:
        """``dp_nodes`` when given, else ``min_nodes``: the nodes the server waits for."""
        return self.dp_nodes or self.min_nodes

    def _rules(self) -> list[Rule]:
        return [("dp_nodes", self.dp_nodes is None or self.dp_nodes >= self.min_nodes,
                 f"≥ min_nodes ({show(self.min_nodes)}); it defaults to min_nodes")]


@dataclass(frozen=True)
class NodeConfig(MonitoringSection, TransportSection, NodeLoopSection, ValidationSection, TaskSection, NodeSection):
    """All settings of ``potluck node`` (see ``potluck node --help``); the first three
    may be given by position: ``NodeConfig("server:7450", "site-a", "data.npz")``."""

    def _rules(self) -> list[Rule]:
        return [("data_path", self.data_path is not None, "set: the data this node trains on (--data-path)")]


def check_resume(stored: Settings, current: Settings, where: object) -> None:
    """RunDirError naming every setting a resumed run changed but may not.

    The one rule for ``simulate --resume`` and a restarted ``server``: a field declared
    ``resumable=True`` may change, no other may (``where``: the run directory)."""
    differ = resume_conflicts(stored, current)
    if differ:
        allowed = ", ".join(resumable_names(type(current)))
        raise RunDirError(f"{where} was started with other settings ({', '.join(differ)}); resume with the same "
                          f"settings, or another --run-dir (only {allowed} may change)")
