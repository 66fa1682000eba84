"""Coverage-guided fuzzing of potluck's decoders with atheris (libFuzzer for Python).

The rule each target checks: no input makes a decoder raise anything but potluck's own
errors (the ``PotluckError`` tree), and what a decoder accepts is right (an oracle per
target). Any other exception, or a broken oracle, is a crash: the summary names it, and
atheris prints the traceback and writes the input to ``crash-<sha1>`` in the working
directory (replay it with ``--target T crash-<sha1>``).

    pip install -e '.[fuzz]'                                    # atheris: optional
    python benchmarks/fuzz/fuzz_decoders.py --target params --seconds 60
    python benchmarks/fuzz/fuzz_decoders.py --target config --runs 200000
    python benchmarks/fuzz/fuzz_decoders.py --target all --seconds 60   # each in turn

Targets:

=========  ========================================================================
params     ``Params.decode`` on bytes (seeded with valid encodings); oracle: whatever
           it accepts, ``safetensors.numpy.load`` reads as the same arrays, and it
           re-encodes to an equal Params
chunks     ``Reassembly`` fed a stream built from the input; oracle: accepted iff the
           offsets are right and the bytes have the announced size and digest
convert    protobuf messages parsed from the input through ``convert.*_from_proto``,
           and Python values (huge ints, any text) through ``*_to_proto``
config     the input as a TOML file for ``SimulationConfig`` / ``ServerConfig.load``,
           and as a mapping for ``from_mapping``; errors must be one line
frames     the hand-framed chunk parser against protobuf's own parse (a parse error
           there is protobuf's ``DecodeError``, which gRPC reports for us)
=========  ========================================================================

Without ``--keep-going`` the first crash stops the run (as libFuzzer does); with it,
each distinct crash (by exception type and innermost line) is saved once to
``crash-<target>-<n>`` and fuzzing goes on until the budget is spent. Extra arguments
after ``--`` go to libFuzzer (e.g. ``-- -max_len=8192``); a directory given with
``--corpus`` is read and grown.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["potluck", "tomllib"]):  # coverage feedback from these
    import tomllib

    from potluck.core.config import ServerConfig, SimulationConfig
    from potluck.core.digests import payload_digest
    from potluck.core.errors import PotluckError
    from potluck.core.params import Params, ParamsKind
    from potluck.transport import convert, frames
    from potluck.transport.chunks import PayloadError, Reassembly
    from potluck.transport.v1 import fleet_pb2 as pb

from google.protobuf.message import DecodeError
from safetensors.numpy import load as lib_load

TARGETS = ("params", "chunks", "convert", "config", "frames")


class OracleBroken(AssertionError):
    """A decoder accepted something it should not have, or returned the wrong thing."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise OracleBroken(what)


# -- params --------------------------------------------------------------------------------


def params_one(data: bytes) -> str:
    if data[:1] == b"\x01":
        # Framed for the fuzzer: the header JSON up to its last "}", then the body; the
        # 8-byte length is written here, so mutating the JSON does not break the framing.
        end = data.rfind(b"}") + 1
        data = max(0, end - 1).to_bytes(8, "little") + data[1:end] + data[end:]
    elif data[:1] == b"\x00":
        data = data[1:]  # raw bytes, length field and all
    try:
        p = Params.decode(data)
    except PotluckError as exc:
        return type(exc).__name__
    lib = lib_load(data)  # must not raise: decode may be stricter than the library, never laxer
    _check(sorted(lib) == sorted(p), f"arrays {sorted(p)} but the library reads {sorted(lib)}")
    for name, arr in p.items():
        other = lib[name]
        _check(arr.dtype == other.dtype and arr.shape == other.shape and arr.tobytes() == other.tobytes(),
               f"array {name!r} differs from the library's")
    _check(Params.decode(p.encode()) == p, "decode(encode(p)) != p")
    return "accepted"


def params_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    seeds = [
        Params.from_arrays({"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.arange(3, dtype=np.int64)}),
        Params.from_arrays({"z": np.zeros((0, 4), np.float16), "m": np.array([True, False])}, ParamsKind.DELTA),
        Params.from_arrays({"é": np.uint8(7), "x.y": np.arange(4, dtype=np.uint64).reshape(2, 2)}),
    ]
    out = [b"\x00\x02\x00\x00\x00\x00\x00\x00\x00{}"]
    for p in seeds:
        data = p.encode()
        n = int.from_bytes(data[:8], "little")
        out += [b"\x00" + data, b"\x01" + data[8 : 8 + n].rstrip() + data[8 + n :]]
    return out


# Tokens for libFuzzer's mutator: the words a safetensors header is made of.
PARAMS_DICT = ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"potluck"', '"kind"', '"order"',
               '"full"', '"delta"', '"F32"', '"F16"', '"F64"', '"BF16"', '"BOOL"', '"U8"', '"I64"', '"U64"',
               '"C64"', '"F8_E4M3"', "[0,0]", "[]", "{}", "null", "9223372036854775808", "18446744073709551616",
               "1e999", "-1", "\\u0000", '\\"']


# -- chunks --------------------------------------------------------------------------------


def chunks_one(data: bytes) -> str:
    fdp = atheris.FuzzedDataProvider(data)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    size = [len(payload), len(payload) + 1, len(payload) - 1, 0, -1, 2**64][fdp.ConsumeIntInRange(0, 5)]
    digest = payload_digest(payload) if fdp.ConsumeProbability() < 0.8 else fdp.ConsumeUnicode(64)
    max_bytes = fdp.ConsumeIntInRange(0, 1024)
    stream: list[tuple[int | None, bytes]] = []
    position = 0
    while fdp.remaining_bytes() and len(stream) < 32:
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind <= 1:  # the next honest piece, with or without its offset
            piece = payload[position : position + fdp.ConsumeIntInRange(0, 64)]
            stream.append((position if kind == 0 else None, piece))
            position += len(piece)
        elif kind == 2:  # a piece from anywhere, claiming any offset
            start = fdp.ConsumeIntInRange(0, len(payload))
            piece = payload[start : start + fdp.ConsumeIntInRange(0, 64)]
            stream.append((fdp.ConsumeIntInRange(0, 2 * len(payload) + 2), piece))
        else:  # bytes of its own
            stream.append((None, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))))
    joined = b"".join(piece for _, piece in stream)
    pos, offsets_right = 0, True
    for offset, piece in stream:
        offsets_right &= offset is None or offset == pos
        pos += len(piece)
    valid = offsets_right and size <= max_bytes and len(joined) == size and payload_digest(joined) == digest
    try:
        assembly = Reassembly(size, digest, max_bytes)
        for offset, piece in stream:
            assembly.add(piece, offset)
        out = bytes(assembly.finish())
    except PayloadError as exc:
        _check(not valid, f"refused a valid stream: {exc}")
        return f"PayloadError({exc.reason})"
    _check(valid and out == joined, "accepted a stream that is not the announced payload")
    return "accepted"


# -- convert -------------------------------------------------------------------------------


def _value(fdp: atheris.FuzzedDataProvider) -> object:
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeBool()
    if kind == 1:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 20))  # up to 160-bit ints
    if kind == 2:
        return fdp.ConsumeFloat()
    if kind == 3:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 20))  # surrogates included
    if kind == 4:
        return fdp.ConsumeBytes(4)
    if kind == 5:
        return None
    return [fdp.ConsumeInt(2)]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def convert_one(data: bytes) -> str:
    if not data:
        return "empty"
    mode, raw = data[0] % 4, data[1:]
    try:
        if mode == 0:
            header = pb.InstructionHeader.FromString(raw)
            config = convert.config_from_proto(header.config)
            again = pb.InstructionHeader(config=convert.config_to_proto(config)).SerializeToString()
            back = convert.config_from_proto(pb.InstructionHeader.FromString(again).config)
            _check(back.keys() == config.keys() and all(_same(back[k], config[k]) for k in config),
                   "a config read from the wire does not survive being sent again")
        elif mode == 1:
            metrics = convert.metrics_from_proto(pb.ResultHeader.FromString(raw).metrics)
            _check(convert.metrics_to_proto(metrics).keys() == metrics.keys(), "metrics do not survive being sent")
        elif mode == 2:
            value = convert.scalar_from_proto(pb.Scalar.FromString(raw))
            _check(_same(convert.scalar_from_proto(convert.scalar_to_proto(value)), value), "scalar round trip")
        else:
            fdp = atheris.FuzzedDataProvider(raw)
            values = {fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8)): _value(fdp) for _ in range(3)}
            sent = pb.InstructionHeader(config=convert.config_to_proto(values)).SerializeToString()  # type: ignore[arg-type]
            back = convert.config_from_proto(pb.InstructionHeader.FromString(sent).config)
            _check(all(_same(back[str(k)], v) for k, v in values.items()), "config round trip")
            metrics = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            pb.ResultHeader(metrics=convert.metrics_to_proto(metrics)).SerializeToString()
    except DecodeError:
        return "DecodeError"  # protobuf's own refusal of the bytes, before convert runs
    except PotluckError as exc:
        return type(exc).__name__
    return "accepted"


# -- config --------------------------------------------------------------------------------

_CONFIG_FILE = Path(tempfile.mkdtemp(prefix="potluck-fuzz-")) / "fuzz.toml"


def _check_message(exc: PotluckError, source: str) -> None:
    message = str(exc)
    _check("\n" not in message and len(message) < 1000, f"not a one-line message: {message[:200]!r}")
    _check(message.startswith(f"{source}: "), f"the message does not name {source}: {message[:200]!r}")


def config_one(data: bytes) -> str:
    if not data:
        return "empty"
    cls = (SimulationConfig, ServerConfig)[data[0] & 1]
    if data[0] & 2:  # the rest as a TOML file
        _CONFIG_FILE.write_bytes(data[1:])
        try:
            cls.load(_CONFIG_FILE)
        except PotluckError as exc:
            _check_message(exc, str(_CONFIG_FILE))
            return type(exc).__name__
        return "accepted"
    fdp = atheris.FuzzedDataProvider(data[1:])  # the rest as a mapping of plain values
    names = [f for f in cls.__dataclass_fields__]
    values: dict[object, object] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        key = fdp.PickValueInList(names) if fdp.ConsumeProbability() < 0.8 else fdp.ConsumeUnicode(6)
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind == 0:
            values[key] = _value(fdp)
        elif kind == 1:
            values[key] = fdp.PickValueInList([math.nan, math.inf, -math.inf, 0, -1, 2**64, 10**400, 1e-300])
        elif kind == 2:
            values[key] = {fdp.ConsumeUnicode(4): _value(fdp)}
        else:
            values[key] = [fdp.ConsumeUnicode(4), _value(fdp)]
    try:
        config = cls.from_mapping(values, source="fuzz")
    except PotluckError as exc:
        _check_message(exc, "fuzz")
        return type(exc).__name__
    _check(cls.from_mapping(tomllib.loads(config.to_toml())) == config, "to_toml does not reload equal")
    return "accepted"


def config_seeds() -> list[bytes]:
    text = SimulationConfig(fit={"epochs": 2}, strategy_options={"mu": 0.1}).to_toml().encode()
    return [b"\x02" + text, b"\x03" + ServerConfig().to_toml().encode(), b"\x02nodes = 3\n[fit]\nlr = 0.1\n"]


# -- frames --------------------------------------------------------------------------------


def frames_one(data: bytes) -> str:
    if not data:
        return "empty"
    message_type = (pb.ResultPart, pb.InstructionPart)[data[0] & 1]
    raw = data[1:]
    try:
        part = frames.parser(message_type)(raw)
    except DecodeError:
        try:
            message_type.FromString(raw)
        except DecodeError:
            return "DecodeError"
        raise OracleBroken("the frame parser refused what protobuf parses") from None
    if isinstance(part, frames.ChunkFrame):
        reference = message_type.FromString(raw)  # protobuf must agree with the fast path
        _check(reference.WhichOneof("part") == "chunk", "a frame where protobuf sees no chunk")
        _check(part.offset == reference.chunk.offset and bytes(part.data) == reference.chunk.data,
               f"frame offset/data differ from protobuf's ({part.offset} vs {reference.chunk.offset})")
        _check(frames.serialize(frames.ChunkFrame(part.offset, bytes(part.data))) == bytes(raw)
               or reference.SerializeToString() != bytes(raw), "a canonical frame does not re-serialize")
        return "frame"
    return "protobuf"


def frames_seeds() -> list[bytes]:
    out = []
    for offset, data in [(0, b"abc"), (2**20, b"x" * 100), (0, b"")]:
        framed = frames.serialize(frames.ChunkFrame(offset, data))
        out += [b"\x00" + framed, b"\x01" + framed]
    return out + [b"\x00" + pb.ResultPart(header=pb.ResultHeader(session="s")).SerializeToString()]


ONE: dict[str, Callable[[bytes], str]] = {
    "params": params_one, "chunks": chunks_one, "convert": convert_one, "config": config_one, "frames": frames_one,
}
DICTS = {
    "params": PARAMS_DICT,
    "config": ["nodes", "rounds", "fraction", "seed", "chunk_mb", "[fit]", "[strategy_options]", "nan", "inf",
               "1979-05-27", '"""', "'''", "0x", "1e999", "[[", "{a=", "\\u"],
}
SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "params": params_seeds, "config": config_seeds, "frames": frames_seeds,
    "chunks": lambda: [bytes(range(256))], "convert": lambda: [b"\x03" + bytes(range(64))],
}


# -- driver --------------------------------------------------------------------------------


def _signature(exc: BaseException) -> str:
    """Where and what: the innermost frame and the exception type, so repeats count once."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else "?"
    return f"{type(exc).__name__} at {where}"


def fuzz(target: str, seconds: float, runs: int, corpus: str | None, libfuzzer_args: list[str],
         keep_going: bool = False) -> None:
    one = ONE[target]
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: dict[str, tuple[int, str]] = {}  # signature -> (count, first message and input)
    start = time.monotonic()

    def summary() -> str:
        elapsed = time.monotonic() - start
        n = sum(outcomes.values()) + sum(c for c, _ in crashes.values())
        counts = ", ".join(f"{k}={v:,}" for k, v in outcomes.most_common())
        lines = [f"{target}: {n:,} executions in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f}/s); "
                 f"crashes: {len(crashes)} distinct; outcomes: {counts}"]
        lines += [f"  crash {sig} (×{count:,}): {first}" for sig, (count, first) in crashes.items()]
        return "\n".join(lines)

    def test_one_input(data: bytes) -> None:
        try:
            outcomes[one(data)] += 1
        except Exception as exc:  # a crash: not one of potluck's errors, or a broken oracle
            sig = _signature(exc)
            count, first = crashes.get(sig, (0, f"{type(exc).__name__}: {str(exc)[:160]} on {data[:160]!r}"))
            crashes[sig] = (count + 1, first)
            if not keep_going:
                print("\n" + summary(), flush=True)
                raise  # atheris prints the traceback and writes the input to crash-<sha1>
            if count == 0:
                name = f"crash-{target}-{len(crashes)}"
                Path(name).write_bytes(data)
                print(f"\n{name}: {sig}: {first}", flush=True)
        if time.monotonic() - start >= seconds or sum(outcomes.values()) >= runs:
            print("\n" + summary(), flush=True)
            os._exit(1 if crashes else 0)

    if corpus is None:
        corpus = tempfile.mkdtemp(prefix=f"potluck-fuzz-{target}-")
    for i, seed in enumerate(SEEDS[target]()):
        (Path(corpus) / f"seed-{i}").write_bytes(seed)
    argv = [sys.argv[0], f"-max_total_time={int(seconds) + 30}", "-rss_limit_mb=4096", "-timeout=20"]
    if target in DICTS:
        words = Path(corpus).parent / f"potluck-{target}.dict"
        words.write_text("".join(f"{json.dumps(w)}\n" for w in DICTS[target]), encoding="utf-8")
        argv.append(f"-dict={words}")
    argv += [*libfuzzer_args, corpus]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def replay(target: str, paths: list[str]) -> int:
    """Run saved inputs (e.g. crash files) once each; non-zero if any still crashes."""
    failed = 0
    for path in paths:
        try:
            print(f"{path}: {ONE[target](Path(path).read_bytes())}")
        except Exception as exc:  # noqa: BLE001 - reporting every crash is the point
            failed += 1
            print(f"{path}: CRASH {type(exc).__name__}: {exc}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget per target (default 60)")
    parser.add_argument("--runs", type=int, default=10**12, help="execution budget per target")
    parser.add_argument("--corpus", help="a corpus directory to read and grow (default: a fresh one, seeded)")
    parser.add_argument("--keep-going", action="store_true",
                        help="record each distinct crash (crash-<target>-<n>) and go on fuzzing")
    parser.add_argument("replay", nargs="*", help="inputs to run once instead of fuzzing (e.g. crash-<sha1>)")
    args, extra = parser.parse_known_args()
    libfuzzer_args = [a for a in extra if a != "--"]
    if args.replay:
        sys.exit(replay(args.target, args.replay))
    if args.target != "all":
        fuzz(args.target, args.seconds, args.runs, args.corpus, libfuzzer_args, args.keep_going)
        return
    lines, status = [], 0
    for target in TARGETS:  # one process each: atheris fuzzes one function per process
        cmd = [sys.executable, __file__, "--target", target, "--seconds", str(args.seconds), "--runs", str(args.runs),
               *(["--keep-going"] if args.keep_going else []), *libfuzzer_args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        out = done.stdout.splitlines()
        at = max((i for i, line in enumerate(out) if line.startswith(f"{target}: ")), default=None)
        lines += out[at:] if at is not None else [f"{target}: no summary (exit {done.returncode}): {done.stderr[-500:]}"]
        status |= done.returncode != 0
    print("\n".join(lines))
    sys.exit(status)


if __name__ == "__main__":
    main()
