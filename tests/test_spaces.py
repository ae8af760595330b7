"""Every supported space end to end: small envs of the tests' own (tests/envs_for_tests.py) learn to a threshold
within a step budget on the shared Spark session, masked actions are never taken, and the exported model acts as
``ddrl.load_policy`` does for every kind of head.  Bad spaces are refused in tests/test_config.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_es_config, small_ppo_config

import ddrl
from ddrl import envs
from ddrl.algorithms.ppo import ActorCritic, Hyperparameters
from ddrl.config import ConfigError, EnvConfig
from ddrl.export import export_program, export_torchscript
from ddrl.policy import Policy
from ddrl.run import Run
from ddrl.spaces import MASKED_LOGIT

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def space_config(tmp_path, env_id: str, steps: int, target: float, **ppo) -> dict:
    """PPO on a one-step-episode env: 8 envs x 32 steps per task, stopping at two 20-episode evaluations >= ``target``."""
    train = {"total_env_steps": steps, "target_return": target, "eval_every": 2, "eval_episodes": 20, "final_eval_episodes": 50}
    hyperparameters = {"num_steps": 32, "update_epochs": 4, "num_minibatches": 4, "learning_rate": 3e-3, "anneal_lr": False,
                       "gamma": 0.5, "ent_coef": 0.0, "hidden_sizes": [32], **ppo}
    return small_ppo_config(tmp_path, env={"id": env_id, "num_envs": 8}, train=train, ppo=hyperparameters)


LEARNING = [
    # env, step budget, final-evaluation threshold, best return (random policy: 0.5 / 5/6 / 1.5 / about 1.4)
    ("SideOfTheLightEnv", 40_000, 0.9, 1.0),  # a uint8 image through the small CNN
    ("PickTwoEnv", 40_000, 1.8, 2.0),  # Dict observations, MultiDiscrete actions
    ("CopyBitsEnv", 40_000, 2.8, 3.0),  # MultiBinary in and out
    ("MaskedPickEnv", 40_000, 1.9, 2.0),  # Discrete actions masked through info; an invalid action would stop the run
]


@pytest.mark.parametrize("env_name, steps, threshold, best", LEARNING, ids=[case[0] for case in LEARNING])
def test_ppo_learns_every_kind_of_space_within_a_step_budget(spark, tmp_path, env_name, steps, threshold, best):
    # Training stops halfway between the threshold and the best return: two 20-episode evaluations just at the
    # threshold can come from a policy that scores below it over the final 50 episodes.
    config = space_config(tmp_path, "envs_for_tests:" + env_name, steps, (threshold + best) / 2)
    result = ddrl.train(spark, config, run_dir=tmp_path / "run")
    assert result.eval_return_mean >= threshold, (result.eval_return_mean, result.env_steps)
    loaded = ddrl.load_policy(tmp_path / "run")
    observations, infos = _observations(f"envs_for_tests:{env_name}", 16)
    np.testing.assert_array_equal(loaded.act(observations, infos), result.policy.act(observations, infos))


def test_masked_actions_are_never_taken_in_rollouts_updates_or_evaluations(spark, tmp_path):
    # The mask is an observation part of MultiDiscrete actions here; the env raises on any invalid value, in
    # training and evaluation episodes alike, so a run that completes took none.
    config = space_config(tmp_path, "envs_for_tests:MaskedMultiPickEnv", 4 * 8 * 32 * 2, 3.0)
    result = ddrl.train(spark, config, run_dir=tmp_path / "run")
    assert result.iterations == 4 and result.eval_return_mean == 2.0

    # In the update, a masked action has probability zero and no share of the entropy.
    env = envs.describe(EnvConfig(id="envs_for_tests:MaskedPickEnv"))
    model = ActorCritic(env, Hyperparameters(hidden_sizes=[8]))
    features = {"vector": torch.zeros(2, 4)}
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    with torch.no_grad():
        log_prob, entropy = model.log_prob_and_entropy(model.output_and_value(features)[0], torch.tensor([1, 2]), mask)
    assert log_prob[0] < MASKED_LOGIT / 2 and log_prob[1] == pytest.approx(0.0, abs=1e-6)
    assert entropy[1] == pytest.approx(0.0, abs=1e-6) and entropy[0] == pytest.approx(np.log(3), abs=0.05)


def test_es_acts_in_multi_discrete_and_multi_binary_spaces_and_refuses_images(spark, tmp_path):
    es = {"num_directions": 8, "sigma": 0.5, "learning_rate": 0.1}
    train = {"total_env_steps": 16 * 8, "eval_every": 1, "eval_episodes": 4, "final_eval_episodes": 8}
    for env_name in ("PickTwoEnv", "CopyBitsEnv", "MaskedMultiPickEnv"):
        config = small_es_config(tmp_path, env={"id": "envs_for_tests:" + env_name, "num_envs": 4}, es=es, train=train)
        result = ddrl.train(spark, config, run_dir=tmp_path / env_name)
        assert result.iterations == 8 and np.isfinite(result.eval_return_mean)
    with pytest.raises(ConfigError, match=r"^env\.id: .*image observations"):
        Run.open(small_es_config(tmp_path, env={"id": "envs_for_tests:SideOfTheLightEnv"}))


HEADS = [
    # env, what it exercises in the exported model
    ("SideOfTheLightEnv", "image (channels last, uint8) -> Discrete"),
    ("PickTwoEnv", "Dict (one-hot Discrete, Box) -> MultiDiscrete"),
    ("TupleObservationEnv", "Tuple (Box, one-hot Discrete) -> Discrete"),
    ("CopyBitsEnv", "MultiBinary -> MultiBinary"),
    ("MatrixBoxActionEnv", "Box -> Box of shape (2, 2)"),
    ("MaskedPickEnv", "Box -> Discrete masked through info"),
    ("MaskedMultiPickEnv", "Dict with the mask -> MultiDiscrete masked through the observation"),
]


@pytest.mark.parametrize("env_name, what", HEADS, ids=[case[0] for case in HEADS])
def test_exported_models_act_as_load_policy_for_every_head(tmp_path, env_name, what):
    env = envs.describe(EnvConfig(id="envs_for_tests:" + env_name))
    torch.manual_seed(0)
    hp = Hyperparameters(hidden_sizes=[16])
    model = ActorCritic(env, hp)
    with torch.no_grad():  # a trained-looking output layer (the init gain of 0.01 makes near-ties everywhere)
        for parameter in model.actor.parameters():
            parameter.mul_(30.0)
    rng = np.random.default_rng(1)
    mean, variance = rng.normal(size=env.observation_dim), rng.uniform(0.5, 2.0, size=env.observation_dim)
    Policy(model.actor, env, ActorCritic.architecture(hp, env), mean, variance).save(tmp_path / "policy")
    policy = ddrl.load_policy(tmp_path / "policy")
    observations, infos = _observations("envs_for_tests:" + env_name, 64)
    expected = policy.act(observations, infos)
    assert len(np.unique(expected.reshape(64, -1), axis=0)) > 1  # the observations reach more than one action

    inputs = [_tensors(observations)]
    if env.action_mask == "info":
        inputs.append(torch.from_numpy(env.mask(observations, infos)))
    scripted = torch.jit.load(str(export_torchscript(policy, tmp_path / "policy.pt")))
    program = torch.export.load(str(export_program(policy, tmp_path / "policy.pt2"))).module()
    with torch.no_grad():
        outputs = (scripted(*inputs), program(*inputs))
    for model_output in outputs:
        if env.action.kind == "box":
            np.testing.assert_allclose(model_output.numpy(), expected, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(model_output.numpy(), expected)
    if env.action_mask is not None:
        mask = env.mask(observations, infos).reshape(64, -1)
        codes = expected.reshape(64, -1)
        offsets = np.asarray(env.action.offsets)
        assert all(mask[row, offsets + codes[row]].all() for row in range(64))


def _observations(env_id: str, count: int):
    """A batch of real observations and infos: the first of ``count`` seeded episodes."""
    vector_env = envs.make_evaluation_env(EnvConfig(id=env_id), count)
    try:
        return vector_env.reset(seed=list(range(count)))
    finally:
        vector_env.close()


def _tensors(observations):
    """The exported model's input: a Dict's or Tuple's parts by name ("0", "1" for a Tuple's), else one tensor."""
    if isinstance(observations, tuple):
        observations = {str(index): value for index, value in enumerate(observations)}
    if isinstance(observations, dict):
        return {name: torch.from_numpy(np.asarray(value)) for name, value in observations.items()}
    return torch.from_numpy(np.asarray(observations))


def test_envs_that_take_32_bit_seeds_train(spark, tmp_path):
    config = small_ppo_config(tmp_path, env={"id": "envs_for_tests:ThirtyTwoBitSeedEnv", "num_envs": 4})
    assert ddrl.train(spark, config, run_dir=tmp_path / "run").iterations == 3


def test_training_only_wrappers_leave_evaluation_envs_alone():
    clip = {"class": "gymnasium.wrappers:ClipReward", "kwargs": {"min_reward": 0.0, "max_reward": 0.5}, "use": "training"}
    config = EnvConfig(id="CartPole-v1", wrappers=[clip])
    training, evaluation = envs.make_vector_env(config, 2), envs.make_evaluation_env(config, 2)
    try:
        training.reset(seed=0)
        evaluation.reset(seed=0)
        rewards = [vector_env.step(np.zeros(2, dtype=np.int64))[1] for vector_env in (training, evaluation)]
        assert list(rewards[0]) == [0.5, 0.5] and list(rewards[1]) == [1.0, 1.0]
    finally:
        training.close()
        evaluation.close()
