"""(c) Many lightweight nodes joined to one server over mutual TLS.

N nodes (default 200) run as asyncio tasks in this one process, each with its own
certificate and gRPC channel; they answer every instruction at once with a small
update (no training), so the figures are the server's cost per node. The server is a
real `potluck server` process; its peak RSS is sampled while the rounds run.

    python benchmarks/many_nodes.py --nodes 200 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
from _measure import median, table

from potluck.core.digests import payload_digest, settings_digest, update_statement
from potluck.core.params import Params, ParamsKind
from potluck.ledger.signing import derived_key, public_bytes
from potluck.tasks.builtin import load_digits
from potluck.transport import convert
from potluck.transport.certs import init_ca, issue_node, issue_server, load_pem_bundle
from potluck.transport.fleet_messages import PROTOCOL
from potluck.transport.v1 import fleet_pb2 as pb
from potluck.transport.v1 import fleet_pb2_grpc as pb_grpc


async def node(address: str, tls: Path, node_id: str, stop: asyncio.Event) -> int:
    bundle = load_pem_bundle(tls, "node", node_id)
    creds = grpc.ssl_channel_credentials(bundle.ca, bundle.key, bundle.cert)
    key = derived_key(0, node_id)  # updates are signed, as `potluck node` signs them
    answered = 0
    async with grpc.aio.secure_channel(address, creds) as channel:
        stub = pb_grpc.FleetStub(channel)
        probe = await stub.Join(pb.JoinRequest(node_id=node_id, task_name="digits", num_examples=10, protocol=PROTOCOL))
        welcome = await stub.Join(pb.JoinRequest(node_id=node_id, task_name="digits", schema_digest=probe.schema_digest,
                                                 num_examples=10, protocol=PROTOCOL, signing_key=public_bytes(key)))
        while not stop.is_set():
            parts = [p async for p in stub.Pull(pb.PullRequest(session=welcome.session, wait_seconds=2.0))]
            if not parts:
                if (await stub.Heartbeat(pb.HeartbeatRequest(session=welcome.session))).run_finished:
                    break
                continue
            header = parts[0].header
            if header.kind == pb.EVALUATE:  # an evaluation carries figures, not a payload
                await stub.Push(iter([pb.ResultPart(header=pb.ResultHeader(
                    session=welcome.session, instruction_id=header.instruction_id, round=header.round,
                    num_examples=10, loss=1.0, run_id=header.run_id))]))
                answered += 1
                continue
            model = Params.decode(b"".join(p.chunk.data for p in parts[1:]))
            update = Params.from_arrays({k: np.full_like(v, 1e-3) for k, v in model.items()}, ParamsKind.DELTA).encode()
            digest = payload_digest(update)
            statement = update_statement(header.run_id, header.round, digest, 10,
                                         settings_digest(convert.config_from_proto(header.config)))
            result = pb.ResultHeader(session=welcome.session, instruction_id=header.instruction_id, round=header.round,
                                     num_examples=10, params_size=len(update), params_blake3=digest,
                                     run_id=header.run_id, signature=key.sign(statement))
            await stub.Push(iter([pb.ResultPart(header=result), pb.ResultPart(chunk=pb.Chunk(offset=0, data=update))]))
            answered += 1
    return answered


async def fleet(address: str, tls: Path, n: int) -> list[int]:
    stop = asyncio.Event()
    return await asyncio.gather(*(node(address, tls, f"n{i:04d}", stop) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tls = root / "tls"
        init_ca(tls)
        issue_server(tls, ["127.0.0.1"])
        for i in range(opts.nodes):
            issue_node(tls, f"n{i:04d}")
        data = load_digits()
        np.savez(root / "test.npz", x=data.x[:300], y=data.y[:300])
        server = subprocess.Popen(
            [sys.executable, "-m", "potluck.cli", "server", "--bind", "127.0.0.1:0", "--port-file", str(root / "port"),
             "--tls-dir", str(tls), "--run-dir", str(root / "run"), "--data-path", str(root / "test.npz"),
             "--rounds", str(opts.rounds), "--min-nodes", str(opts.nodes), "--quorum", "1.0"],
            stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"))
        try:
            while not (root / "port").exists() or not (root / "port").read_text().strip():
                if server.poll() is not None:
                    raise SystemExit((root / "server.log").read_text())
                time.sleep(0.05)
            address = f"127.0.0.1:{(root / 'port').read_text().strip()}"
            peak = [0]

            def sample() -> None:
                proc = psutil.Process(server.pid)
                while server.poll() is None:
                    try:
                        peak[0] = max(peak[0], proc.memory_info().rss)
                    except psutil.Error:
                        break
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            answered = asyncio.run(fleet(address, tls, opts.nodes))
            total = time.perf_counter() - started
            server.wait(60)
            lines = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
        finally:
            if server.poll() is None:
                server.kill()
    rows = [[f"{opts.nodes} nodes, {opts.rounds} rounds", total, median([r["seconds"] for r in lines]),
             min(r["num_nodes"] for r in lines), peak[0] / 2**20, sum(answered)]]
    print(table(["workload", "total s", "median round s", "min nodes per round", "server peak RSS MB",
                 "results pushed"], rows))


if __name__ == "__main__":
    main()
