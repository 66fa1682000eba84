"""``potluck peer``: serverless DiLoCo training; ``peer up`` runs N peers here; ``peer cert`` issues one."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer

from potluck.cli.common import failures_as_exit_codes, parse_assignments
from potluck.cli.output import CommandOutput
from potluck.cli.signals import on_sigterm
from potluck.core.errors import ConfigError

HELP = """Train without a server: peers find each other through a DHT and average in groups (DiLoCo).

Each peer trains H inner epochs of its Task on its own data, then averages the change (the pseudo-gradient) with a group of peers found through a Kademlia DHT, over mutual TLS with the project CA, and takes a Nesterov outer step. Any running peer's DHT address can bootstrap the next one. See docs/peer.md.

Examples:

  potluck peer up --peers 3 --outer-steps 3

  potluck peer --peer-id a --task digits --data-path a.npz --tls-dir tls --bootstrap 10.0.0.5:7460
"""

app = typer.Typer(help=HELP, no_args_is_help=False, add_completion=False, pretty_exceptions_enable=False)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--bootstrap takes HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _line(record: dict[str, object]) -> str:
    loss = float(record["loss"])  # type: ignore[arg-type]
    metrics = record.get("metrics")
    extra = "".join(f"  {k} {float(v):.4f}" for k, v in metrics.items()) if isinstance(metrics, dict) else ""
    group = record.get("group") or []
    missing = f"  missing parts {record['missing_parts']}" if record.get("missing_parts") else ""
    named = ""
    for key in ("refused", "equivocators", "joined_from"):  # peers named by this step
        value = record.get(key)
        if value and isinstance(value, (dict, str)):
            named += f"  {key.replace('_', ' ')} {','.join(sorted(value)) if isinstance(value, dict) else value}"
    return (f"{record['peer']}  step {record['step']:>3}  loss {loss:.4f}{extra}  group {len(group)}"  # type: ignore[arg-type]
            f"{missing}  model {str(record['model_digest'])[:12]}{named}")


@app.callback(invoke_without_command=True)
def peer(
    ctx: typer.Context,
    peer_id: Optional[str] = typer.Option(None, help="This peer's id: the CN of tls/peers/ID.crt (`potluck peer cert ID`)."),
    task: str = typer.Option("digits", help="Built-in task or module:attribute."),
    data_path: Optional[Path] = typer.Option(None, help="This peer's data (default: the task's bundled data)."),
    tls_dir: Path = typer.Option(Path("tls"), help="Folder with ca.crt and peers/ID.crt, peers/ID.key."),
    bootstrap: Optional[list[str]] = typer.Option(None, metavar="HOST:PORT", help="DHT address of any running peer (repeatable); none: start a new swarm."),
    run_id: str = typer.Option("potluck", help="Names the swarm: peers only see records of the same run id."),
    run_dir: Optional[Path] = typer.Option(None, help="This peer's run directory; resumed if it holds a committed step.  [default: runs/peer-ID]"),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (lane and DHT)."),
    advertise: Optional[str] = typer.Option(None, help="Address to publish for others to dial.  [default: --host]"),
    port: int = typer.Option(0, min=0, max=65535, help="Lane (mutual TLS) port; 0: any free port."),
    dht_port: int = typer.Option(0, min=0, max=65535, help="DHT (UDP) port; 0: any free port."),
    outer_steps: int = typer.Option(10, help="Outer steps to run (DiLoCo rounds)."),
    inner_epochs: int = typer.Option(1, help="H: local epochs of the Task's optimizer per outer step."),
    outer_lr: float = typer.Option(0.7, help="Outer (Nesterov) learning rate."),
    outer_momentum: float = typer.Option(0.9, help="Outer Nesterov momentum, in [0, 1)."),
    group_size: int = typer.Option(8, help="Largest averaging group."),
    quantize: bool = typer.Option(False, "--quantize", help="Send pseudo-gradient chunks as 8-bit codes (stochastic rounding)."),
    averaging: str = typer.Option("mean", help="How a part's owner reduces the signed chunks: mean, median or trimmed."),
    trim: float = typer.Option(0.25, help="β of --averaging trimmed: the fraction dropped at each end."),
    ttl: float = typer.Option(6.0, help="Seconds a DHT record lives; re-published every ttl/3 (a dead peer ages out after this)."),
    deadline_floor: float = typer.Option(5.0, help="Shortest matchmaking / all-reduce deadline, seconds."),
    deadline_ceiling: float = typer.Option(60.0, help="Longest matchmaking / all-reduce deadline, seconds (used until speeds are measured)."),
    seed: int = typer.Option(0, help="Seed: the initial model (the same on every peer), shuffling, groups."),
    wait_for_peers: int = typer.Option(1, help="Before the first outer step, wait until this many peers are listed (or --rendezvous-timeout passes)."),
    rendezvous_timeout: float = typer.Option(60.0, help="Longest wait, seconds, for --wait-for-peers."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="A local training setting (repeatable)."),
    port_file: Optional[Path] = typer.Option(None, help="Write 'LANE_PORT DHT_PORT' here once listening."),
    join: bool = typer.Option(False, "--join", help="Join a running swarm: fetch the model and outer state two other peers vouch for."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    out = CommandOutput("potluck.cli.peer")
    with failures_as_exit_codes(out.error):
        if peer_id is None:
            raise ConfigError("--peer-id is required to run a peer (or use `potluck peer up`)")
        from potluck.apps.peer import run_one
        from potluck.peer.runner import PeerConfig

        cfg = PeerConfig(peer_id=peer_id, tls_dir=tls_dir, run_dir=run_dir or Path("runs") / f"peer-{peer_id}",
                         run_id=run_id, task=task, data_path=data_path, host=host, advertise=advertise, port=port, dht_port=dht_port,
                         bootstrap=tuple(_address(b) for b in bootstrap or []), outer_steps=outer_steps,
                         inner_epochs=inner_epochs, outer_lr=outer_lr, outer_momentum=outer_momentum,
                         group_size=group_size, quantize=quantize, averaging=averaging, trim=trim, ttl=ttl, deadline_floor=deadline_floor,
                         deadline_ceiling=deadline_ceiling, seed=seed, wait_for_peers=wait_for_peers, rendezvous_timeout=rendezvous_timeout, fit=parse_assignments(fit, "--fit"),
                         port_file=port_file, join=join)
        on_sigterm()
        records = run_one(cfg, lambda r: out.result(_line(r.to_json())))
        out.result(f"potluck peer {peer_id}: {len(records)} steps, run directory {cfg.run_dir}")


@app.command("up", help="Start N peers on this machine with a fresh CA; print each peer's loss per outer step.")
def up(
    peers: int = typer.Option(3, help="Peer processes to start."),
    outer_steps: int = typer.Option(3, "--outer-steps", "--rounds", help="Outer steps every peer runs."),
    task: str = typer.Option("digits", help="Built-in task or module:attribute."),
    data_path: Optional[Path] = typer.Option(None, help="Data to split over the peers (default: the task's bundled data)."),
    inner_epochs: int = typer.Option(1, help="H: local epochs per outer step."),
    group_size: int = typer.Option(8, help="Largest averaging group."),
    quantize: bool = typer.Option(False, "--quantize", help="8-bit pseudo-gradient chunks."),
    seed: int = typer.Option(0, help="Seed of the split, the model and the groups."),
    partition: str = typer.Option("iid", help="How the data is split over the peers: iid or contiguous (one stretch of a text each)."),
    averaging: str = typer.Option("mean", help="How a part's owner reduces the signed chunks: mean, median or trimmed."),
    fit: Optional[list[str]] = typer.Option(None, "--fit", "-F", metavar="KEY=VALUE", help="A local training setting for every peer (repeatable)."),
    run_dir: Optional[Path] = typer.Option(None, help="Where everything is written.  [default: runs/<time>-peer-up]"),
) -> None:
    out = CommandOutput("potluck.cli.peer")
    with failures_as_exit_codes(out.error):
        from potluck.apps.peer import UpSettings, run_up

        settings = UpSettings(peers=peers, outer_steps=outer_steps, task=task, data_path=data_path,
                              inner_epochs=inner_epochs, group_size=group_size, quantize=quantize, seed=seed,
                              partition=partition, averaging=averaging, fit=parse_assignments(fit, "--fit"))
        folder = run_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-peer-up"
        out.info(f"potluck peer up: {peers} peers over mutual TLS, run directory {folder}")
        on_sigterm()
        lines = run_up(settings, folder, lambda r: out.result(_line(r)))
        finals = {str(records[-1]["model_digest"]) for records in lines.values() if records}
        losses = [float(records[-1]["loss"]) for records in lines.values() if records]  # type: ignore[arg-type]
        mean = sum(losses) / len(losses) if losses else math.nan
        same = "the same model" if len(finals) == 1 else f"{len(finals)} different models"
        out.result(f"potluck peer up: {len(lines)} peers finished with {same}; mean held-out loss {mean:.4f}")


@app.command("cert", help="Issue tls/peers/ID.crt and .key (serverAuth + clientAuth) with the project CA in --tls-dir.")
def cert(
    peer_id: str = typer.Argument(..., help="The peer id (the certificate's CN)."),
    tls_dir: Path = typer.Option(Path("tls"), help="Folder with ca.crt and ca.key (`potluck certs init`)."),
) -> None:
    out = CommandOutput("potluck.cli.peer")
    with failures_as_exit_codes(out.error):
        from potluck.peer.identity import issue_peer

        out.result(f"wrote {issue_peer(tls_dir, peer_id)}")


@app.command("simulate", help="Many virtual peers in this process: the same grouping, all-reduce and outer step, for research.")
def simulate(
    peers: int = typer.Option(16, help="Virtual peers."),
    outer_steps: int = typer.Option(5, "--outer-steps", "--rounds", help="Outer steps."),
    task: str = typer.Option("digits", help="Built-in task or module:attribute."),
    data_path: Optional[Path] = typer.Option(None, help="Data to split over the peers (default: the task's bundled data)."),
    inner_epochs: int = typer.Option(1, help="H: local epochs per outer step."),
    group_size: int = typer.Option(4, help="Largest averaging group."),
    outer_lr: float = typer.Option(0.7, help="Outer (Nesterov) learning rate."),
    outer_momentum: float = typer.Option(0.9, help="Outer Nesterov momentum."),
    drop: float = typer.Option(0.0, help="Probability that a peer crashes mid-reduction in a step (it rejoins the next)."),
    seed: int = typer.Option(0, help="Seed of the split, the model, the groups and the crashes."),
    averaging: str = typer.Option("mean", help="How a part's owner reduces the chunks: mean, median or trimmed."),
    trim: float = typer.Option(0.25, help="β of --averaging trimmed: the fraction dropped at each end."),
    poisoners: int = typer.Option(0, help="Adversaries that send their pseudo-gradient times --poison-scale."),
    poison_scale: float = typer.Option(-10.0, help="The poisoners' factor."),
    forgers: int = typer.Option(0, help="Adversaries that sign their contributions with a key not theirs."),
    liars: int = typer.Option(0, help="Adversaries that show a forked ledger head to half of their group."),
) -> None:
    out = CommandOutput("potluck.cli.peer")
    with failures_as_exit_codes(out.error):
        from potluck.apps.peer import run_simulation
        from potluck.peer.robust import Averaging
        from potluck.peer.simulation import SimSettings

        settings = SimSettings(outer_steps=outer_steps, inner_epochs=inner_epochs, group_size=group_size,
                               outer_lr=outer_lr, outer_momentum=outer_momentum, drop=drop, seed=seed,
                               averaging=Averaging(averaging, trim), poisoners=poisoners, poison_scale=poison_scale,
                               forgers=forgers, liars=liars)
        run_simulation(task, data_path, peers, settings, lambda r: out.result(
            f"step {r.step:>3}  mean loss {r.mean_loss:.4f}  groups {len(r.groups)}  crashed {len(r.dropped)}  "
            f"lost parts {r.lost_parts}  distinct models {r.distinct_models}"
            + (f"  refused {','.join(r.refused)}" if r.refused else "")
            + (f"  equivocators {','.join(r.equivocators)}" if r.equivocators else "")))
