"""GAE(lambda) advantages (ddrl.algorithms.ppo.compute_gae) against hand-worked numbers and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from ddrl.algorithms.ppo import compute_gae

GAMMA, LAMBDA = 0.9, 0.8  # gamma * lambda = 0.72

# A 4-step rollout of 2 envs; arrays are (num_steps, num_envs).
#
# env 0: terminates at step 1.  V(final obs) there is 7.0 and must NOT count; step 2 starts a new episode.
# env 1: is truncated at step 2.  V(final obs) there is 5.0 and MUST count; step 3 starts a new episode.
# next_values[t] is V(s_{t+1}); inside an episode it equals values[t + 1], at the last step it bootstraps.
REWARDS = np.array([[1.0, 0.5], [2.0, -1.0], [3.0, 2.0], [4.0, 1.0]])
VALUES = np.array([[0.5, 1.0], [1.0, 2.0], [1.5, 3.0], [2.0, 4.0]])
NEXT_VALUES = np.array([[1.0, 2.0], [7.0, 3.0], [2.0, 5.0], [3.0, 6.0]])
TERMINATED = np.array([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=float)
TRUNCATED = np.array([[0, 0], [0, 0], [0, 1], [0, 0]], dtype=float)

# Worked by hand: delta_t = r_t + gamma * (1 - term_t) * next_value_t - value_t,
#                 A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}.
# env 0:
#   t=3: delta = 4 + 0.9*3.0 - 2.0 = 4.7                        A = 4.7
#   t=2: delta = 3 + 0.9*2.0 - 1.5 = 3.3                        A = 3.3 + 0.72*4.7 = 6.684
#   t=1: terminated, delta = 2 + 0 - 1.0 = 1.0                  A = 1.0   (6.684 does not flow back)
#   t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                        A = 1.4 + 0.72*1.0 = 2.12
# env 1:
#   t=3: delta = 1 + 0.9*6.0 - 4.0 = 2.4                        A = 2.4
#   t=2: truncated, delta = 2 + 0.9*5.0 - 3.0 = 3.5             A = 3.5   (bootstraps V(final obs) = 5.0;
#                                                                          2.4 does not flow back)
#   t=1: delta = -1 + 0.9*3.0 - 2.0 = -0.3                      A = -0.3 + 0.72*3.5 = 2.22
#   t=0: delta = 0.5 + 0.9*2.0 - 1.0 = 1.3                      A = 1.3 + 0.72*2.22 = 2.8984
EXPECTED = np.array([[2.12, 2.8984], [1.0, 2.22], [6.684, 3.5], [4.7, 2.4]])


def test_hand_worked_rollout():
    advantages = compute_gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, GAMMA, LAMBDA)
    assert advantages.shape == (4, 2)
    np.testing.assert_allclose(advantages, EXPECTED, rtol=1e-12, atol=1e-12)


def test_hand_worked_rollout_with_boolean_done_flags():
    advantages = compute_gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED.astype(bool), TRUNCATED.astype(bool), GAMMA, LAMBDA)
    np.testing.assert_allclose(advantages, EXPECTED, rtol=1e-12, atol=1e-12)


def test_inputs_are_not_modified():
    arrays = [REWARDS.copy(), VALUES.copy(), NEXT_VALUES.copy(), TERMINATED.copy(), TRUNCATED.copy()]
    compute_gae(*arrays, GAMMA, LAMBDA)
    for array, original in zip(arrays, [REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED]):
        np.testing.assert_array_equal(array, original)


def test_terminal_value_is_ignored_and_truncation_value_counts():
    changed = NEXT_VALUES.copy()
    changed[1, 0] = -1000.0  # V(final obs) of env 0's terminated step: irrelevant
    advantages = compute_gae(REWARDS, VALUES, changed, TERMINATED, TRUNCATED, GAMMA, LAMBDA)
    np.testing.assert_allclose(advantages, EXPECTED, rtol=1e-12, atol=1e-12)

    changed = NEXT_VALUES.copy()
    changed[2, 1] += 1.0  # V(final obs) of env 1's truncated step: moves steps 0..2 of env 1 only
    advantages = compute_gae(REWARDS, VALUES, changed, TERMINATED, TRUNCATED, GAMMA, LAMBDA)
    shift = np.zeros_like(EXPECTED)
    shift[2, 1] = GAMMA
    shift[1, 1] = GAMMA * (GAMMA * LAMBDA)
    shift[0, 1] = GAMMA * (GAMMA * LAMBDA) ** 2
    np.testing.assert_allclose(advantages, EXPECTED + shift, rtol=1e-12, atol=1e-12)


def test_nothing_propagates_across_episode_boundaries():
    """Changing a reward after an episode ends leaves every step of that episode alone."""
    changed = REWARDS.copy()
    changed[2, 0] += 10.0  # after env 0 terminated at step 1
    changed[3, 1] += 10.0  # after env 1 was truncated at step 2
    advantages = compute_gae(changed, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, GAMMA, LAMBDA)
    np.testing.assert_allclose(advantages[:2, 0], EXPECTED[:2, 0], rtol=1e-12)
    np.testing.assert_allclose(advantages[:3, 1], EXPECTED[:3, 1], rtol=1e-12)
    assert advantages[2, 0] == pytest.approx(EXPECTED[2, 0] + 10.0)
    assert advantages[3, 1] == pytest.approx(EXPECTED[3, 1] + 10.0)


def test_envs_are_independent():
    """Each column is its own rollout: computing env 1 alone gives the same advantages."""
    single = compute_gae(REWARDS[:, 1:], VALUES[:, 1:], NEXT_VALUES[:, 1:], TERMINATED[:, 1:], TRUNCATED[:, 1:], GAMMA, LAMBDA)
    np.testing.assert_allclose(single[:, 0], EXPECTED[:, 1], rtol=1e-12)


def _no_done_rollout(rng, num_steps=7, num_envs=3):
    rewards = rng.normal(size=(num_steps, num_envs))
    values = rng.normal(size=(num_steps, num_envs))
    bootstrap = rng.normal(size=num_envs)
    next_values = np.concatenate([values[1:], bootstrap[None]])
    zeros = np.zeros((num_steps, num_envs))
    return rewards, values, next_values, zeros, zeros.copy()


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99, 1.0])
def test_lambda_one_is_discounted_return_minus_value(gamma):
    rewards, values, next_values, terminated, truncated = _no_done_rollout(np.random.default_rng(0))
    num_steps = len(rewards)
    advantages = compute_gae(rewards, values, next_values, terminated, truncated, gamma, 1.0)
    for t in range(num_steps):
        # G_t = sum_k gamma^k r_{t+k} + gamma^(T-t) V(s_T), the Monte Carlo return bootstrapped at the end
        discounted = sum(gamma ** (k - t) * rewards[k] for k in range(t, num_steps))
        discounted = discounted + gamma ** (num_steps - t) * next_values[-1]
        np.testing.assert_allclose(advantages[t], discounted - values[t], rtol=1e-10, atol=1e-12)


def test_lambda_zero_is_the_one_step_td_error():
    rewards, values, next_values, terminated, truncated = _no_done_rollout(np.random.default_rng(1))
    advantages = compute_gae(rewards, values, next_values, terminated, truncated, 0.9, 0.0)
    np.testing.assert_allclose(advantages, rewards + 0.9 * next_values - values, rtol=1e-12, atol=1e-12)


def test_terminated_on_every_step_gives_reward_minus_value():
    rng = np.random.default_rng(2)
    rewards, values, next_values = rng.normal(size=(3, 5, 2))
    ones = np.ones((5, 2))
    advantages = compute_gae(rewards, values, next_values, ones, np.zeros((5, 2)), 0.9, 0.8)
    np.testing.assert_allclose(advantages, rewards - values, rtol=1e-12, atol=1e-12)


def test_single_step_rollout():
    advantages = compute_gae(
        np.array([[1.0]]), np.array([[0.25]]), np.array([[2.0]]), np.zeros((1, 1)), np.zeros((1, 1)), 0.5, 0.7
    )
    assert advantages[0, 0] == pytest.approx(1.0 + 0.5 * 2.0 - 0.25)
