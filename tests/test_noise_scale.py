"""The gradient noise scale estimate (ddrl.noise_scale) on tasks whose changes are a known mean plus known noise."""

import math

import numpy as np
import pytest

from ddrl import noise_scale


def synthetic_tasks(rng: np.random.Generator, gradient: np.ndarray, sample_std: float, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each task's change is the mean of its ``samples`` per-sample gradients, each the true one plus isotropic
    noise of ``sample_std``: tr(Sigma) = dim * sample_std^2.  The squared norms, the samples and the weighted mean."""
    changes = gradient + rng.standard_normal((len(samples), len(gradient))) * (sample_std / np.sqrt(samples))[:, None]
    return (changes**2).sum(axis=1), samples, samples @ changes / samples.sum()


@pytest.mark.parametrize("num_tasks, gradient_norm", [(2, 1.0), (8, 0.3), (16, 3.0)])
def test_the_smoothed_estimate_finds_a_known_noise_scale(num_tasks: int, gradient_norm: float) -> None:
    rng = np.random.default_rng(0)
    dim, sample_std, samples = 500, 2.0, np.full(num_tasks, 256.0)
    gradient = rng.standard_normal(dim)
    gradient *= gradient_norm / np.linalg.norm(gradient)
    expected = dim * sample_std**2 / gradient_norm**2
    state, estimates = noise_scale.initial_state(), []
    for _ in range(200):
        state, estimated = noise_scale.update(state, *synthetic_tasks(rng, gradient, sample_std, samples))
        estimates.append(estimated)
    # The moving average smooths about ten iterations: one value is within +-50 % when the noise dominates (seeds
    # 0-19), its typical value within a few percent.
    assert np.median(estimates[100:]) == pytest.approx(expected, rel=0.15)
    assert estimates[-1] == pytest.approx(expected, rel=0.6)


def test_the_one_iteration_estimates_are_unbiased_with_unequal_tasks() -> None:
    rng = np.random.default_rng(1)
    dim, sample_std, samples = 200, 1.0, np.array([200.0, 250.0, 300.0, 250.0])
    gradient = np.full(dim, 0.05)
    estimates = np.array([noise_scale.estimate(*synthetic_tasks(rng, gradient, sample_std, samples)) for _ in range(4000)])
    assert estimates[:, 0].mean() == pytest.approx(gradient @ gradient, rel=0.05)
    assert estimates[:, 1].mean() == pytest.approx(dim * sample_std**2, rel=0.05)


def test_one_task_gives_no_estimate_and_no_extra_step() -> None:
    state, estimated = noise_scale.update(noise_scale.initial_state(), np.array([1.0]), np.array([64.0]), np.ones(3))
    assert math.isnan(estimated)
    assert noise_scale.step_scale(estimated, 64.0, 1) == 1.0


def test_the_step_scale_runs_from_one_without_noise_towards_the_task_count_with_mostly_noise() -> None:
    assert noise_scale.step_scale(0.0, 256.0, 16) == 1.0
    assert noise_scale.step_scale(1e9, 256.0, 16) == pytest.approx(16.0, rel=1e-4)
    assert noise_scale.step_scale(math.inf, 256.0, 16) == 1.0  # no positive |G|^2: no direction to go further in
    # B_noise of 4 tasks' samples: 16 tasks' mean can go (1 + 4) / (1 + 1/4) = 4 times one task's step.
    assert noise_scale.step_scale(4 * 256.0, 256.0, 16) == pytest.approx(4.0)


def test_a_checkpoint_from_before_the_noise_scale_resumes_with_its_averages_started_afresh(tmp_path) -> None:
    from conftest import small_ppo_config

    from ddrl import checkpoint, config as config_module
    from ddrl.algorithms import ppo
    from ddrl.run import Run

    config = config_module.load(small_ppo_config(tmp_path, output={"run_dir": str(tmp_path / "old")}, spark={"sync": "parameters"}))
    run = Run.open(config)
    run.create()
    state = ppo.PPO(config, run.env).initial_state()
    state["params"] = state["params"] + 0.5
    older = {key: value for key, value in state.items() if not key.startswith(noise_scale.PREFIX)}
    checkpoint.save(run.checkpoints, 3, older, {"iteration": 3}, keep=3)

    loaded, _ = Run.open(config, resume=run.directory).latest_checkpoint
    np.testing.assert_array_equal(loaded["params"], state["params"])
    assert {key: float(loaded[key]) for key in noise_scale.STATE_KEYS} == dict.fromkeys(noise_scale.STATE_KEYS, 0.0)


def test_noise_scale_lr_multiplies_the_tasks_learning_rate_by_the_measured_step_scale(tmp_path) -> None:
    from conftest import small_ppo_config

    from ddrl import config as config_module
    from ddrl.algorithms import ppo
    from ddrl.run import Run

    config = config_module.load(small_ppo_config(tmp_path, ppo={"learning_rate": 1e-5, "anneal_lr": False}, spark={"num_tasks": 4, "sync": "parameters"}))
    assert config.hyperparameters.task_scaling == "noise_scale_lr"  # the default
    algorithm = ppo.PPO(config, Run.open(config).env)
    state = algorithm.initial_state()
    learning_rate = config.hyperparameters.learning_rate
    assert algorithm.task_payload(state, 0)["learning_rates"] == [learning_rate]  # no estimate yet: unscaled

    samples_per_task = algorithm.samples_per_task
    gradient_sq, trace = 1.0, 3.0 * samples_per_task  # B_noise = 3 tasks' batches
    state.update(noise_scale_gradient_sq=np.array(0.1 * gradient_sq), noise_scale_trace=np.array(0.1 * trace), noise_scale_weight=np.array(0.1))
    expected = (1 + 3.0) / (1 + 3.0 / 4)
    assert noise_scale.step_scale(noise_scale.noise_scale(state), samples_per_task, 4) == pytest.approx(expected)
    assert algorithm.task_payload(state, 5)["learning_rates"] == [pytest.approx(expected * learning_rate)]
    plain = ppo.PPO(config_module.load(small_ppo_config(
        tmp_path, ppo={"learning_rate": 1e-5, "anneal_lr": False, "task_scaling": "none"}, spark={"num_tasks": 4, "sync": "parameters"})), Run.open(config).env)
    assert plain.task_payload(state, 5)["learning_rates"] == [learning_rate]


def test_noise_scale_lr_stops_at_the_max_scaled_learning_rate_and_leaves_a_rate_above_it_unscaled(tmp_path) -> None:
    from conftest import small_ppo_config

    from ddrl import config as config_module
    from ddrl.algorithms import ppo
    from ddrl.run import Run

    def payload_rate(learning_rate: float) -> float:
        config = config_module.load(small_ppo_config(
            tmp_path, ppo={"learning_rate": learning_rate, "anneal_lr": False, "max_scaled_learning_rate": 3e-4}, spark={"num_tasks": 16, "sync": "parameters"}))
        algorithm = ppo.PPO(config, Run.open(config).env)
        state = algorithm.initial_state()
        trace = 100.0 * algorithm.samples_per_task  # B_noise = 100 tasks' batches: a scale of 101 / 7.25, about 14
        state.update(noise_scale_gradient_sq=np.array(0.1), noise_scale_trace=np.array(0.1 * trace), noise_scale_weight=np.array(0.1))
        return algorithm.task_payload(state, 5)["learning_rates"][0]

    assert payload_rate(1e-5) == pytest.approx(1e-5 * 101 / (1 + 100 / 16))
    assert payload_rate(1e-4) == pytest.approx(3e-4)
    assert payload_rate(1e-3) == 1e-3  # at or above the cap: exactly plain averaging's rate
