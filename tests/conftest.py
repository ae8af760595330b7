"""Shared fixtures: one real SparkSession for the whole test session (local[4,2]: 4 task slots on the 2 cores, so that barrier stages of up to 4 tasks run; 2 attempts per task)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: opt-in (minutes, or a multi-process cluster); run with DDRL_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DDRL_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="opt-in: set DDRL_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def spark():
    # Executors start Python workers from PYSPARK_PYTHON and inherit PYTHONPATH, not the driver's cwd.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[4,2]")
        .appName("ddrl-tests")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: a second intra-op thread only adds contention (and 0.4 s per model on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_ppo_config(tmp_path: Path, **sections) -> dict:
    """A CartPole PPO config small enough for a test iteration to take well under a second."""
    config = {
        "name": "test",
        "seed": 7,
        "algo": "ppo",
        "env": {"id": "CartPole-v1", "num_envs": 4},
        "spark": {"num_tasks": 2, "tree_depth": 2},
        "train": {"total_env_steps": 4 * 64 * 2 * 3, "eval_every": 1, "eval_episodes": 2, "final_eval_episodes": 2},
        "output": {"root": str(tmp_path), "checkpoint_every": 1},
        "ppo": {"num_steps": 64, "update_epochs": 2, "num_minibatches": 2},
    }
    return with_sections(config, **sections)


def small_es_config(tmp_path: Path, **sections) -> dict:
    """A CartPole OpenAI-ES config; ``sections`` update (dicts) or replace the named sections."""
    config = {
        "name": "test-es",
        "seed": 3,
        "algo": "es",
        "env": {"id": "CartPole-v1", "num_envs": 16},
        "spark": {"num_tasks": 2, "tree_depth": 2},
        "train": {"total_env_steps": 300_000, "target_return": 500.0, "eval_every": 1, "eval_episodes": 10, "final_eval_episodes": 20},
        "output": {"root": str(tmp_path), "checkpoint_every": 5},
        "es": {"variant": "openai", "num_directions": 32, "sigma": 0.1, "learning_rate": 0.05},
    }
    return with_sections(config, **sections)


def final_params(run_dir: Path) -> Any:
    """The parameters of a run's latest checkpoint."""
    from ddrl import checkpoint

    state, _ = checkpoint.load_latest(Path(run_dir) / "checkpoints")
    return state["params"]


def flaky_config(tmp_path: Path, **env_kwargs) -> dict:
    """``small_ppo_config`` on ``faulty_envs.FlakyCartPole`` (tasks that raise once, each with a marker of its own)."""
    env = {"id": "faulty_envs:FlakyCartPole", "num_envs": 4, "max_episode_steps": 500, "kwargs": {"marker": fault_marker(tmp_path), **env_kwargs}}
    return small_ppo_config(tmp_path, env=env)


def fault_marker(tmp_path: Path) -> str:
    """A path of its own, for faults that happen once (``faulty_envs._first_time``)."""
    import uuid

    return str(tmp_path / f"fault-{uuid.uuid4().hex[:8]}")


def nan_config(tmp_path: Path, partitions: list[int]) -> dict:
    """``small_ppo_config`` on ``faulty_envs.NaNRewardCartPole`` (NaN rewards in the tasks of ``partitions``), under
    spark.sync: parameters, where the other tasks' results go on (under gradients one task's NaN reaches every task
    through the all-reduce, and the iteration is rejected whole: tests/test_sync.py)."""
    env = {"id": "faulty_envs:NaNRewardCartPole", "num_envs": 4, "max_episode_steps": 500, "kwargs": {"nan_partitions": partitions}}
    return small_ppo_config(tmp_path, env=env, spark={"num_tasks": 2, "tree_depth": 2, "sync": "parameters"})


def fresh_venv(path: Path, with_pip: bool = False) -> Path:
    """A new venv at ``path`` that sees this venv's packages (torch alone is 700 MB) through a .pth line, but not
    ddrl: .pth files of the packages' folder (ddrl's editable install) are not processed through such a line.
    Returns its Python."""
    import subprocess
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], check=True,
                   env=environment_without_this_checkout())
    python = path / "bin" / "python"
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def environment_without_this_checkout() -> dict[str, str]:
    """This process's environment variables without PYTHONPATH (which holds this checkout under the test command)."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def with_sections(config: dict, **sections) -> dict:
    """``config`` with each named section updated (dict values) or replaced (anything else)."""
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config
