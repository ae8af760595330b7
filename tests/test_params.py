"""Parameters as flat vectors, saved policies and checkpoints: round trips, corruption, no pickle (no Spark)."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ddrl import carry, checkpoint, envs
from ddrl import config as config_module
from ddrl.algorithms import ppo as ppo_module
from ddrl.config import EnvConfig
from ddrl.policy import POLICY_SPEC, POLICY_WEIGHTS, Policy, load_policy
from ddrl.algorithms.ppo import PPO, ActorCritic, Hyperparameters, flat_parameters, load_flat_parameters
from ddrl.seeding import seed_everything

ENV_IDS = ["CartPole-v1", "Pendulum-v1"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=ENV_IDS)
def env_info(request):
    return envs.describe(EnvConfig(id=request.param))


def _model(env_info, seed: int, **hyperparameters) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(env_info, Hyperparameters(**hyperparameters))


def _observations(env_info, count=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=(count, env_info.observation_dim)).astype(np.float32)


@pytest.fixture
def no_pickle(monkeypatch):
    """Make every use of pickle fail, to prove that loading never unpickles."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _assert_safetensors_file(path):
    """A safetensors file: an 8-byte little-endian header length, then a JSON header; never a pickle stream."""
    data = path.read_bytes()
    assert not data.startswith(b"\x80"), "looks like a pickle"
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    assert isinstance(header, dict)
    return header


# ---- flat parameter vectors -------------------------------------------------------------------------------


def test_env_infos(env_info):
    if env_info.id == "CartPole-v1":
        assert (env_info.observation_dim, env_info.discrete, env_info.action_dim) == (4, True, 2)
    else:
        assert (env_info.observation_dim, env_info.discrete, env_info.action_dim) == (3, False, 1)
        assert env_info.action.low == (-2.0,) and env_info.action.high == (2.0,)


def test_flat_parameters_cover_every_parameter(env_info):
    model = _model(env_info, 0)
    flat = flat_parameters(model)
    assert flat.dtype == np.float32 and flat.ndim == 1
    assert len(flat) == sum(parameter.numel() for parameter in model.parameters())
    expected = np.concatenate([parameter.detach().numpy().reshape(-1) for parameter in model.parameters()])
    np.testing.assert_array_equal(flat, expected)
    if not env_info.discrete:
        np.testing.assert_array_equal(flat[-env_info.action_dim :], model.log_std.detach().numpy())


def test_load_then_flatten_round_trips_exactly(env_info):
    model = _model(env_info, 0)
    vector = np.random.default_rng(1).normal(size=len(flat_parameters(model))).astype(np.float32)
    load_flat_parameters(model, vector)
    np.testing.assert_array_equal(flat_parameters(model), vector)


def test_loaded_model_computes_what_the_original_does(env_info):
    source, target = _model(env_info, 1), _model(env_info, 2)
    assert not np.array_equal(flat_parameters(source), flat_parameters(target))
    load_flat_parameters(target, flat_parameters(source))
    np.testing.assert_array_equal(flat_parameters(target), flat_parameters(source))
    obs = torch.from_numpy(_observations(env_info))
    features = {"vector": obs}
    with torch.no_grad():
        (target_output, target_value), (source_output, source_value) = target.output_and_value(features), source.output_and_value(features)
        np.testing.assert_array_equal(target_value.numpy(), source_value.numpy())
        np.testing.assert_array_equal(target.actor(obs).numpy(), source.actor(obs).numpy())
        actions = torch.zeros(len(obs), dtype=torch.long) if env_info.discrete else torch.zeros(len(obs), env_info.action_dim)
        for got, want in zip(target.log_prob_and_entropy(target_output, actions), source.log_prob_and_entropy(source_output, actions)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_loading_copies_the_vector(env_info):
    """Training the model afterwards must not write into the array it was loaded from (a broadcast payload)."""
    model = _model(env_info, 3)
    vector = flat_parameters(_model(env_info, 4))
    original = vector.copy()
    load_flat_parameters(model, vector)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    np.testing.assert_array_equal(vector, original)


def test_float64_vectors_load_as_float32(env_info):
    model = _model(env_info, 5)
    vector = np.random.default_rng(2).normal(size=len(flat_parameters(model)))
    load_flat_parameters(model, vector)
    np.testing.assert_array_equal(flat_parameters(model), vector.astype(np.float32))


@pytest.fixture(scope="module")
def small_ppo():
    config = config_module.load(
        {
            "name": "params",
            "seed": 3,
            "algo": "ppo",
            "env": {"id": "CartPole-v1", "num_envs": 2},
            "train": {"total_env_steps": 1000},
            "ppo": {"num_steps": 8, "update_epochs": 1, "num_minibatches": 2, "hidden_sizes": [8]},
        }
    )
    algorithm = PPO(config, envs.describe(config.env))
    state = algorithm.initial_state()
    return algorithm, state, algorithm.task_payload(state, 0)


def _run_task(algorithm, payload, seed=11, cold=False):
    """Run one task as ddrl.trainer does: reseed everything, then call run_task (cold: empty worker cache)."""
    if cold:
        for cache in (ppo_module._WORKER_MODELS, ppo_module._WORKER_ENVS, carry._TASK_ENVS):
            cache.clear()
    seed_everything(seed)
    return algorithm.run_task(payload, 0, seed)


def _assert_outputs_equal(first, second):
    assert first.weight == second.weight
    for arrays in ("weighted", "fixed", "replicated"):
        for name in getattr(first, arrays):
            np.testing.assert_array_equal(getattr(second, arrays)[name], getattr(first, arrays)[name], err_msg=name)
    np.testing.assert_array_equal(second.episode_returns, first.episode_returns)


def test_run_task_leaves_the_payload_and_the_state_alone(small_ppo):
    """A task retried (or run after another task in the same worker) must start from the broadcast params."""
    algorithm, state, payload = small_ppo
    originals = {key: np.array(value, copy=True) for key, value in payload.items()}
    state_params = state["params"].copy()
    output = _run_task(algorithm, payload)
    assert np.any(output.replicated["params"] != payload["params"])  # the task did train
    for key, value in originals.items():
        np.testing.assert_array_equal(payload[key], value, err_msg=key)
    np.testing.assert_array_equal(state["params"], state_params)


def test_run_task_repeats_exactly_in_a_warm_worker(small_ppo):
    algorithm, _, payload = small_ppo
    _run_task(algorithm, payload)  # warm the worker cache
    _assert_outputs_equal(_run_task(algorithm, payload), _run_task(algorithm, payload))


def test_run_task_gives_the_same_result_in_a_cold_and_a_warm_worker(small_ppo):
    algorithm, _, payload = small_ppo
    cold = _run_task(algorithm, payload, cold=True)
    warm = _run_task(algorithm, payload)
    _assert_outputs_equal(cold, warm)


# ---- saved policies ---------------------------------------------------------------------------------------


def _policy(env_info, normalized: bool) -> Policy:
    model = _model(env_info, 6, hidden_sizes=[16, 8], activation="relu")
    rng = np.random.default_rng(3)
    mean = rng.normal(size=env_info.observation_dim) if normalized else None
    variance = rng.uniform(0.5, 3.0, size=env_info.observation_dim) if normalized else None
    return Policy(model.actor, env_info, ActorCritic.architecture(Hyperparameters(hidden_sizes=[16, 8], activation="relu"), env_info), mean, variance)


@pytest.mark.parametrize("normalized", [False, True], ids=["raw", "normalized"])
def test_policy_save_load_gives_identical_actions(env_info, normalized, tmp_path, no_pickle):
    policy = _policy(env_info, normalized)
    policy.save(tmp_path / "policy")
    loaded = load_policy(tmp_path / "policy")
    assert loaded.env == env_info
    assert loaded.architecture == policy.architecture
    obs = _observations(env_info, count=200, seed=4)
    actions = policy.act(obs)
    np.testing.assert_array_equal(loaded.act(obs), actions)
    assert actions.shape[0] == 200
    if env_info.discrete:
        assert set(np.unique(actions)) <= set(range(env_info.action_dim))
        assert len(np.unique(actions)) > 1  # the test observations reach more than one action
    else:
        assert actions.dtype == np.float32 and actions.shape == (200, env_info.action_dim)
        assert np.all(actions >= env_info.action.low[0]) and np.all(actions <= env_info.action.high[0])
    # One observation gives one action (torch may round a batch of one differently from a batch of 200).
    single = loaded.act(obs[7])
    assert single.shape == actions[7].shape
    np.testing.assert_array_equal(single, policy.act(obs[7]))
    if normalized:
        np.testing.assert_array_equal(loaded.observation_mean, policy.observation_mean)
        np.testing.assert_array_equal(loaded.observation_variance, policy.observation_variance)
    else:
        assert loaded.observation_mean is None and loaded.observation_variance is None


def test_normalization_changes_the_actions(tmp_path):
    info = envs.describe(EnvConfig(id="Pendulum-v1"))
    raw, normalized = _policy(info, False), _policy(info, True)
    obs = _observations(info, seed=5)
    assert not np.array_equal(raw.act(obs), normalized.act(obs))


def test_load_policy_from_a_run_directory(tmp_path):
    info = envs.describe(EnvConfig(id="CartPole-v1"))
    policy = _policy(info, True)
    policy.save(tmp_path / "policy")
    obs = _observations(info, seed=6)
    np.testing.assert_array_equal(load_policy(tmp_path).act(obs), policy.act(obs))
    np.testing.assert_array_equal(load_policy(str(tmp_path / "policy")).act(obs), policy.act(obs))


def test_ppo_policy_matches_its_state(tmp_path):
    config = config_module.load(
        {"name": "p", "algo": "ppo", "env": {"id": "Pendulum-v1"}, "train": {"total_env_steps": 10}, "ppo": {"normalize_observation": True}}
    )
    algorithm = PPO(config, envs.describe(config.env))
    state = algorithm.initial_state()
    state["obs_count"] = np.array(10.0)
    state["obs_mean"] = np.array([0.5, -0.5, 1.0])
    state["obs_m2"] = np.array([20.0, 5.0, 40.0])
    policy = algorithm.policy(state)
    np.testing.assert_array_equal(policy.observation_variance, [2.0, 0.5, 4.0])
    policy.save(tmp_path)
    obs = _observations(policy.env, seed=7)
    np.testing.assert_array_equal(load_policy(tmp_path).act(obs), policy.act(obs))


def test_policy_files_are_safetensors_and_json(tmp_path):
    info = envs.describe(EnvConfig(id="Pendulum-v1"))
    _policy(info, True).save(tmp_path)
    header = _assert_safetensors_file(tmp_path / POLICY_WEIGHTS)
    tensors = load_file(str(tmp_path / POLICY_WEIGHTS))
    assert set(tensors) == {key for key in header if key != "__metadata__"}
    assert {"observation_mean", "observation_variance"} <= set(tensors)
    assert all(key.startswith("actor.") for key in tensors if not key.startswith("observation_"))
    spec = json.loads((tmp_path / POLICY_SPEC).read_text())
    assert spec["format"] == 2 and spec["env"]["id"] == "Pendulum-v1"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([POLICY_WEIGHTS, POLICY_SPEC])  # no temp files


def test_load_policy_without_a_policy(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path)


# ---- checkpoints ------------------------------------------------------------------------------------------


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "params": rng.normal(size=300).astype(np.float32),
        "adam_m": rng.normal(size=300).astype(np.float32),
        "adam_step": np.array(float(seed)),
        "obs_count": np.array(12.0),
        "obs_mean": rng.normal(size=4),
        "matrix": rng.normal(size=(3, 5)),
        "return_mean": np.array(rng.normal()),
    }


def _assert_states_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].shape == value.shape, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def _flip_bytes(path, offset_from_end=16):
    data = bytearray(path.read_bytes())
    for position in range(len(data) - offset_from_end, len(data) - offset_from_end + 4):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_round_trip(tmp_path, no_pickle):
    state = _state(1)
    path = checkpoint.save(tmp_path / "checkpoints", 7, state, {"env_steps": 700, "fingerprint": "abc"}, keep=3)
    assert path == tmp_path / "checkpoints" / "ckpt-000007.safetensors"
    loaded, meta = checkpoint.load_latest(tmp_path / "checkpoints")
    _assert_states_equal(loaded, state)
    assert meta["iteration"] == 7 and meta["env_steps"] == 700 and meta["fingerprint"] == "abc"
    assert len(meta["sha256"]) == 64


def test_load_latest_picks_the_newest(tmp_path):
    directory = tmp_path / "checkpoints"
    for iteration in [1, 2, 10, 11]:
        checkpoint.save(directory, iteration, _state(iteration), {"env_steps": iteration}, keep=10)
    loaded, meta = checkpoint.load_latest(directory)
    assert meta["iteration"] == 11
    _assert_states_equal(loaded, _state(11))
    assert json.loads((directory / "latest.json").read_text()) == {"checkpoint": "ckpt-000011"}


def test_no_checkpoint_gives_none(tmp_path):
    assert checkpoint.load_latest(tmp_path) is None
    assert checkpoint.load_latest(tmp_path / "missing") is None


@pytest.mark.parametrize("offset_from_end", [16, 1000], ids=["data", "near-header"])
def test_corrupted_latest_falls_back_to_the_previous(tmp_path, offset_from_end, caplog):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, 1, _state(1), {"env_steps": 1}, keep=3)
    checkpoint.save(directory, 2, _state(2), {"env_steps": 2}, keep=3)
    _flip_bytes(directory / "ckpt-000002.safetensors", offset_from_end)
    with caplog.at_level("WARNING"):
        loaded, meta = checkpoint.load_latest(directory)
    assert meta["iteration"] == 1
    _assert_states_equal(loaded, _state(1))
    assert "ckpt-000002" in caplog.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda directory: (directory / "ckpt-000003.safetensors").unlink(),
        lambda directory: (directory / "ckpt-000003.safetensors").write_bytes(b""),
        lambda directory: (directory / "ckpt-000003.json").write_text('{"iteration": 3, "sha2'),
        lambda directory: (directory / "ckpt-000003.json").write_text('{"iteration": 3}'),
        lambda directory: (directory / "ckpt-000003.safetensors").write_bytes(
            (directory / "ckpt-000002.safetensors").read_bytes()
        ),
    ],
    ids=["arrays-missing", "arrays-empty", "sidecar-truncated", "sidecar-without-checksum", "arrays-swapped"],
)
def test_other_damage_falls_back_too(tmp_path, damage):
    directory = tmp_path / "checkpoints"
    for iteration in [1, 2, 3]:
        checkpoint.save(directory, iteration, _state(iteration), {"env_steps": iteration}, keep=5)
    damage(directory)
    loaded, meta = checkpoint.load_latest(directory)
    assert meta["iteration"] == 2
    _assert_states_equal(loaded, _state(2))


def test_every_checkpoint_corrupted_gives_none(tmp_path):
    directory = tmp_path / "checkpoints"
    for iteration in [1, 2]:
        checkpoint.save(directory, iteration, _state(iteration), {}, keep=5)
        _flip_bytes(directory / f"ckpt-{iteration:06d}.safetensors")
    assert checkpoint.load_latest(directory) is None


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_prunes_old_checkpoints(tmp_path, keep):
    directory = tmp_path / "checkpoints"
    iterations = [5, 10, 15, 20, 25]
    for iteration in iterations:
        checkpoint.save(directory, iteration, _state(iteration), {"env_steps": iteration}, keep=keep)
    kept = iterations[-keep:]
    names = sorted(path.name for path in directory.iterdir())
    expected = sorted(
        [f"ckpt-{i:06d}.safetensors" for i in kept] + [f"ckpt-{i:06d}.json" for i in kept] + ["latest.json"]
    )
    assert names == expected  # no temporary files either
    loaded, meta = checkpoint.load_latest(directory)
    assert meta["iteration"] == 25


def test_checkpoint_files_are_safetensors_and_json(tmp_path, no_pickle):
    directory = tmp_path / "checkpoints"
    state = _state(3)
    checkpoint.save(directory, 4, state, {"env_steps": 40, "finished": False}, keep=2)
    header = _assert_safetensors_file(directory / "ckpt-000004.safetensors")
    assert set(header) - {"__metadata__"} == set(state)
    _assert_states_equal(load_file(str(directory / "ckpt-000004.safetensors")), state)
    sidecar = json.loads((directory / "ckpt-000004.json").read_text())
    assert sidecar == {"env_steps": 40, "finished": False, "iteration": 4, "sha256": sidecar["sha256"]}
    assert json.loads((directory / "latest.json").read_text()) == {"checkpoint": "ckpt-000004"}


def test_ppo_state_survives_a_checkpoint(tmp_path):
    config = config_module.load({"name": "c", "algo": "ppo", "env": {"id": "Pendulum-v1"}, "train": {"total_env_steps": 10}})
    state = PPO(config, envs.describe(config.env)).initial_state()
    checkpoint.save(tmp_path, 1, state, {}, keep=1)
    loaded, _ = checkpoint.load_latest(tmp_path)
    _assert_states_equal(loaded, {key: np.asarray(value) for key, value in state.items()})
