"""Executors whose Python lacks ddrl's requirements: one line naming the module, their Python and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ddrl
from conftest import small_ppo_config
from ddrl.engines import guard
from ddrl.trainer import TrainingError


def test_executors_without_torch_get_a_one_line_error(spark, tmp_path, monkeypatch):
    bare = tmp_path / "bare"  # a real venv of this Python with nothing installed: no torch, numpy, pydantic
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    bare_python = str(bare / "bin" / "python")
    monkeypatch.setattr(spark.sparkContext, "pythonExec", bare_python)  # what PYSPARK_PYTHON would have set

    with pytest.raises(TrainingError) as raised:
        ddrl.train(spark, small_ppo_config(tmp_path), observers=[])

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"iteration 1: the executors' Python ({bare_python}) cannot import '")
    assert f"PYSPARK_PYTHON={sys.executable}" in message and "--ship-env" in message and "%pip install" in message


def test_a_guarded_task_runs_as_the_task_and_passes_other_errors_on():
    run = guard.guarded(lambda x, offset: iter([x + offset, x]), 10)
    assert list(run(1)) == [11, 1]
    assert guard.guarded(lambda x: x * 2)(3) == 6
    assert guard.guarded(lambda x, y: x - y, arguments=2)(3, 1) == 2
    with pytest.raises(ValueError):
        guard.guarded(lambda x: int(x))("x")
    assert guard.explain(ValueError("boom")) is None
