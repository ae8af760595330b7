"""Policy export (TorchScript, torch.export) gives the same actions as ddrl.load_policy; rollout GIFs (no Spark)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import small_ppo_config

from ddrl import config as config_module
from ddrl import envs
from ddrl.config import EnvConfig
from ddrl.export import export_program, export_torchscript, serving_module
from ddrl.networks import build_actor
from ddrl.policy import load_policy, Policy


pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def saved_policy(tmp_path, env_id: str, hidden_sizes: list[int], normalized: bool, seed: int = 0):
    env = envs.describe(EnvConfig(id=env_id))
    torch.manual_seed(seed)
    architecture = {"hidden_sizes": hidden_sizes, "activation": "tanh"}
    actor = build_actor(env.observation, env.action_dim, architecture)
    with torch.no_grad():  # a trained-looking output layer (the init gain of 0.01 makes near-ties everywhere)
        actor[-1].weight.mul_(100.0 if env.discrete else 1000.0)
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=env.observation_dim) if normalized else None
    variance = rng.uniform(0.1, 4.0, size=env.observation_dim) if normalized else None
    Policy(actor, env, architecture, mean, variance).save(tmp_path / "policy")
    return load_policy(tmp_path / "policy")


def observations(policy, count: int = 512) -> np.ndarray:
    rng = np.random.default_rng(1)
    batch = rng.normal(scale=3.0, size=(count, policy.env.observation_dim)).astype(np.float32)
    batch[:8] *= 100.0  # far outside: the clip to +-10 after standardizing must match too
    return batch


@pytest.mark.parametrize(
    "env_id, hidden_sizes, normalized",
    [("CartPole-v1", [64, 64], True), ("CartPole-v1", [64, 64], False), ("Pendulum-v1", [64, 64], True),
     ("Pendulum-v1", [], True)],
)
def test_torchscript_gives_the_same_actions_as_load_policy(tmp_path, env_id, hidden_sizes, normalized):
    policy = saved_policy(tmp_path, env_id, hidden_sizes, normalized)
    path = export_torchscript(policy, tmp_path / "exported" / "policy.pt")
    model = torch.jit.load(str(path))
    batch = observations(policy)

    with torch.inference_mode():
        exported = model(torch.from_numpy(batch)).numpy()
    expected = policy.act(batch)
    if policy.env.discrete:
        assert exported.dtype == np.int64
        assert len(set(expected.tolist())) > 1  # not a constant policy: the comparison means something
        np.testing.assert_array_equal(exported, expected)
    else:
        assert exported.dtype == np.float32 and exported.shape == expected.shape
        np.testing.assert_array_equal(exported, expected)
        assert exported.min() >= -2.0 and exported.max() <= 2.0 and (np.abs(exported) == 2.0).any()


def test_serving_module_is_a_plain_module_with_the_same_actions(tmp_path):
    policy = saved_policy(tmp_path, "CartPole-v1", [64, 64], True)
    module = serving_module(policy)
    batch = observations(policy)
    with torch.inference_mode():
        np.testing.assert_array_equal(module(torch.from_numpy(batch)).numpy(), policy.act(batch))


def test_exported_file_loads_with_torch_alone(tmp_path):
    """A fresh interpreter that imports torch only (ddrl blocked) runs the exported policy."""
    policy = saved_policy(tmp_path, "CartPole-v1", [64, 64], True)
    path = export_torchscript(policy, tmp_path / "policy.pt")
    batch = observations(policy, 16)
    np.save(tmp_path / "batch.npy", batch)
    code = (
        "import sys; sys.modules['ddrl'] = None\n"
        "import numpy as np, torch\n"
        f"model = torch.jit.load({str(path)!r})\n"
        f"batch = torch.from_numpy(np.load({str(tmp_path / 'batch.npy')!r}))\n"
        "print(' '.join(str(int(a)) for a in model(batch)))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert output.stdout.split() == [str(int(a)) for a in policy.act(batch)]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_torch_export_program_gives_the_same_actions(tmp_path, env_id):
    policy = saved_policy(tmp_path, env_id, [64, 64], True)
    path = export_program(policy, tmp_path / "policy.pt2")
    model = torch.export.load(str(path)).module()
    for count in (1, 7, 512):  # any batch size
        batch = observations(policy, count)
        with torch.inference_mode():
            np.testing.assert_array_equal(model(torch.from_numpy(batch)).numpy(), policy.act(batch))


def test_evaluate_job_records_a_rollout_gif(tmp_path, capsys):
    from PIL import Image

    from jobs import evaluate

    saved_policy(tmp_path, "CartPole-v1", [64, 64], True)
    (tmp_path / "config.yaml").write_text(config_module.dump(config_module.load(small_ppo_config(tmp_path))))
    out = tmp_path / "out" / "rollout.gif"
    assert evaluate.main([str(tmp_path), "--episodes", "3", "--gif", str(out), "--gif-width", "160"]) == 0
    printed = capsys.readouterr().out
    assert "CartPole-v1: return" in printed and "over 3 episodes" in printed and f"in {out}" in printed
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames > 2
        assert gif.size == (160, 107)
    assert out.stat().st_size < 500_000


def test_export_job_writes_both_formats(tmp_path, capsys):
    from jobs import export

    policy = saved_policy(tmp_path, "CartPole-v1", [64, 64], True)
    batch = torch.from_numpy(observations(policy, 32))
    assert export.main([str(tmp_path), "--out", str(tmp_path / "policy.pt2")]) == 0
    assert export.main([str(tmp_path / "policy"), "--out", str(tmp_path / "policy.pt")]) == 0
    assert "torch.export program written" in capsys.readouterr().out
    expected = policy.act(batch.numpy())
    np.testing.assert_array_equal(torch.export.load(str(tmp_path / "policy.pt2")).module()(batch).numpy(), expected)
    np.testing.assert_array_equal(torch.jit.load(str(tmp_path / "policy.pt"))(batch).numpy(), expected)
    assert export.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt2")]) == 2


def test_export_and_evaluate_jobs_take_the_best_policy(tmp_path, capsys):
    from jobs import evaluate, export

    final = saved_policy(tmp_path, "CartPole-v1", [64, 64], True, seed=0)
    best = saved_policy(tmp_path / "other", "CartPole-v1", [64, 64], True, seed=1)
    (tmp_path / "other" / "policy").rename(tmp_path / "best")
    batch = torch.from_numpy(observations(final, 64))
    assert not np.array_equal(best.act(batch.numpy()), final.act(batch.numpy()))
    assert export.main([str(tmp_path), "--best", "--out", str(tmp_path / "best.pt2")]) == 0
    np.testing.assert_array_equal(torch.export.load(str(tmp_path / "best.pt2")).module()(batch).numpy(), best.act(batch.numpy()))
    (tmp_path / "config.yaml").write_text(config_module.dump(config_module.load(small_ppo_config(tmp_path))))
    assert evaluate.main([str(tmp_path), "--best", "--episodes", "2"]) == 0
    assert "over 2 episodes" in capsys.readouterr().out
    assert export.main([str(tmp_path / "best"), "--best", "--out", str(tmp_path / "x.pt2")]) == 2  # a policy dir has no best/


@pytest.mark.parametrize("env_id, hidden_sizes", [("CartPole-v1", [64, 64]), ("Pendulum-v1", [64, 64])])
def test_act_independently_does_not_depend_on_the_batch_and_agrees_with_act(tmp_path, env_id, hidden_sizes):
    policy = saved_policy(tmp_path, env_id, hidden_sizes, True)
    batch = observations(policy, 33)
    together = policy.act_independently(batch)
    for start, stop in ((0, 1), (5, 12), (32, 33)):
        np.testing.assert_array_equal(policy.act_independently(batch[start:stop]), together[start:stop])
    if policy.env.discrete:
        np.testing.assert_array_equal(together, policy.act(batch))
    else:
        np.testing.assert_allclose(together, policy.act(batch), rtol=1e-5, atol=1e-5)
