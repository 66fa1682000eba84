"""The container image, for real: build deploy/docker/Dockerfile on a Debian bookworm
base made here with debootstrap, then run a server and two nodes from it over mutual
TLS (host network, 127.0.0.1) until a round commits in the mounted run directory.

Nothing comes from a container registry: the base image is a debootstrap root file
system (cached between runs in $POTLUCK_TEST_CACHE, default /var/cache/potluck-test)
imported with `docker import`, and the build is offline (`--network none`,
PIP_NO_INDEX=1) from a wheelhouse that pip fills here, torch's CPU wheel included. The
Docker daemon is Debian's dockerd, started for this module with its own data root,
exec root, pid file and socket in a temporary folder, and stopped by its PID.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_kit import DEPLOY, REPO, Daemons, free_port, need_root, run, tool, wait_until

from potluck.apps.up import prepare
from potluck.core.config import SimulationConfig

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("POTLUCK_TEST_CACHE", "/var/cache/potluck-test"))
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "systemd")  # venv: the Dockerfile; systemd: runs the units
BASE_IMAGE = "potluck-test/debian:bookworm"
IMAGE = "potluck:test"
UID = 10001  # the image's user


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 .sources or a one-line sources.list)."""
    if os.environ.get("POTLUCK_DEBIAN_MIRROR"):
        return os.environ["POTLUCK_DEBIAN_MIRROR"]
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
            if SUITE in fields.get("Suites", "").split() and "URIs" in fields:
                return fields["URIs"].split()[0]
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if path.exists():
            found = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", path.read_text(), re.M)
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def debian_rootfs() -> Path:
    """A tar of a minimal bookworm with Python, made once and kept in CACHE."""
    key = hashlib.sha256(f"{SUITE} minbase {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    tar = CACHE / f"debian-{SUITE}-{key}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run making it at the same time waits
        if tar.exists():
            return tar
        for stale in CACHE.glob(f"debian-{SUITE}-*.tar"):
            stale.unlink()
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
        try:
            root = work / "root"
            run([tool("debootstrap", "Debian debootstrap"), "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(root), debian_mirror()], timeout=900)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(root / junk, ignore_errors=True)
            run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(work / "rootfs.tar"), "."], timeout=300)
            os.replace(work / "rootfs.tar", tar)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tar


def wheelhouse() -> Path:
    """Every wheel `pip install ".[all]"` needs, for this Python, made once per dependency set."""
    key = hashlib.sha256(b"".join((REPO / f).read_bytes() for f in ("pyproject.toml", "constraints.txt"))
                         + sys.version.encode()).hexdigest()[:12]
    wheels = CACHE / f"wheels-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if wheels.exists():
            return wheels
        for stale in CACHE.glob("wheels-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="wheels-", dir=CACHE))
        try:
            project = work / "project"  # a copy: pip writes egg-info next to the sources
            project.mkdir()
            for name in ("pyproject.toml", "README.md"):
                shutil.copy(REPO / name, project / name)
            shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
            run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(work / "wheels"),
                 "-c", str(REPO / "constraints.txt"), f"{project}[all]", "setuptools>=69", "wheel"], timeout=900)
            os.replace(work / "wheels", wheels)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return wheels


def build_context(dest: Path) -> Path:
    """What BuildKit would send for the Dockerfile: the paths its .dockerignore keeps."""
    keep = [line[1:] for line in (DEPLOY / "docker/Dockerfile.dockerignore").read_text().splitlines()
            if line.startswith("!")]
    for rel in [*keep, "deploy/docker/Dockerfile"]:
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl"))
        else:
            shutil.copy2(src, dst)
    return dest


class Docker:
    """A private dockerd (no bridge, no iptables) and a client bound to it."""

    def __init__(self, root: Path, daemons: Daemons) -> None:
        self.root = root
        self.client = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else tool("docker", "Debian docker.io")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{root}/docker.sock", "DOCKER_BUILDKIT": "0",
                    "DOCKER_CONFIG": str(root / "client")}
        self.daemon = daemons.start("dockerd", [
            tool("dockerd", "Debian docker.io"), "--bridge=none", "--iptables=false", "--ip6tables=false",
            f"--data-root={root}/data", f"--exec-root={root}/exec", f"--pidfile={root}/docker.pid",
            f"--host=unix://{root}/docker.sock"])
        self.daemons = daemons
        wait_until(lambda: self.daemon.poll() is not None or self("version", check=False).returncode == 0, 60,
                   "dockerd to answer")
        daemons.check_alive("dockerd")

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.client, *args], timeout=timeout, check=check, env=self.env)

    def close(self) -> None:
        ids = self("ps", "-aq", check=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, check=False)
        self.daemons.stop()
        with open("/proc/mounts") as mounts:  # nothing of ours may stay mounted before rmtree
            ours = [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.root))]
        for mountpoint in sorted(ours, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False)


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    need_root("dockerd and debootstrap")
    tool("dockerd", "Debian docker.io")
    tool("debootstrap", "Debian debootstrap")
    # A short path: dockerd's and containerd's unix sockets live under it.
    root = Path(tempfile.mkdtemp(prefix="pl-docker-", dir="/tmp"))
    daemons = Daemons(tmp_path_factory.mktemp("dockerd-logs"))
    try:
        d = Docker(root, daemons)
    except BaseException:
        daemons.stop()
        raise
    try:
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(docker, tmp_path_factory):
    timings = {}
    started = time.monotonic()
    rootfs = debian_rootfs()
    timings["debootstrap (or cache)"] = time.monotonic() - started
    docker("import", str(rootfs), BASE_IMAGE, timeout=300)
    ctx = build_context(tmp_path_factory.mktemp("context"))
    started = time.monotonic()
    for wheel in wheelhouse().iterdir():
        _link_or_copy(wheel, ctx / "deploy/docker/wheels" / wheel.name)
    timings["wheelhouse"] = time.monotonic() - started
    started = time.monotonic()
    done = docker("build", "--network", "none", "-f", "deploy/docker/Dockerfile",
                  "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_NO_INDEX=1",
                  "--build-arg", "TORCH_INDEX_URL=", "-t", IMAGE, str(ctx), timeout=1200, check=False)
    timings["docker build"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    print("image test timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return IMAGE


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the cache and the context usually share a file system
    except OSError:
        shutil.copy(src, dst)


def test_image_runs_as_non_root_with_potluck_as_entrypoint(docker, image):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["potluck"]
    assert config["Healthcheck"]["Test"] == ["CMD", "potluck-healthcheck"]
    out = docker("run", "--rm", "--network", "none", "--read-only", image, "node", "--help").stdout
    assert "--server-address" in out
    who = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                 "import os, torch; print(os.getuid(), torch.__version__)").stdout.split()
    assert who[0] == str(UID) and who[1].startswith("2.13.0"), who


def container_status(docker, name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]["State"]


def test_server_and_two_nodes_commit_rounds_over_mutual_tls(docker, image, tmp_path):
    work = tmp_path / "deploy"
    ids, test = prepare(SimulationConfig.from_mapping({"nodes": 2, "run_dir": str(tmp_path / "unused")}), work)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for path in [run_dir, *work.rglob("*")]:
        os.chown(path, UID, UID)  # the containers' user reads the keys and writes the run
    port, metrics = free_port(), free_port()

    def logs(name: str) -> str:
        done = docker("logs", name, check=False)
        return done.stdout + done.stderr

    tls, data = work / "tls", work / "data"
    common = ["run", "-d", "--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges", "--health-interval", "2s", "-v", f"{tls}/ca.crt:/etc/potluck/tls/ca.crt:ro"]
    # As in compose.yaml: the certificates read-only, over a volume where the server
    # makes its ledger signing key (in its --tls-dir) and each node its own (--key-dir).
    docker(*common, "--name", "potluck-server", "-v", "potluck-server-tls:/etc/potluck/tls",
           "-v", f"{tls}/server.crt:/etc/potluck/tls/server.crt:ro", "-v", f"{tls}/server.key:/etc/potluck/tls/server.key:ro",
           "-v", f"{test}:/var/lib/potluck/data/test.npz:ro", "-v", f"{run_dir}:/var/lib/potluck/run",
           image, "server", "--bind", f"127.0.0.1:{port}", "--tls-dir", "/etc/potluck/tls", "--run-dir",
           "/var/lib/potluck/run", "--data-path", "/var/lib/potluck/data/test.npz", "--rounds", "2", "--min-nodes", "2",
           "--metrics-port", str(metrics))
    # As compose.yaml's depends_on: the nodes start once Docker calls the server healthy.
    wait_until(lambda: container_status(docker, "potluck-server").get("Health", {}).get("Status") == "healthy"
               or not container_status(docker, "potluck-server")["Running"], 120, "the server's health check")
    assert container_status(docker, "potluck-server")["Health"]["Status"] == "healthy", logs("potluck-server")
    for node in ids:
        docker(*common, "--name", f"potluck-{node}", "-v", f"potluck-{node}-keys:/var/lib/potluck/keys",
               "-v", f"{tls}/nodes/{node}.crt:/etc/potluck/tls/nodes/{node}.crt:ro",
               "-v", f"{tls}/nodes/{node}.key:/etc/potluck/tls/nodes/{node}.key:ro",
               "-v", f"{data}/{node}.npz:/var/lib/potluck/data/{node}.npz:ro",
               image, "node", "--server-address", f"127.0.0.1:{port}", "--node-id", node, "--model-id", "digits",
               "--data-path", f"/var/lib/potluck/data/{node}.npz", "--tls-dir", "/etc/potluck/tls",
               "--key-dir", "/var/lib/potluck/keys")

    scraped = []

    def progress() -> bool:
        for name in ["potluck-server", *(f"potluck-{n}" for n in ids)]:
            state = container_status(docker, name)
            assert state["Running"] or state["ExitCode"] == 0, f"{name} exited {state['ExitCode']}:\n{logs(name)[-3000:]}"
        if not scraped:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                    scraped.append(r.read().decode())
            except OSError:
                pass
        return (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip() != ""

    wait_until(progress, 300, "a committed round in the mounted run directory", every=1)
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["round"] == 1 and first["num_nodes"] == 2, first
    wait_until(lambda: not container_status(docker, "potluck-server")["Running"], 180, "the server to finish")
    assert container_status(docker, "potluck-server")["ExitCode"] == 0, logs("potluck-server")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "model.safetensors").stat().st_uid == UID
    for node in ids:
        name = f"potluck-{node}"
        wait_until(lambda name=name: not container_status(docker, name)["Running"], 60, f"{name} to finish")
        assert container_status(docker, name)["ExitCode"] == 0 and "done after 2 rounds" in logs(name), logs(name)
    assert scraped and "potluck_" in scraped[0], "the server's /metrics did not answer from its container"
    for volume, key in [("potluck-server-tls", "ledger-server.key"), *((f"potluck-{n}-keys", f"{n}.signing.key") for n in ids)]:
        path = Path(json.loads(docker("volume", "inspect", volume).stdout)[0]["Mountpoint"]) / key
        assert path.stat().st_uid == UID and path.stat().st_mode & 0o777 == 0o600, path


def test_kubernetes_init_containers_lay_out_tls_in_the_image(docker, image, tmp_path):
    """The init containers of deploy/k8s run `sh -c` in this image, as user 10001 with a
    read-only root: run each as rendered and check the folder it leaves for potluck."""
    rendered = run([tool("kubectl", "kubectl"), "kustomize", str(DEPLOY / "k8s/base")]).stdout
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in ("ca.crt", "server.crt", "server.key", "potluck-node-1.crt", "potluck-node-1.key"):
        (secret / name).write_text(f"{name}\n")
        (secret / name).chmod(0o444)
    checked = {}
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for init in doc["spec"]["template"]["spec"].get("initContainers", []):
            target = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
            out = tmp_path / doc["kind"]
            out.mkdir()
            os.chown(out, UID, UID)
            writable = [path for name, path in target.items() if name != "tls-secret"]
            assert init["command"][:2] == ["sh", "-c"] and len(writable) == 1
            docker("run", "--rm", "--network", "none", "--read-only", "--user", f"{UID}:{UID}",
                   "-e", "POD_NAME=potluck-node-1", "-v", f"{secret}:{target['tls-secret']}:ro",
                   "-v", f"{out}:{writable[0]}", "--entrypoint", "sh", image, "-c", init["command"][2])
            checked[doc["kind"]] = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
            for key in out.rglob("*.key"):
                assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    assert checked == {"Deployment": ["tls/ca.crt", "tls/server.crt", "tls/server.key"],
                       "StatefulSet": ["ca.crt", "nodes/potluck-node-1.crt", "nodes/potluck-node-1.key"]}


# Linux capability numbers → names, for the ones a container may ask for.
CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
        "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
        "PERFMON BPF CHECKPOINT_RESTORE").split()


def capabilities_we_lack() -> list[str]:
    """--privileged asks for every capability and fails where this process's bounding
    set lacks one (this machine has no CAP_SYS_RESOURCE): list those to drop."""
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M).group(1), 16)
    return [name for bit, name in enumerate(CAPS) if not bounding >> bit & 1]


def test_systemd_units_run_a_federation_under_systemd(docker, image, tmp_path):
    """deploy/systemd's units, hardening and all, started by systemd (PID 1 of a
    container made from the image, whose Debian base has systemd) as the install
    steps in docs/deployment.md lay them out: a server and a node on loopback."""
    work = tmp_path / "deploy"
    prepare(SimulationConfig.from_mapping({"nodes": 1, "run_dir": str(tmp_path / "unused")}), work)
    flags = ["--cap-add", "ALL", *(f"--cap-drop={c}" for c in capabilities_we_lack())]
    docker("run", "-d", "--name", "potluck-systemd", *flags, "--security-opt", "seccomp=unconfined",
           "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
           "-v", "/sys/fs/cgroup:/sys/fs/cgroup", "--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
           "--network", "none", "--user", "0", "--entrypoint", "/lib/systemd/systemd", image)

    def sh(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker("exec", "potluck-systemd", "sh", "-ec", script, check=check)

    wait_until(lambda: sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"),
               60, "systemd in the container to finish booting")
    systemd = DEPLOY / "systemd"
    copies = [(systemd / "potluck-server.service", "/etc/systemd/system/"),
              (systemd / "potluck-node.service", "/etc/systemd/system/"),
              (systemd / "potluck.sysusers", "/usr/lib/sysusers.d/potluck.conf")]
    (tmp_path / "server.env").write_text("POTLUCK_BIND=127.0.0.1:7450\nPOTLUCK_TASK=digits\nPOTLUCK_SERVER_ARGS="
                                         "--rounds 2 --min-nodes 1 --data-path /srv/potluck/data/test.npz\n")
    (tmp_path / "node.env").write_text("POTLUCK_SERVER_ADDRESS=127.0.0.1:7450\nPOTLUCK_NODE_ID=node-000\n"
                                       "POTLUCK_MODEL_ID=digits\nPOTLUCK_TASK=digits\n"
                                       "POTLUCK_DATA_PATH=/srv/potluck/data/node-000.npz\nPOTLUCK_NODE_ARGS=\n")
    copies += [(tmp_path / "server.env", "/etc/potluck/"), (tmp_path / "node.env", "/etc/potluck/"),
               (work / "tls/ca.crt", "/etc/potluck/tls/"), (work / "tls/nodes/node-000.crt", "/etc/potluck/tls/nodes/"),
               (work / "tls/nodes/node-000.key", "/etc/potluck/tls/nodes/"),
               (work / "data/node-000.npz", "/srv/potluck/data/"), (work / "data/test.npz", "/srv/potluck/data/")]
    copies += [(work / "tls" / f, "/var/lib/potluck/tls/") for f in ("ca.crt", "server.crt", "server.key")]
    sh("mkdir -p /etc/potluck/tls/nodes /srv/potluck/data /var/lib/potluck/tls")
    for src, dst in copies:
        docker("cp", str(src), f"potluck-systemd:{dst}")
    sh("systemd-sysusers && chown -R potluck:potluck /var/lib/potluck/tls && chmod 0700 /var/lib/potluck/tls"
       " && chmod 0600 /var/lib/potluck/tls/server.key && chgrp -R potluck /etc/potluck /srv/potluck"
       " && chmod 0750 /etc/potluck/tls /etc/potluck/tls/nodes && chmod 0640 /etc/potluck/*.env"
       " /etc/potluck/tls/nodes/node-000.key && systemctl daemon-reload"
       " && systemctl start potluck-server potluck-node")

    def finished(unit: str) -> bool:
        return sh(f"systemctl show -P ActiveState {unit}").stdout.strip() in ("inactive", "failed")

    journal = lambda: sh("journalctl --no-pager -u potluck-server -u potluck-node", check=False).stdout  # noqa: E731
    try:
        wait_until(lambda: finished("potluck-server") and finished("potluck-node"), 300, "both units to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal()[-5000:]}") from None
    for unit in ("potluck-server", "potluck-node"):
        shown = sh(f"systemctl show -p Result -p ExecMainStatus {unit}").stdout.split()
        assert shown == ["Result=success", "ExecMainStatus=0"], f"{unit}: {shown}\n{journal()}"
    assert "potluck server: 2 rounds committed" in journal() and "done after 2 rounds" in journal(), journal()
    assert len(sh("cat /var/lib/potluck/server/metrics.jsonl").stdout.splitlines()) == 2
    keys = sh("stat -c '%U %a %n' /var/lib/potluck/tls/ledger-server.key /var/lib/potluck/node/node-000.signing.key")
    assert keys.stdout.split() == ["potluck", "600", "/var/lib/potluck/tls/ledger-server.key",
                                   "potluck", "600", "/var/lib/potluck/node/node-000.signing.key"], keys.stdout
    warnings = sh("journalctl --no-pager -q -o cat -p warning -u potluck-server -u potluck-node", check=False)
    assert not warnings.stdout.strip(), journal()
