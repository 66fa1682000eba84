"""Addresses: HOST:PORT or a ConfigError naming the setting; a port that cannot be
listened at is a TransportError, never grpc's RuntimeError or a bare OSError."""

from __future__ import annotations

import re
import socket

import pytest

from fleet_kit import MODEL
from potluck.backends.fleet import FleetPool
from potluck.core.errors import ConfigError, TransportError
from potluck.transport.addresses import bare_host, split_address
from potluck.transport.bulk import BulkServer
from potluck.transport.certs import load_pem_bundle
from potluck.transport.client import FleetClient
from potluck.transport.server import bulk_address_for, start_server


@pytest.mark.parametrize(
    ("address", "parts"),
    [("server.example.org:7450", ("server.example.org", 7450)), ("10.0.0.5:0", ("10.0.0.5", 0)),
     ("[::1]:7000", ("[::1]", 7000)), ("[::]:65535", ("[::]", 65535)), (":7450", ("", 7450))],
)
def test_good_addresses_split_into_host_and_port(address, parts):
    assert split_address(address) == parts


@pytest.mark.parametrize(
    ("address", "message"),
    [("server.example.org", "is not HOST:PORT"), ("host:http", "is not HOST:PORT"), ("host:70000", "is not HOST:PORT"),
     ("host:-1", "is not HOST:PORT"), ("::1:7000", "write an IPv6 host in brackets"),
     ("[::1:7000", "write an IPv6 host in brackets"), ("my host:7000", "the host holds white space"), ("", "is not")],
)
def test_malformed_addresses_are_config_errors_naming_the_setting(address, message):
    with pytest.raises(ConfigError, match=rf"server address {re.escape(repr(address))}.*{message}"):
        split_address(address, "server address")


def test_bare_host_drops_only_ipv6_brackets():
    assert (bare_host("[::1]"), bare_host("10.0.0.1"), bare_host("example.org")) == ("::1", "10.0.0.1", "example.org")


def test_a_client_for_a_malformed_address_is_refused_at_once():
    with pytest.raises(ConfigError, match="server address 'localhost' is not HOST:PORT"):
        FleetClient("localhost", None)


def test_a_closed_client_says_so_instead_of_grpcs_value_error():
    c = FleetClient("127.0.0.1:1", None)
    c.close()
    with pytest.raises(TransportError, match="was closed by this node"):
        c.heartbeat("s")


def pool() -> FleetPool:
    return FleetPool(run_id="r1", model_id="m", schema=MODEL.schema, data_info_json=b"{}")


def test_a_server_address_that_is_malformed_or_taken_is_a_specific_error(tls):
    bundle = load_pem_bundle(tls / "tls", "server")
    with pytest.raises(ConfigError, match="bind address '127.0.0.1' is not HOST:PORT"):
        start_server(pool(), "127.0.0.1", bundle)
    with pytest.raises(ConfigError, match="bulk lane address 'nowhere' is not HOST:PORT"):
        bulk_address_for("0.0.0.0:7450", 7450, "nowhere")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match=f"cannot listen at 127.0.0.1:{port}"):
            start_server(pool(), f"127.0.0.1:{port}", bundle, bulk="off")
        with pytest.raises(TransportError, match=f"cannot listen for the bulk lane at 127.0.0.1:{port}"):
            BulkServer(pool(), f"127.0.0.1:{port}", bundle)  # type: ignore[arg-type]
