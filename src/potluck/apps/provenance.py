"""The provenance ledger wired into a run: keys, the run's :class:`Ledger`, where files go.

=========================  ==========================================================
server signing key         ``<tls-dir>/ledger-server.key``; with ``--insecure``,
                           ``<run-dir>/ledger-server.key`` (Ed25519, mode 0600)
node signing key           ``<key-dir>/<node-id>.signing.key``; ``--key-dir`` defaults
                           to ``<tls-dir>/nodes``, beside the node's certificate
node's ledger state        ``<key-dir>/<node-id>.ledger-state.json`` (the last head
                           it verified, the updates it sent)
server's node registry     ``<run-dir>/node-keys.json`` (node id → key, certificate)
simulation keys            derived from the seed (:func:`potluck.ledger.signing.derived_key`)
=========================  ==========================================================
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from potluck.core.files import atomic_write
from potluck.core.params import Params
from potluck.ledger.chain import Ledger, RunStart
from potluck.ledger.signing import derived_key, load_or_create_key
from potluck.runtime.rundir import RunDirectory
from potluck.updates.pipeline import UpdatePipeline

SERVER_KEY_NAME = "ledger-server.key"
REGISTRY_NAME = "node-keys.json"
RUN_ID_NAME = "run-id"


def server_key_path(tls_dir: str, run_dir: str, insecure: bool) -> Path:
    return Path(run_dir if insecure else tls_dir) / SERVER_KEY_NAME


def node_key_dir(tls_dir: str, key_dir: str | None) -> Path:
    return Path(key_dir) if key_dir else Path(tls_dir) / "nodes"


def run_start(*, task: str, initial: Params, strategy: str, strategy_options: Mapping[str, Any],
              updates: UpdatePipeline, config_toml: str, simulation: bool) -> RunStart:
    return RunStart(task=task, schema_digest=initial.schema_digest, strategy=strategy,
                    strategy_options=dict(strategy_options), updates=updates.to_config(),
                    config_sha256=hashlib.sha256(config_toml.encode()).hexdigest(), simulation=simulation)


def attach_simulation_ledger(run_dir: RunDirectory, seed: int, start: RunStart) -> Ledger:
    """Simulation: the server's key is derived from the seed, like the virtual nodes'."""
    ledger = Ledger(derived_key(seed, "server"), start, run_id=f"sim-{secrets.token_hex(6)}")
    run_dir.attach_ledger(ledger)
    return ledger


def attach_server_ledger(run_dir: RunDirectory, key_path: Path, start: RunStart) -> Ledger:
    """A deployed run: the server's key file (made on first start), and its run id.

    The run id is kept in ``run-id`` too; a resumed run takes it from ledger entry 0.
    """
    marker = run_dir.path / RUN_ID_NAME
    run_id = marker.read_text().strip() if marker.exists() else ""
    if not run_id:
        run_id = secrets.token_hex(8)
        run_dir.path.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, f"{run_id}\n".encode())
    ledger = Ledger(load_or_create_key(key_path), start, run_id=run_id)
    run_dir.attach_ledger(ledger)
    return ledger
