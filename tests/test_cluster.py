"""A real Spark standalone cluster on 127.0.0.1 (a master and two one-core workers) and ./spark-submit.sh against it.

The workers' executors do not inherit this process's PYTHONPATH: they import ddrl from the zip that
spark-submit.sh ships with --py-files, and run the venv's Python (the driver's PYSPARK_PYTHON).  Everything
the test starts runs in its own process group and is killed in the fixture's teardown, whatever happens.
The environment-shipping variant (--ship-env: venv-pack archive of the whole venv) is opt-in (slow).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 120
JOB_TIMEOUT = 420

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Java is needed for a Spark cluster")


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def daemon_environment(work_dir: Path) -> dict[str, str]:
    """Master/worker environment: loopback only, worker files in tmp, no PYTHONPATH to this checkout."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("PYSPARK_", "SPARK_"))}
    environ.pop("PYTHONPATH", None)
    environ.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_WORKER_DIR=str(work_dir),
        SPARK_DAEMON_MEMORY="512m",
    )
    return environ


class Cluster:
    """Master and workers as child process groups; ``stop`` kills every group (executors included)."""

    def __init__(self, base: Path, workers: int = 2) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self.worker_dirs = [base / f"worker-{index}" for index in range(workers)]

    def _start(self, name: str, arguments: list[str], work_dir: Path) -> Path:
        log_path = self.base / f"{name}.log"
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *arguments],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=daemon_environment(work_dir),
                cwd=self.base,
                start_new_session=True,  # its own process group: executors and Python workers die with it
            )
        self.processes.append((process, log_path))
        return log_path

    def start(self) -> None:
        master_log = self._start(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(free_port())],
            self.base / "master",
        )
        self._wait_for(master_log, "I have been elected leader")
        worker_logs = [
            self._start(
                f"worker-{index}",
                ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                 "--webui-port", str(free_port()), "--work-dir", str(work_dir)],
                work_dir,
            )
            for index, work_dir in enumerate(self.worker_dirs)
        ]
        for log_path in worker_logs:
            self._wait_for(log_path, "Successfully registered with master")

    def _wait_for(self, log_path: Path, text: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if text in log_path.read_text(errors="replace"):
                return
            for process, path in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{path.name} exited with {process.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"{log_path.name}: no {text!r} after {STARTUP_TIMEOUT} s:\n{log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        for process, _ in reversed(self.processes):
            kill_group(process)


def kill_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process's group, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = None
    # SIGKILL reaches executors and Python workers of a stopped worker, if any remain.
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal_number)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def processes_under(directory: Path) -> list[int]:
    """Process ids whose working directory is inside ``directory`` (executors and their Python workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path / "cluster")
    started.base.mkdir(parents=True)
    try:
        started.start()
        yield started
    finally:
        started.stop()
    assert all(process.poll() is not None for process, _ in started.processes), "a cluster daemon survived"
    assert processes_under(started.base) == [], "processes of the cluster survived its stop"


def submit(cluster: Cluster, run_dir: Path, *extra: str, steps: int = 2048) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PYSPARK_")}
    environ.pop("PYTHONPATH", None)
    environ.update(SPARK_LOCAL_IP="127.0.0.1", DDRL_MLFLOW="0")
    environ.pop("DDRL_STARTED_AT", None)
    command = [str(ROOT / "spark-submit.sh"), "--master", cluster.url, *extra, "jobs/train.py",
               "--config", "conf/cartpole_ppo.yaml", "--set", f"train.total_env_steps={steps}", "--run-dir", str(run_dir)]
    process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        pytest.fail(f"spark-submit did not finish in {JOB_TIMEOUT} s:\n{output[-5000:]}")
    finally:
        kill_group(process, grace=2.0)
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def check_run(cluster: Cluster, run_dir: Path, result: subprocess.CompletedProcess, iterations: int) -> None:
    assert result.returncode == 0, result.stdout[-5000:]
    assert "final evaluation:" in result.stdout and f"run directory: {run_dir}" in result.stdout
    assert (run_dir / "config.yaml").exists()
    rows = pq.read_table(run_dir / "metrics").to_pylist()
    assert sorted(row["iteration"] for row in rows) == list(range(1, iterations + 1))
    assert max(row["env_steps"] for row in rows) == iterations * 2 * 4 * 32 * 4  # tasks x envs x steps x local rounds
    assert (run_dir / "checkpoints" / f"ckpt-{iterations:06d}.json").exists()
    assert (run_dir / "policy" / "policy.safetensors").exists() and (run_dir / "policy" / "policy.json").exists()
    assert (run_dir / "learning_curve.png").exists()
    # The tasks ran in the workers' executors, which fetched the shipped package.
    for work_dir in cluster.worker_dirs:
        executor_dirs = [path for path in work_dir.glob("app-*/*") if path.is_dir()]
        assert executor_dirs, f"no executor ran on {work_dir.name}"
        assert any((path / "ddrl-package.zip").exists() for path in executor_dirs), f"{work_dir.name}: ddrl-package.zip (--py-files) not fetched"


def test_train_job_on_a_standalone_cluster_with_two_workers(cluster, tmp_path):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = submit(cluster, run_dir)
    print(f"spark-submit on the cluster: {time.monotonic() - started:.1f} s")
    check_run(cluster, run_dir, result, iterations=2)
    from ddrl import load_policy

    assert load_policy(run_dir).act([0.0, 0.0, 0.0, 0.0]) in (0, 1)


@pytest.mark.slow
def test_train_job_ships_the_whole_environment_with_ship_env(cluster, tmp_path):
    """--ship-env: executors run ./environment/bin/python from the venv-pack archive (packing takes minutes once)."""
    run_dir = tmp_path / "run"
    result = submit(cluster, run_dir, "--ship-env", steps=1024)
    check_run(cluster, run_dir, result, iterations=1)
    assert (ROOT / "build" / "ddrl-env.tar.gz").exists()
    executor_dirs = [path for work_dir in cluster.worker_dirs for path in work_dir.glob("app-*/*") if path.is_dir()]
    assert any((path / "environment" / "bin" / "python").exists() for path in executor_dirs)
