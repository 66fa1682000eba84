"""Fixtures of the peer tests (a project CA with peer certificates, identities); test modules load them with pytest_plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from potluck.peer.identity import issue_peer, load_identity
from potluck.transport.certs import init_ca


@pytest.fixture(scope="module")
def peer_tls(tmp_path_factory) -> Path:
    tls = tmp_path_factory.mktemp("tls")
    init_ca(tls)
    for i in range(4):
        issue_peer(tls, f"peer-{i}")
    return tls


@pytest.fixture(scope="module")
def identities(peer_tls, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    return [load_identity(peer_tls, f"peer-{i}", keys / f"peer-{i}.pem") for i in range(4)]
