"""Policies that score tables (``ddrl.score``) on classic and Spark Connect sessions, against ``Policy.act``; the
critic and log std a saved PPO policy carries; MLflow's ``spark_udf`` against ``ddrl.score``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, environment_without_this_checkout, fresh_venv, small_ppo_config

import ddrl
from ddrl import config as config_module
from ddrl import envs
from ddrl.algorithms.ppo import PPO
from ddrl.networks import head
from ddrl.policy import POLICY_WEIGHTS, Policy, load_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 48


def ppo_policy(tmp_path, env_id: str) -> Policy:
    """An untrained PPO policy of ``env_id`` with a random output layer: no near-ties between actions (its
    initialization's gain of 0.01 makes them everywhere)."""
    config = config_module.load(small_ppo_config(tmp_path, env={"id": env_id, "num_envs": 2}, ppo={"hidden_sizes": [16]}))
    algorithm = PPO(config, envs.describe(config.env))
    policy = algorithm.policy(algorithm.initial_state())
    torch.manual_seed(0)
    with torch.no_grad():
        head(policy.actor)[-1].weight.normal_(0.0, 3.0)
    return policy


def observations(env_id: str, rows: int = ROWS):
    """Observations of ``env_id`` as ``Policy.act`` takes them, and as DataFrame rows (plain Python values)."""
    rng = np.random.default_rng(5)
    if env_id == "CartPole-v1":
        batch = rng.normal(size=(rows, 4)).astype(np.float32)
        return batch, [(index, row.tolist()) for index, row in enumerate(batch)]
    if env_id == "envs_for_tests:ImageObservationEnv":
        brightness = rng.uniform(0.0, 1.0, size=(rows, 1, 1, 1))  # images that differ more than in their noise
        batch = (brightness * rng.integers(0, 256, size=(rows, 8, 8, 3))).astype(np.uint8)
        return batch, [(index, row.tolist()) for index, row in enumerate(batch)]
    target, offset = rng.integers(0, 3, size=rows), rng.uniform(-1.0, 1.0, size=(rows, 1)).astype(np.float32)
    return {"target": target, "offset": offset}, [(index, (int(t), o.tolist())) for index, (t, o) in enumerate(zip(target, offset))]


SCHEMAS = {
    "CartPole-v1": "id long, observation array<double>",
    "envs_for_tests:ImageObservationEnv": "id long, observation array<array<array<int>>>",
    "envs_for_tests:PickTwoEnv": "id long, observation struct<target: int, offset: array<float>>",
}


def scored(df, column: str = "action") -> list:
    return [row[column] for row in sorted(df.collect(), key=lambda row: row.id)]


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---- the policy's critic and log std (no Spark) --------------------------------------------------------------
def test_a_saved_ppo_policy_keeps_its_critic_and_log_std(tmp_path):
    image = ppo_policy(tmp_path, "envs_for_tests:ImageObservationEnv")
    batch, _ = observations("envs_for_tests:ImageObservationEnv")
    loaded = load_policy(image.save(tmp_path / "image"))
    np.testing.assert_array_equal(loaded.value(batch), image.value(batch))
    assert loaded.value(batch[0]).shape == () and loaded.value(batch).shape == (ROWS,)
    assert loaded.critic.encoders is loaded.actor.encoders  # shared as in training, and saved once
    assert not any(name.startswith("critic.encoders.") for name in saved_tensor_names(tmp_path / "image"))

    box = ppo_policy(tmp_path, "envs_for_tests:TinyBoxEnv")
    np.testing.assert_array_equal(box.log_std, np.zeros(2, dtype=np.float32))  # ppo.log_std_init
    loaded = load_policy(box.save(tmp_path / "box"))
    np.testing.assert_array_equal(loaded.log_std, box.log_std)
    with pytest.raises(ValueError, match="Box action policy has no action probabilities: it has a Gaussian's mean"):
        loaded.action_probabilities(np.zeros(3, dtype=np.float32))

    old = Policy(box.actor, box.env, box.architecture)  # as ES, and ddrl before critics were kept, save them
    loaded = load_policy(old.save(tmp_path / "old"))
    assert loaded.critic is None and loaded.log_std is None
    with pytest.raises(ValueError, match="has no critic"):
        loaded.value(np.zeros(3, dtype=np.float32))


def saved_tensor_names(directory) -> list[str]:
    from safetensors.numpy import load_file

    return list(load_file(str(directory / POLICY_WEIGHTS)))


def test_action_probabilities_follow_the_greedy_action(tmp_path):
    cartpole = ppo_policy(tmp_path, "CartPole-v1")
    batch, _ = observations("CartPole-v1")
    probabilities = cartpole.action_probabilities(batch)
    assert probabilities.shape == (ROWS, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), cartpole.act(batch))
    masked = cartpole.action_probabilities(batch, action_mask=np.array([[False, True]] * ROWS))
    np.testing.assert_array_equal(masked, [[0.0, 1.0]] * ROWS)

    pick = ppo_policy(tmp_path, "envs_for_tests:PickTwoEnv")  # MultiDiscrete([3, 2]): each dimension's softmax
    batch, _ = observations("envs_for_tests:PickTwoEnv")
    probabilities = pick.action_probabilities(batch)
    np.testing.assert_allclose(probabilities[:, :3].sum(axis=1), 1.0)
    np.testing.assert_allclose(probabilities[:, 3:].sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.stack([probabilities[:, :3].argmax(1), probabilities[:, 3:].argmax(1)], 1), pick.act(batch))


# ---- ddrl.score on the classic session ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", list(SCHEMAS))
def test_score_gives_the_actions_of_policy_act(spark, tmp_path, env_id):
    policy = ppo_policy(tmp_path, env_id)
    batch, rows = observations(env_id)
    df = spark.createDataFrame(rows, SCHEMAS[env_id]).repartition(3)
    result = ddrl.score(df, policy, probabilities="probabilities", value="value", batch_rows=7)
    assert result.columns == ["id", "observation", "action", "probabilities", "value"]
    expected = policy.act(batch)
    assert len(np.unique(expected, axis=0)) > 1  # not a constant policy: the comparison means something
    np.testing.assert_array_equal(np.array(scored(result)), expected)
    probabilities = np.array(scored(result, "probabilities"))
    np.testing.assert_allclose(probabilities, policy.action_probabilities(batch), rtol=1e-5, atol=1e-7)  # other batch sizes
    np.testing.assert_allclose(np.array(scored(result, "value")), policy.value(batch), rtol=1e-5, atol=1e-6)
    if env_id != "envs_for_tests:PickTwoEnv":  # Discrete: the action is the most probable one
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
        np.testing.assert_array_equal(probabilities.argmax(axis=1), expected)


def test_score_reads_flat_images_column_lists_key_mappings_and_policy_directories(spark, tmp_path):
    image = ppo_policy(tmp_path, "envs_for_tests:ImageObservationEnv")
    batch, _ = observations("envs_for_tests:ImageObservationEnv")
    flat = spark.createDataFrame([(index, row.reshape(-1).tolist()) for index, row in enumerate(batch)], "id long, pixels array<int>")
    np.testing.assert_array_equal(scored(ddrl.score(flat, image, observation="pixels")), image.act(batch))

    cartpole = ppo_policy(tmp_path, "CartPole-v1")
    batch, _ = observations("CartPole-v1")
    columns = spark.createDataFrame([(index, *map(float, row)) for index, row in enumerate(batch)], "id long, x double, v double, a double, w double")
    cartpole.save(tmp_path / "run" / "policy")
    result = ddrl.score(columns, str(tmp_path / "run"), observation=["x", "v", "a", "w"], output="push")  # a run directory
    np.testing.assert_array_equal(scored(result, "push"), cartpole.act(batch))

    pick = ppo_policy(tmp_path, "envs_for_tests:PickTwoEnv")
    batch, _ = observations("envs_for_tests:PickTwoEnv")
    split = spark.createDataFrame([(index, int(t), o.tolist()) for index, (t, o) in enumerate(zip(batch["target"], batch["offset"]))],
                                  "id long, goal long, shift array<double>")
    result = ddrl.score(split, pick, observation={"target": "goal", "offset": "shift"})
    np.testing.assert_array_equal(np.array(scored(result)), pick.act(batch))


def test_score_of_a_box_policy_gives_flat_float_actions(spark, tmp_path):
    box = ppo_policy(tmp_path, "envs_for_tests:TinyBoxEnv")
    batch = np.random.default_rng(2).uniform(-1, 1, size=(ROWS, 3)).astype(np.float32)
    df = spark.createDataFrame([(index, row.tolist()) for index, row in enumerate(batch)], "id long, observation array<float>")
    result = ddrl.score(df, box, value="value")
    assert dict(result.dtypes)["action"] == "array<float>"
    np.testing.assert_array_equal(np.array(scored(result), dtype=np.float32), box.act(batch))


# ---- bad data ----------------------------------------------------------------------------------------------------
def test_bad_columns_are_refused_before_any_job_with_one_line_naming_the_column(spark, tmp_path):
    cartpole = ppo_policy(tmp_path, "CartPole-v1")
    df = spark.createDataFrame([(0, [0.0] * 4, "a")], "id long, observation array<double>, name string")
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(df, cartpole, observation="obs")
    assert one_line(error) == "score: no column 'obs' in the DataFrame (its columns: id, observation, name)"
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(df, cartpole, observation="name")
    assert one_line(error).startswith("score: column 'name' is string; the observation, box of shape (4,), needs array<numbers>")
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(df, cartpole, output="name")
    assert "output column(s) name must be new" in one_line(error)
    with pytest.raises(ddrl.ConfigError, match="Box actions have no probabilities"):
        ddrl.score(df, ppo_policy(tmp_path, "envs_for_tests:TinyBoxEnv"), probabilities="p")

    image = ppo_policy(tmp_path, "envs_for_tests:ImageObservationEnv")
    rows = spark.createDataFrame([(0, [[1.0] * 24] * 8)], "id long, observation array<array<double>>")
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(rows, image)
    assert one_line(error) == ("score: column 'observation' is array<array<double>>; the observation, image of shape (8, 8, 3), needs "
                               "array<array<array<numbers>>> or one array of 192 numbers")

    pick = ppo_policy(tmp_path, "envs_for_tests:PickTwoEnv")
    structs = spark.createDataFrame([(0, (1, [0.5]))], "id long, observation struct<goal: int, offset: array<float>>")
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(structs, pick)
    assert one_line(error) == "score: column 'observation' has no field 'target' for the observation part 'target' (it has: goal, offset)"
    with pytest.raises(ddrl.ConfigError) as error:
        ddrl.score(structs, pick, observation={"target": "id"})
    assert "must map each part" in one_line(error) and "missing offset" in one_line(error)


def test_an_observation_of_the_wrong_length_fails_its_task_naming_the_column(spark, tmp_path):
    cartpole = ppo_policy(tmp_path, "CartPole-v1")
    df = spark.createDataFrame([(0, [0.0] * 4), (1, [0.0] * 5)], "id long, observation array<double>")
    with pytest.raises(Exception) as error:
        ddrl.score(df, cartpole).collect()
    assert "score: column 'observation' holds an observation of 5 values where the observation space's shape (4,) needs 4" in str(error.value)
    image = ppo_policy(tmp_path, "envs_for_tests:ImageObservationEnv")
    frames = spark.createDataFrame([(0, [[[0] * 3] * 8] * 7)], "id long, observation array<array<array<int>>>")
    with pytest.raises(Exception) as error:
        ddrl.score(frames, image).collect()
    assert "score: column 'observation' holds an observation of 7 values on axis 0 where the observation space's shape (8, 8, 3) needs 8" in str(error.value)
    nulls = spark.createDataFrame([(0, None)], "id long, observation array<double>")
    with pytest.raises(Exception, match="score: column 'observation' holds 1 null value"):
        ddrl.score(nulls, cartpole).collect()


# ---- Spark Connect -----------------------------------------------------------------------------------------------
def test_score_on_spark_connect_gives_the_actions_of_policy_act(tmp_path):
    """A Connect session in a process of its own (``score_connect_session.py``), whose Python lacks ddrl: ddrl.score
    ships it as ddrl.train does."""
    for module in ("grpc", "grpc_status", "google.rpc", "zstandard", "pandas"):
        pytest.importorskip(module, reason="Spark Connect needs pyspark[connect]")
    scenarios, expected = [], {}
    for name, env_id in (("vector", "CartPole-v1"), ("image", "envs_for_tests:ImageObservationEnv"), ("dict", "envs_for_tests:PickTwoEnv")):
        policy = ppo_policy(tmp_path, env_id)
        batch, rows = observations(env_id)
        expected[name] = policy.act(batch)
        policy.save(tmp_path / name / "policy")
        data = {"id": [row[0] for row in rows], "observation": [row[1] for row in rows]}
        if name == "dict":
            data["observation"] = [{"target": target, "offset": offset} for target, offset in data["observation"]]
        pq.write_table(pa.table(data), tmp_path / name / "input.parquet")
        scenarios.append({"name": name, "policy": str(tmp_path / name), "input": str(tmp_path / name / "input.parquet"),
                          "output": str(tmp_path / name / "scored.parquet")})
    (tmp_path / "scenarios.json").write_text(json.dumps(scenarios))
    python = fresh_venv(tmp_path / "venv-without-ddrl")
    completed = subprocess.run(
        [str(python), str(ROOT / "tests" / "score_connect_session.py"), str(tmp_path / "scenarios.json")],
        cwd=tmp_path, env={**environment_without_this_checkout(), "PYSPARK_PYTHON": str(python)},
        capture_output=True, text=True, timeout=600, start_new_session=True,
    )
    assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    assert completed.stdout.strip().splitlines()[-1] == "pyspark.sql.connect.session"
    for name, actions in expected.items():
        table = pq.read_table(tmp_path / name / "scored.parquet").sort_by("id")
        np.testing.assert_array_equal(np.array(table.column("action").to_pylist()), actions, err_msg=name)


# ---- MLflow's spark_udf --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:No complete tensor found:UserWarning")  # torch.export loading the logged model
def test_mlflow_spark_udf_gives_the_actions_of_ddrl_score(spark, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from ddrl import tracking
    from ddrl.tracking import MlflowObserver

    for name in ("DATABRICKS_RUNTIME_VERSION", "DDRL_MLFLOW", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ddrl-score-tests")
    observer = MlflowObserver()
    try:
        result = ddrl.train(spark, small_ppo_config(tmp_path, train={"total_env_steps": 4 * 64 * 2}), run_dir=tmp_path / "run",
                            observers=[observer])
    finally:
        tracking._end_runs()
    batch, _ = observations("CartPole-v1")
    df = spark.createDataFrame([(index, row.tolist()) for index, row in enumerate(batch)], "id long, observation array<float>")
    served = mlflow.pyfunc.spark_udf(spark, observer.model_uri, env_manager="local")
    both = ddrl.score(df, result.run_dir).withColumn("served", served("observation"))
    rows = sorted(both.collect(), key=lambda row: row.id)
    assert [row.served for row in rows] == [[row.action] for row in rows]  # MLflow's tensor output: a one-value array a row
    np.testing.assert_array_equal([row.action for row in rows], ddrl.load_policy(result.run_dir).act(batch))
