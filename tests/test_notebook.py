"""notebooks/quickstart.ipynb runs headless (nbclient, a fresh kernel on this venv's Python, its own local Spark)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
STEPS = 8_192  # 8 iterations of 1024 steps: far from solved, well past a random policy (about 20)


def kernel_spec(directory: Path) -> str:
    """A kernel spec for exactly this interpreter (not whatever 'python3' resolves to on PATH)."""
    spec_dir = directory / "kernels" / "ddrl-test-python"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "ddrl test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir.name


def test_quickstart_notebook_trains_plots_and_evaluates(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source += f"\nTOTAL_ENV_STEPS = {STEPS}\nRUN_ROOT = {str(tmp_path / 'runs')!r}\nEXPERIENCE = {str(tmp_path / 'experience')!r}\n"

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("DDRL_MLFLOW", "0")
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)  # the notebook sets it from the kernel's Python
    name = kernel_spec(tmp_path / "jupyter")
    client = nbclient.NotebookClient(
        notebook, kernel_name=name, timeout=600, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert f"after {STEPS} env steps, 8 iterations" in text
    assert "CartPole-v1: return" in text
    assert "|iteration|transitions|episodes_ended|reward_per_episode|" in text  # the SQL over the recorded transitions
    assert "agreement of the tasks' actions with the trained policy's" in text
    assert len(list((tmp_path / "experience").glob("iteration-*-task-*.parquet"))) == 8 * 2
    assert any("image/png" in output.get("data", {}) for output in outputs), "no inline learning curve"

    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "learning_curve.png").exists()
    evaluation = float(text.split("CartPole-v1: return ")[1].split()[0])
    assert evaluation > 100, f"the notebook's policy did not learn: {evaluation}"
    train_returns = pd.read_parquet(run_dirs[0] / "metrics").sort_values("iteration")["episode_return_mean"].tolist()
    assert train_returns[-1] > 2 * train_returns[0], f"training return did not grow: {train_returns}"
