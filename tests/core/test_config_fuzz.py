"""Settings under hostile input: a valid config or a ConfigError that names the key.

Arbitrary mappings (wrong types, unknown keys, NaN, huge and negative numbers, non-UTF-8
text, nested junk) and arbitrary TOML files must give either a config or a
:class:`ConfigError` whose one-line message names an offending key — never TypeError,
KeyError, ValueError, OverflowError or RecursionError. Regressions for each crash the
fuzzing found are at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.core.config import NodeConfig, ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLASSES = [SimulationConfig, ServerConfig, NodeConfig]
FIELDS = sorted({f.name for cls in CLASSES for f in dataclasses.fields(cls)})

ATOMS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-(2**64), 2**64), st.sampled_from([0, -1, 1, 2**63, 2**64, 10**400]),
    st.sampled_from([1, -1]).map(lambda sign: sign * 10**5000),  # (mapped: hypothesis cannot repr it either)
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0]),
    st.text(max_size=10),  # lone surrogates included
    st.sampled_from(["iid", "dirichlet", "127.0.0.1:1", "", "\udcff"]),
    st.dates(), st.binary(max_size=4),
)
VALUES = st.recursive(ATOMS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3), max_leaves=8)
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers(), st.none(), st.tuples(st.integers()))


def build(cls, values, source: str = "fuzz"):
    """The rule: a config, or a one-line ConfigError naming one of the keys given."""
    try:
        return cls.from_mapping(values, source=source)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{source}: ")
        assert "\n" not in message and len(message) < 1000
        named = [k for k in values if isinstance(k, str) and k in message]
        fields_named = [f for f in FIELDS if f in message]  # e.g. chunk_mb for max_message_mb
        assert named or fields_named, message
        return None


@FUZZ
@given(st.sampled_from(CLASSES), st.dictionaries(KEYS, VALUES, max_size=5))
def test_arbitrary_mappings_give_a_config_or_a_config_error_naming_a_key(cls, values):
    config = build(cls, values)
    if config is not None:
        assert cls.from_mapping(dataclasses.asdict(config)) == config


@FUZZ
@given(st.sampled_from(CLASSES), st.sampled_from(FIELDS), VALUES)
def test_one_bad_value_is_named_by_its_key(cls, key, value):
    known = {f.name for f in dataclasses.fields(cls)}
    required = {"server_address": "h:1", "node_id": "a", "data_path": "d"} if cls is NodeConfig else {}
    try:
        cls.from_mapping({**required, key: value}, source="f")  # a node's required settings given, or they fail first
    except ConfigError as exc:
        # The key itself, or the field its value is checked against (nodes → min_nodes).
        partner = {"nodes": "min_nodes", "max_message_mb": "chunk_mb"}.get(key, key)
        assert key in str(exc) or partner in str(exc), str(exc)
        if key not in known:
            assert str(exc).startswith(f"f: unknown setting {key!r}")


@FUZZ
@given(st.sampled_from(CLASSES), st.data())
def test_accepted_values_are_usable_downstream(cls, data):
    # Whatever is accepted is finite, within the wire's and the platform's limits.
    values = {f.name: data.draw(ATOMS) for f in dataclasses.fields(cls) if data.draw(st.booleans())}
    config = build(cls, values)
    if config is None:
        return
    for f in dataclasses.fields(cls):
        v = getattr(config, f.name)
        if isinstance(v, float):
            assert math.isfinite(v), f.name
        if isinstance(v, str):
            v.encode("utf-8")
    if isinstance(config, NodeConfig):
        assert config.server_address.strip() and config.node_id.strip() and config.data_path is not None
        assert int(config.chunk_mb * 2**20) >= 1 and 0.1 <= config.max_backoff
        return
    assert 0 <= config.seed < 2**63
    assert all(-(2**63) <= v < 2**63 for v in [*config.fit.values(), *config.strategy_options.values()]
               if isinstance(v, int))
    if isinstance(config, ServerConfig):
        assert int(config.chunk_mb * 2**20) >= 1 and int(config.max_message_mb * 2**20) < 2**31
        assert config.rounds < 2**32


TOML_PIECES = st.sampled_from([
    "nodes = 3\n", "rounds = -1\n", "fraction = nan\n", "fraction = inf\n", "seed = -5\n", "alpha = 1e999\n",
    "[fit]\n", "[strategy_options]\n", "epochs = 2\n", "x = [1, [2]]\n", "a.b.c = 1\n", "task = \"é\"\n",
    "[[fit]]\n", "nodes = 1979-05-27\n", "nodes = 0x7fffffffffffffff\n", "rounds = " + "9" * 5000 + "\n",
    "x = " + "[" * 3000 + "]" * 3000 + "\n", "y = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n",
    "bind = \"::\"\n", "chunk_mb = 1e-9\n", "max_message_mb = 1e300\n", "round_timeout = 1e12\n",
    "allow = [\"a\", 1]\n", "= 1\n", "\"\" = 1\n", "nodes = 3\nnodes = 4\n", "\ufeffnodes = 3\n",
])


@FUZZ
@given(st.sampled_from(CLASSES), st.one_of(
    st.lists(TOML_PIECES, max_size=5).map("".join),
    st.text(max_size=80),
    st.lists(TOML_PIECES | st.text(max_size=10), max_size=4).map("".join),
))
def test_arbitrary_toml_text_gives_a_config_or_a_config_error(tmp_path, cls, text):
    path = tmp_path / "c.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        cls.load(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


@FUZZ
@given(st.sampled_from(CLASSES), st.binary(max_size=60))
def test_arbitrary_file_bytes_give_a_config_or_a_config_error(tmp_path, cls, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    try:
        cls.load(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")


@FUZZ
@given(st.sampled_from(CLASSES), st.data())
def test_accepted_configs_survive_to_toml(cls, data):
    values = {f.name: data.draw(ATOMS) for f in dataclasses.fields(cls) if data.draw(st.booleans())}
    config = build(cls, values)
    if config is not None:
        again = cls.from_mapping(tomllib.loads(config.to_toml()))
        assert again == config


# -- regressions: each was a crash (the exception in the comment) before --------------------


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        # OverflowError: int too large to convert to float
        (SimulationConfig, {"fraction": 10**400}, r"fraction is too large for a number, got a 1329-bit integer"),
        # ValueError: Exceeds the limit (4300 digits) for integer string conversion (in repr)
        (SimulationConfig, {"task": 10**5000}, r"task must be a string, got a 16610-bit integer"),
        (SimulationConfig, {"nodes": -(10**5000)}, r"nodes must be a 64-bit integer .* got a negative 16610-bit integer"),
        (SimulationConfig, {"fit": {"x": [10**5000]}}, r"fit\.x must be .* got a list holding a huge integer"),
        # TypeError: '<' not supported between instances of 'str' and 'int' (sorting unknown keys)
        (SimulationConfig, {1: 2, "x": 3}, r"unknown setting 'x'"),
        # TypeError in to_toml later: tables had non-string keys
        (SimulationConfig, {"strategy_options": {1: 2}}, r"strategy_options keys must be strings, got 1"),
        # UnicodeEncodeError when the config is written to a run directory (argv decoded
        # with surrogateescape gives lone surrogates)
        (SimulationConfig, {"task": "\udcff"}, r"task must be valid UTF-8 text"),
        (SimulationConfig, {"fit": {"\udcff": 1}}, r"fit key must be valid UTF-8 text"),
        (ServerConfig, {"allow": ["a", "\udcff"]}, r"allow must be valid UTF-8 text"),
        # ValueError in numpy's default_rng (negative seed) at the first partition
        (SimulationConfig, {"seed": -1}, r"seed must be ≥ 0, got -1"),
        # OverflowError in to_toml (math.isfinite of a huge int) when the run directory is
        # written; and WireError at the server for table values beyond sint64
        (SimulationConfig, {"nodes": 10**400}, r"nodes must be a 64-bit integer .* got a 1329-bit integer"),
        (ServerConfig, {"seed": 2**63}, r"seed must be a 64-bit integer"),
        (ServerConfig, {"fit": {"epochs": 2**63}}, r"fit\.epochs must be a 64-bit integer"),
        # a message on two lines: table keys were shown raw
        (SimulationConfig, {"fit": {"a\nb": None}}, r"fit\['a\\nb'\] must be a number"),
        # OverflowError in the pools: an infinite or > threading.TIMEOUT_MAX wait
        (SimulationConfig, {"round_timeout": math.inf}, r"round_timeout must be in \(0, 2,592,000\]"),
        (ServerConfig, {"wait_for_nodes": 1e12}, r"wait_for_nodes must be in \(0, 2,592,000\]"),
        (ServerConfig, {"heartbeat_seconds": math.inf}, r"heartbeat_seconds must be"),
        # OverflowError: int(inf * MB) in apps/server.py
        (ServerConfig, {"max_payload_mb": math.inf}, r"max_payload_mb must be a finite number > 0, got inf"),
        (ServerConfig, {"max_message_mb": math.inf, "chunk_mb": 1.0}, r"max_message_mb must be in \(0, 2047\]"),
        # ValueError: range() arg 3 must not be zero (chunk_mb rounds down to 0 bytes)
        (ServerConfig, {"chunk_mb": 1e-9}, r"chunk_mb must be ≥ 0.0009765625 \(1 KiB\)"),
        # ValueError from protobuf: the round number is a uint32 on the wire
        (ServerConfig, {"rounds": 2**32}, r"rounds must be in \[1, 4294967295\]"),
    ],
)
def test_inputs_that_crashed_are_config_errors(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_mapping(values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"task = \"\xff\"\n", r"not UTF-8 text \(byte 8\)"),  # UnicodeDecodeError
        (("rounds = " + "9" * 5000).encode(), r"invalid TOML: .*4300 digits"),  # ValueError from int()
        (("x = " + "[" * 5000 + "]" * 5000).encode(), r"nested too deeply"),  # RecursionError
        (("x = " + "{a=" * 5000 + "1" + "}" * 5000).encode(), r"nested too deeply"),  # RecursionError
    ],
    ids=["not-utf8", "huge-int", "deep-array", "deep-table"],
)
def test_files_that_crashed_the_loader_are_config_errors(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        SimulationConfig.load(path)


def test_direct_construction_and_replace_check_types_and_names():
    # TypeError before: "'>=' not supported between instances of 'str' and 'int'", and
    # dataclasses.replace's TypeError for an unknown field.
    with pytest.raises(ConfigError, match="nodes must be an integer, got '3'"):
        SimulationConfig(nodes="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown setting 'nodez'"):
        SimulationConfig().replace(nodez=3)
    c = SimulationConfig(fraction=1)  # ints widen to floats however the config is made
    assert type(c.fraction) is float and type(c.replace(alpha=2).alpha) is float


def test_tables_are_copied_so_the_callers_cannot_leak_in():
    fit = {"epochs": 1}
    c = SimulationConfig(fit=fit)
    fit["epochs"] = 99
    assert c.fit == {"epochs": 1}


def test_dates_are_type_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"nodes must be an integer, got datetime\.date\(1979, 5, 27\)"):
        SimulationConfig.from_mapping({"nodes": datetime.date(1979, 5, 27)})
