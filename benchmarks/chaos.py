"""Chaos: a deployed run loses no committed round to SIGKILLs, restarts and cut links.

A `potluck server` and N `potluck node` processes (mutual TLS on 127.0.0.1) train the
digits task. While they do, a schedule drawn from --seed:

- SIGKILLs the server at least 10 times (while it starts up or resumes, mid-round, in the
  middle of a commit, after the last round) and starts it again on the same port with the
  same run directory, so it resumes after its last committed round;
- SIGKILLs nodes and starts them again after a few seconds (they rejoin by themselves);
- with --netns (root), runs each process in its own network namespace and cuts and
  restores node links (veth down/up).

After every server kill, and at the end, the run directory must pass `potluck check`.
At the end: every round is committed, `model.safetensors` decodes and is the last round's
model, its accuracy is within --band of an undisturbed run with the same seed (run first),
and no process exited with an error on its own. Exit status 0 when all of that holds,
1 when not (the reasons are printed), 2 when --netns cannot be used here.

    python benchmarks/chaos.py --seed 1
    python benchmarks/chaos.py --seed 1 --netns --link-cuts 5 --json chaos.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _deployment import (
    ChaosFailed,
    Deployment,
    Loopback,
    Namespaces,
    fresh_mark,
    last_committed,
    netns_unavailable,
    records,
    resumed,
    round_files,
)
from _measure import table

from potluck.apps.check import check_run_dir
from potluck.apps.up import POTLUCK, prepare
from potluck.core.config import SimulationConfig
from potluck.core.params import Params
from potluck.transport.certs import issue_server

POLL = 0.0005  # seconds: committing the digits model takes a few milliseconds


@dataclass(frozen=True)
class Fault:
    """One planned fault: it strikes around round ``round`` (see ``phase``).

    Node kills and link cuts strike ``delay`` s after round ``round - 1`` is committed.
    Server kills are timed from the server process's latest start: ``round``, ``delay`` s
    after it committed a round ≥ ``round - 1``; ``commit``, as soon as a file of a round
    ≥ ``round`` appears; ``startup``, ``delay`` s after it began to resume the run directory
    (it follows another server kill); ``final`` (``round`` = rounds + 1), once it committed
    the last round. ``downtime``: seconds until the process starts again or the link is up.
    """

    kind: str  # server | node | link
    round: int
    phase: str
    delay: float
    downtime: float
    node: int = 0


def plan_faults(rng: random.Random, rounds: int, nodes: int, server_kills: int, node_kills: int,
                link_cuts: int) -> list[Fault]:
    """The schedule, in the order it is carried out; targets spread over rounds 1…rounds-1."""
    final = 1 if server_kills >= 4 else 0
    startups = 1 if server_kills >= 4 else 0
    body = ["round" if i % 2 else "commit" for i in range(server_kills - final - startups)]
    rng.shuffle(body)
    targets = sorted(rng.randint(1, rounds - 1) for _ in body)
    server = [Fault("server", t, p, rng.uniform(0, 0.03) if p == "round" else 0.0, rng.uniform(0, 0.5))
              for t, p in zip(targets, body)]
    for _ in range(startups):  # strikes the server restarted by the kill it follows
        k = rng.randrange(len(server))
        server.insert(k + 1, Fault("server", server[k].round, "startup", rng.uniform(0, 0.1), rng.uniform(0, 0.5)))
    others = [Fault("node", rng.randint(1, rounds - 1), "round", rng.uniform(0, 0.05), rng.uniform(0.3, 4.0),
                    rng.randrange(nodes)) for _ in range(node_kills)]
    others += [Fault("link", rng.randint(2, rounds - 1), "round", rng.uniform(0, 0.3), rng.uniform(2.0, 10.0),
                     rng.randrange(nodes)) for _ in range(link_cuts)]
    ordered = sorted([*server, *others], key=lambda f: f.round)  # stable: a start-up kill stays after its kill
    return ordered + [Fault("server", rounds + 1, "final", 0.0, rng.uniform(0, 0.5))] * final


# -- driving a run ------------------------------------------------------------------------


class Driver:
    """Starts a run, carries out the faults in order, and waits for the run to finish."""

    def __init__(self, dep: Deployment, deadline: float, say: Callable[[str], None]) -> None:
        self.dep, self.deadline, self.say = dep, deadline, say
        self.timers: list[tuple[float, str, Callable[[], None]]] = []
        self.injected: Counter[str] = Counter()
        self.moments: Counter[str] = Counter()
        self.missed: list[Fault] = []
        self.broken_after_kill: list[str] = []
        self.checks_after_kill = 0
        self.cut: set[int] = set()
        self.seconds = 0.0
        self.nodes_at_end = self.nodes_told = 0  # nodes running when the server finished; those told so

    def later(self, delay: float, what: str, action: Callable[[], None]) -> None:
        self.timers.append((time.monotonic() + delay, what, action))

    def service(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise ChaosFailed("the time budget was spent before the run finished (see --budget)")
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        for _, _, action in due:
            action()
        self.dep.watch(lambda i: self.later(1.0, "restart a crashed node", lambda: self.dep.start_node(i)))

    def wait(self, ready: Callable[[], bool]) -> bool:
        """Service timers until ``ready()``; False if the run finished first."""
        while not ready():
            self.service()
            if self.dep.finished:
                return False
            time.sleep(POLL)
        return True

    def drive(self, faults: list[Fault]) -> None:
        dep = self.dep
        dep.start_server()
        self.wait(dep.listening)
        for i in range(len(dep.node_ids)):
            dep.start_node(i)
        for fault in faults:
            if dep.finished or not self.strike(fault):
                self.missed.append(fault)
        self.wait(lambda: False)  # until the server exits 0 after the last round
        self.seconds = dep.finished_at - dep.first_spawn
        for _, what, action in self.timers:  # restore cut links; crashed or killed nodes are not needed any more
            if what == "restore a link":
                action()
        self.timers = []
        quiet = time.monotonic() + 5.0  # nodes that heard "finished" exit by themselves
        while time.monotonic() < quiet and any(p is not None and p.poll() is None for p in dep.nodes.values()):
            time.sleep(0.05)
        dep.watch(lambda i: None)
        self.nodes_told = dep.nodes_told
        self.nodes_at_end = dep.nodes_told + sum(p is not None for p in dep.nodes.values())  # the rest get SIGTERM

    def strike(self, fault: Fault) -> bool:
        dep, run = self.dep, self.dep.run
        if fault.kind == "server" and fault.phase == "startup":  # once the restarted server resumes
            if not self.wait(lambda: dep.server is not None and resumed(run, dep.spawned_ns)):
                return False
            until = time.monotonic() + fault.delay
            if not self.wait(lambda: time.monotonic() >= until):
                return False
        elif fault.kind == "server" and fault.phase == "commit":
            first = max(fault.round, last_committed(run) + 1)
            if not self.wait(lambda: bool(round_files(run, first, dep.spawned_ns))):
                return False
        elif fault.kind == "server":  # round, final: once this server process has committed a round ≥ round - 1
            if not self.wait(lambda: fresh_mark(run, fault.round - 1, dep.spawned_ns)):
                return False
            until = time.monotonic() + fault.delay
            if not self.wait(lambda: time.monotonic() >= until):
                return False
        else:
            if not self.wait(lambda: last_committed(run) >= fault.round - 1):
                return False
            until = time.monotonic() + fault.delay
            if not self.wait(lambda: time.monotonic() >= until):
                return False
        return {"server": self.kill_server, "node": self.kill_node, "link": self.cut_link}[fault.kind](fault)

    def kill_server(self, fault: Fault) -> bool:
        dep = self.dep
        if not self.wait(lambda: dep.server is not None) or not dep.kill(dep.server):
            return False
        dep.server = None
        moment = self.moment()
        self.injected["server"] += 1
        self.moments[moment] += 1
        report = check_run_dir(dep.run.path)  # the folder as the kill left it
        self.checks_after_kill += 1
        broken = [f.message for f in report.findings if f.level == "broken"]
        if broken:
            self.broken_after_kill.append(f"after server kill {self.injected['server']}: " + "; ".join(broken))
        planned = "after the last round" if fault.phase == "final" else f"{fault.phase}, round {fault.round}"
        self.say(f"server SIGKILL #{self.injected['server']} (planned: {planned}), struck {moment}; "
                 f"check {'ok' if not broken else 'BROKEN'}; restart in {fault.downtime:.1f} s")
        self.later(fault.downtime, "restart the server", dep.start_server)
        self.wait(lambda: dep.server is not None)
        return True

    def moment(self) -> str:
        dep, run = self.dep, self.dep.run
        last = last_committed(run)
        if not dep.listening():
            return "start-up or resume (not listening yet)"
        if last >= dep.config.rounds:
            return "after the last round"
        if round_files(run, last + 1, dep.spawned_ns):
            return "mid-commit (files written, no mark yet)"
        if last > 0 and len(records(run)) < last:
            return "after the mark, before the metrics line"
        return "between commits (mid-round, or waiting for nodes)"

    def kill_node(self, fault: Fault) -> bool:
        dep = self.dep
        alive = [i for i, p in dep.nodes.items() if p is not None and p.poll() is None]
        if not alive:
            return False
        i = fault.node if fault.node in alive else alive[fault.node % len(alive)]
        if not dep.kill(dep.nodes[i]):
            return False
        dep.nodes[i] = None
        self.injected["node"] += 1
        self.say(f"node SIGKILL #{self.injected['node']}: {dep.node_ids[i]} after round {last_committed(dep.run)}, "
                 f"restart in {fault.downtime:.1f} s")
        self.later(fault.downtime, "restart a node", lambda: dep.start_node(i))
        return True

    def cut_link(self, fault: Fault) -> bool:
        free = [i for i in range(len(self.dep.node_ids)) if i not in self.cut]
        if not free:
            return False
        i = fault.node if fault.node in free else free[fault.node % len(free)]
        self.dep.net.set_link(i, up=False)
        self.cut.add(i)
        self.injected["link"] += 1
        self.say(f"link cut #{self.injected['link']}: {self.dep.node_ids[i]} after round "
                 f"{last_committed(self.dep.run)}, for {fault.downtime:.1f} s")

        def restore() -> None:
            self.dep.net.set_link(i, up=True)
            self.cut.discard(i)

        self.later(fault.downtime, "restore a link", restore)
        return True


# -- one run, its verdict, the report ---------------------------------------------------


@dataclass
class Outcome:
    name: str
    driver: Driver
    dep: Deployment
    records: list[dict[str, Any]]
    check_code: int
    problems: list[str]

    @property
    def accuracy(self) -> float:
        return float(self.records[-1]["accuracy"]) if self.records else float("nan")


def run_one(name: str, config: SimulationConfig, work: Path, test: Path, node_ids: list[str],
            net: Loopback | Namespaces, faults: list[Fault], deadline: float, say: Callable[[str], None],
            max_backoff: float = 30.0) -> Outcome:
    logs = work / f"logs-{name}"
    logs.mkdir(parents=True, exist_ok=True)
    dep = Deployment(config, work, test, node_ids, net, logs, max_backoff=max_backoff)
    driver = Driver(dep, deadline, say)
    try:
        driver.drive(faults)
    finally:
        dep.stop_all()
    run = dep.run
    rs = records(run)
    problems = [*dep.crashes, *driver.broken_after_kill]
    committed = [r["round"] for r in rs]
    if committed != list(range(1, config.rounds + 1)):
        problems.append(f"{name}: metrics.jsonl holds rounds {committed}, not 1 to {config.rounds}")
    check = subprocess.run([*POTLUCK, "check", str(run.path)], capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        problems.append(f"{name}: `potluck check` exited with {check.returncode}: {check.stdout.strip()}")
    ledger = subprocess.run([*POTLUCK, "ledger", "verify", str(run.path)], capture_output=True, text=True,
                            timeout=120)
    if ledger.returncode != 0:  # chain, signatures, Merkle roots and checkpoints, after every kill
        problems.append(f"{name}: `potluck ledger verify` exited with {ledger.returncode}: {ledger.stdout.strip()}")
    try:
        final = Params.decode(run.model_file.read_bytes())
        if rs and final.digest != rs[-1]["model_digest"]:
            problems.append(f"{name}: model.safetensors is not round {rs[-1]['round']}'s model")
    except Exception as exc:  # noqa: BLE001 - any failure to read the model is the finding
        problems.append(f"{name}: model.safetensors is not a valid checkpoint: {exc}")
    return Outcome(name, driver, dep, rs, check.returncode, problems)


def figures(out: Outcome, rounds: int) -> dict[str, Any]:
    failures: Counter[str] = Counter()
    for r in out.records:
        failures.update(r.get("failures") or {})
    d = out.driver
    return {
        "server_kills": d.injected["server"], "server_kill_moments": dict(d.moments),
        "node_kills": d.injected["node"], "link_cuts": d.injected["link"], "faults_missed": len(d.missed),
        "checks_after_kill": d.checks_after_kill, "broken_after_kill": len(d.broken_after_kill),
        "rounds_committed": len(out.records), "rounds_lost": rounds - len({r["round"] for r in out.records}),
        "rounds_retried": sum(r.get("attempts", 1) > 1 for r in out.records),
        "extra_attempts": sum(r.get("attempts", 1) - 1 for r in out.records),
        "results_dropped": sum(failures.values()), "failures": dict(failures),
        "rounds_short_of_nodes": sum(r["num_nodes"] < r["sampled"] for r in out.records),
        "seconds": round(d.seconds, 2), "accuracy": out.accuracy, "check_exit_code": out.check_code,
        "nodes_at_end": d.nodes_at_end, "nodes_told_run_over": d.nodes_told,
    }


def summary_table(ref: dict[str, Any], chaos: dict[str, Any], netns: bool) -> str:
    def fails(f: dict[str, Any]) -> str:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(f["failures"].items()))
        return f"{f['results_dropped']}" + (f" ({detail})" if detail else "")

    def told(f: dict[str, Any]) -> str:
        return f"{f['nodes_told_run_over']} of {f['nodes_at_end']}"

    moments = ", ".join(f"{v} {k}" for k, v in sorted(chaos["server_kill_moments"].items(), key=lambda kv: -kv[1]))
    rows = [
        ["server kills (SIGKILL, then restart)", "0", f"{chaos['server_kills']}"],
        ["  ... when they struck", "–", moments or "–"],
        ["node kills (SIGKILL, then restart)", "0", f"{chaos['node_kills']}"],
        ["link cuts (veth down, then up)", "0", f"{chaos['link_cuts']}" if netns else "– (no --netns)"],
        ["`potluck check` after each server kill", "–",
         f"{chaos['checks_after_kill'] - chaos['broken_after_kill']} of {chaos['checks_after_kill']} passed"],
        ["rounds committed", f"{ref['rounds_committed']}", f"{chaos['rounds_committed']}"],
        ["rounds lost", f"{ref['rounds_lost']}", f"{chaos['rounds_lost']}"],
        ["rounds retried (attempts > 1)", f"{ref['rounds_retried']}", f"{chaos['rounds_retried']}"],
        ["results dropped (failures)", fails(ref), fails(chaos)],
        ["`potluck check` at the end (exit code)", f"{ref['check_exit_code']}", f"{chaos['check_exit_code']}"],
        ["nodes told the run is over (exited by themselves)", told(ref), told(chaos)],
        ["wall time, server start to exit (s)", f"{ref['seconds']:.1f}", f"{chaos['seconds']:.1f}"],
        ["time lost (s)", "–", f"{chaos['seconds'] - ref['seconds']:.1f}"],
        ["final accuracy (held-out)", f"{ref['accuracy']:.4f}", f"{chaos['accuracy']:.4f}"],
    ]
    return table(["figure", "undisturbed", "chaos"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (both runs) and of the fault schedule")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds for everything (undisturbed run, chaos run, checks); exit 1 when spent")
    parser.add_argument("--nodes", type=int, default=3, help="node processes")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the run (digits, 1 local epoch)")
    parser.add_argument("--server-kills", type=int, default=10, help="planned server SIGKILLs (≥ 10 by default)")
    parser.add_argument("--node-kills", type=int, default=3, help="planned node SIGKILLs")
    parser.add_argument("--link-cuts", type=int, default=None, help="planned link cuts (needs --netns; default 4 with it)")
    parser.add_argument("--netns", action="store_true", help="one network namespace per process, and cut links (root)")
    parser.add_argument("--round-timeout", type=float, default=10.0, help="the server's round deadline, seconds")
    parser.add_argument("--band", type=float, default=0.03, help="allowed accuracy difference from the undisturbed run")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp folder, kept on failure)")
    parser.add_argument("--max-backoff", type=float, default=3.0,
                        help="the nodes' --max-backoff: how long at most they wait before retrying a restarted server")
    parser.add_argument("--json", type=Path, help="also write the figures and the verdict here as JSON")
    args = parser.parse_args(argv)
    if args.link_cuts is None:
        args.link_cuts = 4 if args.netns else 0
    if args.link_cuts and not args.netns:
        parser.error("--link-cuts needs --netns")
    if args.rounds < 3 or args.nodes < 2:
        parser.error("needs --rounds ≥ 3 and --nodes ≥ 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.netns and (why := netns_unavailable()):
        print(f"chaos: --netns is not usable here: {why}", file=sys.stderr)
        return 2
    started = time.monotonic()
    deadline = started + args.budget

    def say(line: str) -> None:
        print(f"{time.monotonic() - started:7.2f} s  {line}", flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="potluck-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig.from_mapping({
        "nodes": args.nodes, "rounds": args.rounds, "fit": {"epochs": 1}, "seed": args.seed,
        "round_timeout": args.round_timeout, "run_dir": str(work / "undisturbed"),
    })
    deploy = work / "deployment"
    node_ids, test = prepare(config, deploy)
    net: Loopback | Namespaces = Namespaces(args.nodes) if args.netns else Loopback()
    if isinstance(net, Namespaces):
        issue_server(deploy / "tls", ["127.0.0.1", "localhost", *net.server_ips()])
    faults = plan_faults(random.Random(args.seed), args.rounds, args.nodes, args.server_kills, args.node_kills,
                         args.link_cuts)
    say(f"seed {args.seed}: {args.nodes} nodes, {args.rounds} rounds, {len(faults)} faults planned; work in {work}")
    problems: list[str] = []
    result: dict[str, Any] = {"seed": args.seed, "nodes": args.nodes, "rounds": args.rounds, "netns": args.netns}
    try:
        ref = run_one("undisturbed", config, deploy, test, node_ids, Loopback(), [], deadline, say, args.max_backoff)
        say(f"undisturbed run: {ref.driver.seconds:.1f} s, accuracy {ref.accuracy:.4f}")
        if isinstance(net, Namespaces):
            net.create()
        chaos = run_one("chaos", config.replace(run_dir=str(work / "chaos")), deploy, test, node_ids, net, faults,
                        deadline, say, args.max_backoff)
        problems += ref.problems + chaos.problems
        result["undisturbed"], result["chaos"] = figures(ref, args.rounds), figures(chaos, args.rounds)
        gap = abs(chaos.accuracy - ref.accuracy)
        if not gap <= args.band:
            problems.append(f"final accuracy {chaos.accuracy:.4f} is {gap:.4f} from the undisturbed run's "
                            f"{ref.accuracy:.4f} (band {args.band})")
        print(summary_table(result["undisturbed"], result["chaos"], args.netns))
    except ChaosFailed as exc:
        problems.append(str(exc))
    finally:
        net.destroy()
    result["problems"], result["ok"] = problems, not problems
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    say("all checks passed" if not problems else f"{len(problems)} problems; everything is kept in {work}")
    if not problems and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
