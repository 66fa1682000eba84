"""Issue 14, finding 1, measured: a push from a certificate that is not on the allow-list
costs the server no payload memory. The server runs in its own process so its resident
memory can be read from /proc; the attacker streams three pushes of 64 MiB of chunks each
(a server that buffered them before checking the sender would grow by about 192 MiB)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

from fleet_kit import client
from potluck.core.digests import payload_digest
from potluck.core.params import Params
from potluck.transport import frames
from potluck.transport.fleet_messages import JoinInfo
from potluck.transport.v1 import fleet_pb2 as pb

MODEL = Params.from_arrays({"w": np.zeros((4, 3), np.float32)})  # the server's, in its own process
PUSH = 64 * 2**20
CHUNK = 2**20

SERVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    import numpy as np
    from potluck.backends.fleet import FleetPool
    from potluck.core.params import Params
    from potluck.transport.certs import load_pem_bundle
    from potluck.transport.server import ServerOptions, start_server
    model = Params.from_arrays({"w": np.zeros((4, 3), np.float32)})
    pool = FleetPool(run_id="r1", model_id="m", schema=model.schema, data_info_json=b"{}", allow={"a"},
                     require_signatures=False)  # the default payload cap: 2 GiB
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(Path(sys.argv[1]), "server"),
                                ServerOptions(chunk_bytes=2**20), bulk="off")
    print(port, flush=True)
    sys.stdin.readline()  # the test asks for the refusal counts, then the server stops
    print(dict(pool.rejections), flush=True)
    sys.stdin.readline()
    server.stop(0)
''')


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def parts(session: str):
    payload = memoryview(bytes(CHUNK))
    yield pb.ResultPart(header=pb.ResultHeader(session=session, instruction_id="i", round=1, num_examples=1,
                                               params_size=PUSH, params_blake3=payload_digest(b"x")))
    for offset in range(0, PUSH, CHUNK):
        yield frames.ChunkFrame(offset, payload)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
@pytest.mark.slow
def test_a_push_from_a_stranger_costs_the_server_no_payload_memory(tls):
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tls / "tls")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the server process did not start (exit {proc.poll()})"
        port = int(line)
        stranger = client(tls, f"127.0.0.1:{port}", "stranger")
        push = stranger.channel.stream_unary("/potluck.v1.Fleet/Push", request_serializer=frames.serialize,
                                             response_deserializer=pb.PushReply.FromString)
        with pytest.raises(grpc.RpcError):  # warm up: the first call's TLS and thread costs are not payload
            push(iter([next(parts("s"))]), timeout=60)
        before = rss_bytes(proc.pid)
        codes = []
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                push(parts("s"), timeout=120)
            codes.append(refused.value.code())
        grown = rss_bytes(proc.pid) - before
        assert grown < 32 * 2**20, f"server grew by {grown / 2**20:.0f} MiB"
        assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 3
        good = client(tls, f"127.0.0.1:{port}", "a")  # and it still serves a node on its list
        assert good.join(JoinInfo("a", "m", MODEL.schema_digest, 10)).session
        good.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert "'not_allowed': 4" in proc.stdout.readline()
        stranger.close()
    finally:
        if proc.poll() is None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
