"""Faults injected into real runs: killed workers, a killed driver, damaged checkpoints, hostile files.

Already covered in test_training.py (not repeated here): a task raising on its first attempt, NaN results,
every result rejected, a task failing beyond its retries, resume after deleting later checkpoints, resume
refusing another config.  The multi-process cluster (executor loss) is in
test_cluster_faults.py, Spark Connect sessions in test_connect.py, the command line's bad inputs in test_cli.py.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, fault_marker, final_params, small_ppo_config

import ddrl
from ddrl import checkpoint
from ddrl import config as config_module
from ddrl.run import Run



def metric_iterations(run_dir: Path) -> list[int]:
    return sorted(row["iteration"] for row in pq.read_table(Path(run_dir) / "metrics").to_pylist())


def env_config(env_id: str, **kwargs) -> dict:
    return {"id": env_id, "num_envs": 4, "max_episode_steps": 500, "kwargs": kwargs}


# ---- a Python worker killed with SIGKILL mid-rollout ---------------------------------------------------------


def test_python_worker_killed_mid_rollout_is_retried_with_the_same_bytes(spark, tmp_path):
    ddrl.train(spark, small_ppo_config(tmp_path, env=env_config("faulty_envs:SigkillCartPole")), run_dir=tmp_path / "clean")
    # Partition 1 kills its own worker once, at step 10 of 64 of its first rollout.
    killed = small_ppo_config(tmp_path, env=env_config("faulty_envs:SigkillCartPole", kill_partitions=[1], kill_at_step=10, marker=fault_marker(tmp_path)))
    result = ddrl.train(spark, killed, run_dir=tmp_path / "killed")

    assert result.iterations == 3
    assert [row["rejected_tasks"] for row in result.metrics.to_pylist()] == [0, 0, 0]
    assert np.array_equal(final_params(tmp_path / "clean"), final_params(tmp_path / "killed"))


# ---- a task failing beyond Spark's retries, then resumed ---------------------------------------------------


class _CreateFileAfter:
    """An observer that creates ``path`` once iteration ``iteration`` is done (and checkpointed)."""

    def __init__(self, path: Path, iteration: int) -> None:
        self.path, self.iteration = path, iteration

    def on_start(self, run):
        pass

    def on_iteration(self, iteration, metrics):
        if iteration == self.iteration:
            self.path.touch()

    def on_end(self, result):
        pass


def test_failing_beyond_retries_keeps_the_last_checkpoint_and_the_run_resumes_bit_identically(spark, tmp_path):
    marker = tmp_path / "env-is-broken"
    config = small_ppo_config(tmp_path, env=env_config("faulty_envs:MarkerFailCartPole", fail_marker=str(marker)))
    ddrl.train(spark, config, run_dir=tmp_path / "uninterrupted")

    # The env breaks after iteration 2 (from outside the config): iteration 3 fails on every attempt.
    with pytest.raises(ddrl.TrainingError, match=r"^iteration 3: a task failed after Spark's retries: .*injected failure while"):
        ddrl.train(spark, config, run_dir=tmp_path / "failed", observers=[_CreateFileAfter(marker, 2)])
    loaded = checkpoint.load_latest(tmp_path / "failed" / "checkpoints")
    assert loaded is not None and loaded[1]["iteration"] == 2 and not loaded[1]["finished"]
    assert metric_iterations(tmp_path / "failed") == [1, 2]
    assert not (tmp_path / "failed" / "policy").exists()

    marker.unlink()  # the env is healthy again; the config is unchanged, so the run can be resumed
    result = ddrl.train(spark, config, resume=tmp_path / "failed")

    assert result.iterations == 3
    assert np.array_equal(final_params(tmp_path / "failed"), final_params(tmp_path / "uninterrupted"))
    assert metric_iterations(tmp_path / "failed") == [1, 2, 3]


# ---- damaged checkpoints on resume ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(spark, tmp_path_factory) -> Path:
    """A finished 3-iteration run with checkpoints after iterations 1, 2 and 3."""
    tmp_path = tmp_path_factory.mktemp("finished")
    ddrl.train(spark, small_ppo_config(tmp_path), run_dir=tmp_path / "run")
    return tmp_path / "run"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last array: still parses as safetensors, only the checksum can tell
    path.write_bytes(bytes(data))


DAMAGE = {
    "arrays-truncated": lambda c: _truncate(c / "ckpt-000003.safetensors"),
    "arrays-one-byte-changed": lambda c: _flip_a_byte(c / "ckpt-000003.safetensors"),
    "arrays-empty": lambda c: (c / "ckpt-000003.safetensors").write_bytes(b""),
    "arrays-missing": lambda c: (c / "ckpt-000003.safetensors").unlink(),
    "sidecar-truncated": lambda c: _truncate(c / "ckpt-000003.json"),
    "sidecar-without-checksum": lambda c: (c / "ckpt-000003.json").write_text(json.dumps({"iteration": 3})),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(spark, finished_run, tmp_path, caplog, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    shutil.rmtree(run_dir / "policy")
    DAMAGE[damage](run_dir / "checkpoints")

    with caplog.at_level(logging.INFO, logger="ddrl"):
        result = ddrl.train(spark, small_ppo_config(tmp_path), resume=run_dir)

    assert any("skipping damaged checkpoint ckpt-000003" in record.getMessage() for record in caplog.records)
    assert any("resuming" in record.getMessage() and "after iteration 2" in record.getMessage() for record in caplog.records)
    assert result.iterations == 3
    assert np.array_equal(final_params(run_dir), final_params(finished_run))
    assert metric_iterations(run_dir) == [1, 2, 3]
    assert (run_dir / "policy" / "policy.safetensors").exists()


def test_every_checkpoint_damaged_restarts_from_the_beginning_with_the_same_result(spark, finished_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for path in (run_dir / "checkpoints").glob("*.safetensors"):
        _truncate(path)

    with caplog.at_level(logging.INFO, logger="ddrl"):
        result = ddrl.train(spark, small_ppo_config(tmp_path), resume=run_dir)

    messages = [record.getMessage() for record in caplog.records]
    skipped = {match for message in messages for match in re.findall(r"skipping damaged checkpoint (ckpt-\d+)", message)}
    assert skipped == {"ckpt-000001", "ckpt-000002", "ckpt-000003"}
    assert any("no valid checkpoint" in message for message in messages)
    assert result.iterations == 3
    assert np.array_equal(final_params(run_dir), final_params(finished_run))
    assert metric_iterations(run_dir) == [1, 2, 3]


# ---- the driver killed with SIGKILL mid-run, resumed from the command line on another master ---------------


def _job_env(master: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DDRL_MASTER=master,
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    )
    return env


def _start_job(args: list[str], master: str, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "jobs" / "train.py"), *args],
            env=_job_env(master),
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the JVM and workers can be cleaned up with it
        )


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of a job started by _start_job (its JVM, its Python workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_driver_killed_mid_run_resumes_on_another_master_with_the_same_bytes(spark, tmp_path):
    config = small_ppo_config(
        tmp_path,
        train={"total_env_steps": 4 * 64 * 2 * 12, "eval_every": 4},
        output={"root": str(tmp_path), "checkpoint_every": 1, "keep_checkpoints": 2},
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "killed"

    job = _start_job(["--config", str(config_path), "--run-dir", str(run_dir)], "local[2]", tmp_path / "first.log")
    try:
        kill_after = run_dir / "checkpoints" / "ckpt-000004.json"
        for _ in range(60_000):  # polls, not a time limit: the job's own pace decides
            if kill_after.exists() or job.poll() is not None:
                break
            time.sleep(0.005)
        assert job.poll() is None, "the job ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert kill_after.exists(), "checkpoint 4 never appeared"
        job.send_signal(signal.SIGKILL)
        job.wait()
    finally:
        _kill_group(job)
    assert job.returncode == -signal.SIGKILL
    assert not (run_dir / "policy").exists()

    # Meanwhile, the same config uninterrupted (on the test session's local[4,2]).
    ddrl.train(spark, config, run_dir=tmp_path / "uninterrupted")

    resumed = _start_job(["--resume", str(run_dir)], "local[3]", tmp_path / "resume.log")
    try:
        resumed.wait(timeout=600)
    finally:
        _kill_group(resumed)
    log = (tmp_path / "resume.log").read_text()
    assert resumed.returncode == 0, log[-3000:]
    assert re.search(r"resuming .* after iteration ([4-9]|1[01]) ", log), log[-3000:]
    assert np.array_equal(final_params(run_dir), final_params(tmp_path / "uninterrupted"))
    assert metric_iterations(run_dir) == list(range(1, 13))
    assert ddrl.load_policy(run_dir).act(np.zeros(4, dtype=np.float32)) in (0, 1)


# ---- not a SparkSession ----------------------------------------------------------------------------------


class _NoSparkContext:
    """Neither a classic session nor a Spark Connect one: touching ``sparkContext`` raises, as on Connect."""

    def __getattr__(self, name):
        from pyspark.errors import PySparkAttributeError

        raise PySparkAttributeError(errorClass="JVM_ATTRIBUTE_NOT_SUPPORTED", messageParameters={"attr_name": name})


@pytest.mark.parametrize("session", [_NoSparkContext(), "local[2]"], ids=["no-spark-context", "a-master-string"])
def test_something_that_is_no_spark_session_is_a_config_error_before_anything_is_written(tmp_path, session):
    with pytest.raises(ddrl.ConfigError, match=r"^spark: .* is neither a classic SparkSession .* nor a Spark Connect session"):
        ddrl.train(session, small_ppo_config(tmp_path), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- security: nothing is unpickled, YAML is safe, only the named env module is imported -------------------

_SOURCES = sorted([*(ROOT / "ddrl").rglob("*.py"), *(ROOT / "jobs").glob("*.py")])


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}


def test_sources_never_unpickle_or_load_unsafely():
    assert _SOURCES, "no sources found"
    problems = []
    for path in _SOURCES:
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|marshal|shelve)\b", text, re.M):
            problems.append(f"{path.name}: imports an unpickler")
        for node, name, keywords in _calls(path):
            where = f"{path.name}:{node.lineno}: {name}"
            if re.search(r"(^|\.)(pickle|cloudpickle|dill|joblib|marshal|shelve)\.(load|loads|open|Unpickler)$", name) or name in ("eval", "exec"):
                problems.append(where)
            elif name.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(where + " without weights_only=True")
            elif re.search(r"(^|\.)(np|numpy)\.load$", name) and keywords.get("allow_pickle") != "False":
                problems.append(where + " without allow_pickle=False")
            elif re.search(r"(^|\.)yaml\.(unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)$", name):
                problems.append(where)
            elif re.search(r"(^|\.)yaml\.load$", name) and keywords.get("Loader") not in ("_Loader", "yaml.SafeLoader", "yaml.CSafeLoader"):
                problems.append(where + f" with Loader={keywords.get('Loader')}")
    assert not problems, problems
    assert issubclass(config_module._Loader, yaml.SafeLoader)


class _Payload:
    """Unpickling this creates the file at ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_files(marker: Path) -> dict[str, bytes]:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"params": _Payload(marker)}, buffer)  # what torch.load without weights_only would execute
    return {"pickle": pickle.dumps(_Payload(marker)), "torch-save": buffer.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch-save"])
def test_a_pickle_in_place_of_a_checkpoint_is_skipped_and_never_run(finished_run, tmp_path, caplog, kind):
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    checkpoints = run_dir / "checkpoints"
    # The worst case: whoever replaced the arrays also rewrote the sidecar's checksum to match.
    (checkpoints / "ckpt-000003.safetensors").write_bytes(_hostile_files(marker)[kind])
    sidecar = json.loads((checkpoints / "ckpt-000003.json").read_text())
    sidecar["sha256"] = checkpoint._sha256(checkpoints / "ckpt-000003.safetensors")
    (checkpoints / "ckpt-000003.json").write_text(json.dumps(sidecar))

    with caplog.at_level(logging.WARNING, logger="ddrl"):
        state, meta = checkpoint.load_latest(checkpoints)

    assert meta["iteration"] == 2 and set(state) >= {"params"}
    assert any("skipping damaged checkpoint ckpt-000003" in record.getMessage() for record in caplog.records)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch-save"])
def test_a_pickle_in_place_of_a_policy_fails_to_load_and_never_runs(finished_run, tmp_path, kind):
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "policy" / "policy.safetensors").write_bytes(_hostile_files(marker)[kind])
    with pytest.raises(Exception) as raised:
        ddrl.load_policy(run_dir)
    assert "safetensor" in type(raised.value).__name__.lower() or "header" in str(raised.value).lower(), raised.value
    assert not marker.exists()


def test_yaml_with_python_tags_is_rejected_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    good = config_module.dump(config_module.load(small_ppo_config(tmp_path)))
    payloads = [
        f"!!python/object/apply:builtins.open [{str(marker)!r}, w]",
        f"!!python/object/new:builtins.open [{str(marker)!r}, w]",
        "!!python/name:os.system",
        "!!python/module:os",
    ]
    for index, payload in enumerate(payloads):
        path = tmp_path / f"hostile-{index}.yaml"
        path.write_text(good.replace("seed: 7", f"seed: {payload}"))
        with pytest.raises(ddrl.ConfigError, match=rf"^config file {re.escape(str(path))} is not valid YAML"):
            config_module.load(path)
        with pytest.raises(ddrl.ConfigError, match=r"^override seed: value .* is not valid YAML"):
            config_module.load(small_ppo_config(tmp_path), [f"seed={payload}"])
    assert not marker.exists()


def test_only_the_env_module_the_user_named_is_imported(tmp_path, monkeypatch):
    """A config can name one module to import, in env.id; no other value of it reaches an import."""
    markers = tmp_path / "imported"
    markers.mkdir()
    for name in ("ddrl_named_env_module", "ddrl_other_module"):
        (tmp_path / f"{name}.py").write_text(
            "import pathlib\n"
            f"pathlib.Path({str(markers)!r}, {name!r}).touch()\n"
            "from gymnasium.envs.classic_control.cartpole import CartPoleEnv\n"
            "class Env(CartPoleEnv):\n"
            "    pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    other = "ddrl_other_module:Env"
    config = small_ppo_config(
        tmp_path,
        env={"id": "ddrl_named_env_module:Env", "num_envs": 2, "kwargs": {"sutton_barto_reward": False}},
        name="ddrl_other_module",
    )
    Run.open(config, run_dir=tmp_path / "run")
    assert sorted(path.name for path in markers.iterdir()) == ["ddrl_named_env_module"]

    for overrides in (["algo=ddrl_other_module"], [f"ppo.activation={other}"], [f"output.root={other}"],
                      [f"env.kwargs.sutton_barto_reward={other}"], [f"env.max_episode_steps={other}"], ["algo=os"]):
        try:
            Run.open(config, overrides, run_dir=tmp_path / "run")
        except ddrl.ConfigError:
            pass
    assert sorted(path.name for path in markers.iterdir()) == ["ddrl_named_env_module"]
    assert "ddrl_other_module" not in sys.modules
    assert not (tmp_path / "run").exists()
