"""The package installs: a wheel built from pyproject.toml, installed into a fresh venv, imports from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, environment_without_this_checkout, fresh_venv


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_installs_into_a_fresh_venv_and_imports_outside_the_repository(tmp_path):
    env = environment_without_this_checkout()  # else pip finds this checkout's metadata and installs nothing
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("ddrl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    assert top_level == {"ddrl", wheel.name.split("-py3")[0] + ".dist-info"}  # the library only: no tests, jobs, conf

    python = fresh_venv(tmp_path / "venv", with_pip=True)  # the dependencies come from this venv; ddrl from the wheel
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = _run([str(python), "-c", "import ddrl; print(ddrl.__file__); print(ddrl.train.__name__, ddrl.load_policy.__name__)"], elsewhere, env)
    location, names = printed.splitlines()
    assert Path(location).is_relative_to(tmp_path / "venv") and names == "train load_policy"


def test_the_projects_venv_imports_ddrl_from_any_directory(tmp_path):
    printed = _run([sys.executable, "-c", "import ddrl; print(ddrl.__file__)"], tmp_path, environment_without_this_checkout())
    assert Path(printed.strip()) == ROOT / "ddrl" / "__init__.py"  # an editable install of this checkout
