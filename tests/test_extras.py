"""The lean first-command venv (requirements.txt) trains without the test extras, and a missing optional package
gets one line naming the extra that brings it."""

from __future__ import annotations

import importlib.abc
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, environment_without_this_checkout, small_ppo_config

import ddrl
from ddrl import extras
from ddrl.run import Run

LEAN = {"torch", "pyspark", "gymnasium", "numpy", "pyarrow", "pyyaml", "safetensors", "pydantic"}
TEST_EXTRAS = ["ale_py", "cv2", "minatar", "envpool", "mlflow", "matplotlib", "pygame", "pandas", "nbclient",
               "nbformat", "ipykernel", "venv_pack", "grpc", "grpc_status", "zstandard", "pytest"]
"""Modules of requirements-test.txt that requirements.txt does not bring (pillow it does: imageio, for MuJoCo, needs it)."""


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def _requirement_names(path: Path) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", line)[0].lower() for line in _requirement_lines(path)}


def test_the_first_command_installs_the_lean_set_and_the_test_command_adds_the_rest():
    lean, test = _requirement_names(ROOT / "requirements.txt"), _requirement_names(ROOT / "requirements-test.txt")
    assert lean == LEAN
    assert (ROOT / "requirements-test.txt").read_text().splitlines().count("-r requirements.txt") == 1
    assert not lean & test and {"ale-py", "envpool", "mlflow-skinny", "pytest", "matplotlib", "venv-pack", "grpcio"} <= test


LEAN_RUN = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from pyspark.sql import SparkSession
import ddrl
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
for config, steps in (("conf/cartpole_ppo.yaml", 256), ("conf/halfcheetah_ppo.yaml", 128)):
    result = ddrl.train(spark, config, overrides=[f"train.total_env_steps={2 * steps}", "ppo.num_steps=" + str(steps // 2),
                        "train.final_eval_episodes=1", "train.eval_episodes=1", f"output.root={sys.argv[1]}"])
    print(config, result.iterations, result.env_steps)
spark.stop()
"""


def lean_venv(path: Path) -> Path:
    """A venv that holds exactly what requirements.txt installs, as symlinks into this venv's packages (its
    dependency closure, from the installed distributions' metadata); returns its Python."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site = path / "site"
    site.mkdir(parents=True)
    wanted = [Requirement(name) for name in _requirement_lines(ROOT / "requirements.txt")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while wanted:
        requirement = wanted.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        distribution = metadata.distribution(requirement.name)
        for dependency in map(Requirement, distribution.requires or []):
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": extra}) for extra in [""] + sorted(requirement.extras)):
                wanted.append(dependency)
        for top in {Path(str(file)).parts[0] for file in distribution.files or []} - {".."}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path / "venv")], check=True)
    python = path / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "lean.pth").write_text(f"{site}\n")
    return python


def test_cartpole_and_halfcheetah_train_in_a_venv_of_requirements_txt_alone(tmp_path):
    python = lean_venv(tmp_path / "lean")
    missing = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % TEST_EXTRAS],
                             capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == "[]"  # none of the test extras is there
    environment = {**environment_without_this_checkout(), "PYSPARK_PYTHON": str(python), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(python), "-c", LEAN_RUN, str(tmp_path / "runs")], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"conf/cartpole_ppo.yaml [1-9]\d* ", done.stdout) and "conf/halfcheetah_ppo.yaml 1 256" in done.stdout
    assert extras.missing("matplotlib", "the learning-curve PNG") in done.stdout + done.stderr


class _Blocked(importlib.abc.MetaPathFinder):
    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def block(monkeypatch):
    def blocking(*names: str) -> None:
        monkeypatch.setattr(sys, "meta_path", [_Blocked(*names), *sys.meta_path])
        for loaded in [module for module in sys.modules if module.split(".")[0] in names]:
            monkeypatch.delitem(sys.modules, loaded)
    return blocking


@pytest.mark.parametrize("env, extra", [
    ({"id": "CartPole-v1", "num_envs": 4, "envpool": {"id": "CartPole-v1"}}, "envpool"),
    ({"id": "ale_py:ALE/Pong-v5", "num_envs": 4}, "atari"),
    ({"id": "minatar.gym:BaseEnv", "num_envs": 4, "kwargs": {"game": "breakout"}}, "minatar"),
])
def test_a_missing_optional_package_gets_one_line_naming_its_extra(tmp_path, block, env, extra):
    block("envpool", "ale_py", "minatar")
    with pytest.raises(ddrl.ConfigError) as raised:
        Run.open(small_ppo_config(tmp_path, env=env, ppo={"carry_episodes": False}))  # EnvPool cannot carry episodes
    message = str(raised.value)
    assert "\n" not in message and f"pip install 'ddrl[{extra}]'" in message and "which is not installed" in message


def test_the_plot_job_names_the_plots_extra(tmp_path, block, capsys):
    from jobs import plot

    block("matplotlib")
    assert plot.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "ddrl: " + extras.missing("matplotlib", "jobs/plot.py")
