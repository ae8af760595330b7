"""Learning on a step budget (never a time limit): the shipped CartPole config solves CartPole-v1."""

from __future__ import annotations

from conftest import ROOT

import ddrl

STEP_BUDGET = 150_000


def test_cartpole_ppo_reaches_475_over_20_episodes_within_the_step_budget(spark, tmp_path):
    result = ddrl.train(
        spark,
        ROOT / "conf" / "cartpole_ppo.yaml",
        overrides=[f"train.total_env_steps={STEP_BUDGET}", f"output.root={tmp_path}"],
    )
    assert result.env_steps <= STEP_BUDGET
    assert result.eval_return_mean >= 475, result.metrics.select(["iteration", "eval_return_mean"]).to_pylist()
    assert result.solved
    assert (result.run_dir / "policy" / "policy.safetensors").exists()
