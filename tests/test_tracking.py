"""Tracking and results: MLflow observer, learning-curve PNGs, the plot job, metrics read back with Spark and pandas."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import small_ppo_config

import ddrl
from ddrl import config as config_module
from ddrl import envs, tracking
from ddrl.plots import CURVE_FILE, learning_curve, read_metrics
from ddrl.run import Run
from ddrl.tracking import LearningCurveObserver, MlflowObserver, default_observers, flatten, mlflow_enabled

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION", "DDRL_MLFLOW", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, no_mlflow_env):
    """A local MLflow file store (mlflow 3 wants MLFLOW_ALLOW_FILE_STORE for it; sqlite needs the full mlflow)."""
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ddrl-tests")
    yield mlflow.MlflowClient(uri)
    tracking._end_runs()


# ---- switching MLflow on and off (no Spark) ------------------------------------------------------------------
@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}, True),
        ({"DATABRICKS_RUNTIME_VERSION": "16.4"}, True),
        ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "DDRL_MLFLOW": "0"}, False),
        ({"DDRL_MLFLOW": "1"}, True),
        ({"DDRL_MLFLOW": "off", "DATABRICKS_RUNTIME_VERSION": "16.4"}, False),
    ],
)
def test_mlflow_is_on_with_a_tracking_uri_or_databricks_and_env_var_forces_it(environ, expected):
    assert mlflow_enabled(environ) is expected


def test_default_observers(monkeypatch, no_mlflow_env):
    assert [type(o) for o in default_observers()] == [LearningCurveObserver]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert [type(o) for o in default_observers()] == [LearningCurveObserver, MlflowObserver]


def test_flatten_gives_dotted_keys():
    flat = flatten({"name": "x", "env": {"id": "CartPole-v1", "kwargs": {}}, "es": {"hidden_sizes": [64, 64]}})
    assert flat == {"name": "x", "env.id": "CartPole-v1", "env.kwargs": "{}", "es.hidden_sizes": "[64, 64]"}


def test_a_failing_tracking_store_warns_and_does_not_raise(tmp_path, monkeypatch, no_mlflow_env, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknown-scheme://nowhere")
    run = Run.open(small_ppo_config(tmp_path), run_dir=tmp_path / "run")
    observer = MlflowObserver()
    with caplog.at_level(logging.WARNING, logger="ddrl"):
        observer.on_start(run)
        observer.on_iteration(1, {"env_steps": 10, "episode_return_mean": 1.0})
    assert observer.failed and "MLflow: on_start failed" in caplog.text


# ---- learning curves and the plot job (no Spark) -------------------------------------------------------------
def fake_run(tmp_path, name: str, iterations: int, restart_at: int | None = None):
    """A run directory with metrics only, as a (possibly resumed) run writes them."""
    run = Run.open(small_ppo_config(tmp_path, name=name), run_dir=tmp_path / name)
    run.create()
    wall = 0.0
    for iteration in range(1, iterations + 1):
        wall = 1.0 if iteration == restart_at else wall + 2.0  # a resumed process restarts its clock
        evaluation = 10.0 * iteration if iteration % 2 == 0 else math.nan
        run.write_metrics(iteration, {"iteration": iteration, "env_steps": 512 * iteration, "wall_s": wall,
                                      "episode_return_mean": 5.0 * iteration, "eval_return_mean": evaluation,
                                      "eval_return_std": 1.0})
    return run.directory


def test_learning_curve_has_two_panels_with_train_and_eval_of_every_run(tmp_path):
    runs = [fake_run(tmp_path, "first", 6), fake_run(tmp_path, "second", 4)]
    figure = learning_curve(runs)
    by_steps, by_time = figure.axes
    labels = [line.get_label() for line in by_steps.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["first train", "first eval", "second train", "second eval", "target 475"]
    assert by_steps.get_xlabel() == "env steps" and by_time.get_xlabel() == "wall time (s)"
    eval_line = by_steps.get_lines()[1]
    np.testing.assert_array_equal(eval_line.get_xdata(), [1024, 2048, 3072])  # NaN evaluations are skipped
    assert any(line.get_ydata()[0] == 475.0 for line in by_steps.get_lines())  # CartPole's reward threshold


def test_wall_time_is_cumulative_across_a_resume(tmp_path):
    metrics = read_metrics(fake_run(tmp_path, "resumed", 5, restart_at=4))
    np.testing.assert_array_equal(metrics["wall_s"], [2.0, 4.0, 6.0, 7.0, 9.0])


def test_plot_job_overlays_runs_into_one_png(tmp_path, capsys):
    from jobs import plot

    runs = [fake_run(tmp_path, "first", 3), fake_run(tmp_path, "second", 3)]
    out = tmp_path / "out" / "curve.png"
    assert plot.main([str(runs[0]), str(runs[1]), "--out", str(out), "--label", "a", "--label", "b"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and capsys.readouterr().out.strip() == str(out)
    assert plot.main([str(runs[0])]) == 0
    assert (runs[0] / CURVE_FILE).read_bytes()[:8] == PNG_MAGIC
    assert plot.main([str(tmp_path / "missing")]) == 2


# ---- real training runs on the session's Spark -----------------------------------------------------------------
def test_run_writes_learning_curve_and_metrics_read_back_with_spark_and_pandas(spark, tmp_path, no_mlflow_env):
    config = config_module.load(small_ppo_config(tmp_path))  # a Config object is accepted too
    result = ddrl.train(spark, config, run_dir=tmp_path / "run")

    assert (tmp_path / "run" / CURVE_FILE).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "run" / tracking.MLFLOW_RUN_FILE).exists()  # MLflow off without a tracking URI

    frame = spark.read.parquet(str(tmp_path / "run" / "metrics"))
    assert frame.count() == result.iterations == 3
    rows = frame.orderBy("iteration").select("iteration", "env_steps", "eval_return_mean").collect()
    assert [row.iteration for row in rows] == [1, 2, 3] and rows[-1].env_steps == result.env_steps

    table = pd.read_parquet(tmp_path / "run" / "metrics").sort_values("iteration")
    assert table["iteration"].tolist() == [1, 2, 3]
    assert table["env_steps"].tolist() == [row.env_steps for row in rows]
    assert {"episode_return_mean", "eval_return_mean", "wall_s", "steps_per_s"} <= set(table.columns)


@pytest.mark.filterwarnings("ignore:No complete tensor found:UserWarning")  # torch.export loading the logged model
def test_mlflow_logs_params_metric_history_artifacts_and_model(spark, tmp_path, mlflow_store):
    import mlflow

    config_path = tmp_path / "config.yaml"  # a YAML path is accepted too
    config_path.write_text(yaml.safe_dump(small_ppo_config(tmp_path)))
    observers = default_observers()
    assert [type(o) for o in observers] == [LearningCurveObserver, MlflowObserver]
    result = ddrl.train(spark, str(config_path), run_dir=tmp_path / "run", observers=observers)

    run_id = json.loads((tmp_path / "run" / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
    run = mlflow_store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert mlflow_store.get_experiment(run.info.experiment_id).name == "ddrl-tests"
    params = run.data.params
    assert params["algo"] == "ppo" and params["env.id"] == "CartPole-v1" and params["ppo.num_steps"] == "64"
    assert params["run_dir"] == str(tmp_path / "run") and run.data.tags["ddrl.env"] == "CartPole-v1"

    history = mlflow_store.get_metric_history(run_id, "episode_return_mean")
    assert [point.step for point in sorted(history, key=lambda p: p.step)] == [512, 1024, 1536]
    assert sorted(p.value for p in mlflow_store.get_metric_history(run_id, "iteration")) == [1.0, 2.0, 3.0]
    assert run.data.metrics["final_eval_return_mean"] == pytest.approx(result.eval_return_mean)

    artifacts = {item.path for item in mlflow_store.list_artifacts(run_id)}
    assert {"config.yaml", CURVE_FILE, "policy", "best"} <= artifacts
    assert run.data.metrics["best_eval_return"] == pytest.approx(result.best_eval_return)
    assert {item.path for item in mlflow_store.list_artifacts(run_id, "policy")} == {"policy/policy.json", "policy/policy.safetensors"}
    downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="policy", dst_path=str(tmp_path / "download"))
    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.testing.assert_array_equal(ddrl.load_policy(downloaded).act(observations), result.policy.act(observations))

    served = mlflow.pyfunc.load_model(observers[1].model_uri)  # the serving module, normalization included
    np.testing.assert_array_equal(np.asarray(served.predict(observations)), result.policy.act(observations))
    served_best = mlflow.pyfunc.load_model(observers[1].best_model_uri)
    best = ddrl.load_policy(result.run_dir, best=True)
    np.testing.assert_array_equal(np.asarray(served_best.predict(observations)), best.act(observations))

    # Resuming the (finished) run continues the same MLflow run instead of starting another.
    ddrl.train(spark, str(config_path), resume=tmp_path / "run", observers=[MlflowObserver(log_model=False)])
    assert json.loads((tmp_path / "run" / tracking.MLFLOW_RUN_FILE).read_text())["run_id"] == run_id
    assert len(mlflow_store.search_runs([run.info.experiment_id])) == 1
    assert mlflow_store.get_run(run_id).info.status == "FINISHED"


def test_mlflow_serves_image_policies_and_keeps_dict_policies_as_artifacts(spark, tmp_path, mlflow_store):
    import mlflow

    from jobs import evaluate

    for env_name in ("SideOfTheLightEnv", "PickTwoEnv"):
        env = {"id": f"envs_for_tests:{env_name}", "num_envs": 4}
        config = small_ppo_config(tmp_path, env=env, ppo={"num_steps": 16, "hidden_sizes": [8]}, train={"total_env_steps": 2 * 4 * 16 * 2})
        observer = MlflowObserver()
        result = ddrl.train(spark, config, run_dir=tmp_path / env_name, observers=[observer])
        run_id = json.loads((tmp_path / env_name / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
        downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="policy", dst_path=str(tmp_path / f"{env_name}-download"))
        vector_env = envs.make_evaluation_env(config_module.load(config).env, 8)
        observations, _ = vector_env.reset(seed=list(range(8)))
        vector_env.close()
        np.testing.assert_array_equal(ddrl.load_policy(downloaded).act(observations), result.policy.act(observations))
        if env_name == "SideOfTheLightEnv":  # one uint8 array in: MLflow's torch flavor serves it
            served = mlflow.pyfunc.load_model(observer.model_uri)
            np.testing.assert_array_equal(np.asarray(served.predict(observations)), result.policy.act(observations))
        else:  # a Dict: no served model, the policy artifacts only
            assert observer.model_uri is None
        assert evaluate.main([str(tmp_path / env_name), "--episodes", "4"]) == 0


def test_a_sweep_logs_a_parent_run_with_a_child_run_per_trial(spark, tmp_path, mlflow_store):
    config = small_ppo_config(tmp_path, train={"total_env_steps": 2 * 4 * 64 * 2})
    result = ddrl.sweep(spark, config, grid={"ppo.learning_rate": [1e-3, 3e-3]}, out=tmp_path / "sweep")
    parent_id = json.loads((tmp_path / "sweep" / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
    parent = mlflow_store.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ddrl.sweep_dir"] == str(tmp_path / "sweep")
    assert parent.data.params["sweep.grid.ppo.learning_rate"] == "[0.001, 0.003]"
    assert parent.data.metrics["best_eval_return_mean"] == pytest.approx(result.best.eval_return_mean)
    assert {"sweep.parquet", "sweep.png", "summary.txt", "best_policy"} <= {item.path for item in mlflow_store.list_artifacts(parent_id)}
    children = mlflow_store.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(child.info.run_name for child in children) == ["trial-000", "trial-001"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["ppo.learning_rate"] in ("0.001", "0.003")
        assert len(mlflow_store.get_metric_history(child.info.run_id, "eval_return_mean")) == 2
        assert json.loads((tmp_path / "sweep" / "trials" / child.info.run_name / tracking.MLFLOW_RUN_FILE).read_text())["run_id"] == child.info.run_id


def test_a_failed_trial_ends_its_child_run_failed_with_the_reason(spark, tmp_path, mlflow_store):
    config = small_ppo_config(tmp_path, env={"id": "faulty_envs:BrokenCartPole", "num_envs": 4, "max_episode_steps": 500},
                              train={"total_env_steps": 2 * 4 * 64 * 2})
    result = ddrl.sweep(spark, config, grid={"env.kwargs.nan": [False, True]}, out=tmp_path / "sweep")
    parent_id = json.loads((tmp_path / "sweep" / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
    parent = mlflow_store.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 1
    children = {child.info.run_name: child for child in mlflow_store.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")}
    assert children["trial-000"].info.status == "FINISHED" and children["trial-001"].info.status == "FAILED"
    assert children["trial-001"].data.tags["ddrl.failure"] == result.trials[1].reason
    assert "every task's result was rejected" in result.trials[1].reason
