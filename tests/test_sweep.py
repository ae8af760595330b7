"""Sweeps on the shared local[2,2] session: a grid, successive halving and PBT run their trials in shared Spark
jobs; a trial equals the same config trained alone; the packing of trials into jobs changes nothing; a driver
killed anywhere resumes to the same parameters; bad specs get one line before Spark starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, final_params, small_ppo_config

import ddrl
from ddrl.sweeps import driver
from ddrl.sweeps.schedulers import halving_survivors, rank
from ddrl.sweeps.spec import HalvingSpec

GRID = {"grid": {"ppo.learning_rate": [1e-3, 3e-3]}, "seeds": 2}
HALVING = {**GRID, "halving": {"eta": 2, "min_steps": 512}}
PBT = {"seeds": 4, "pbt": {"interval": 2}}
PBT_STEPS = 4 * 64 * 2 * 6  # 6 iterations: PBT generations after iterations 2 and 4


def _config(tmp_path: Path, steps: int | None = None) -> dict:
    config = small_ppo_config(tmp_path)
    if steps is not None:
        config["train"]["total_env_steps"] = steps
    return config


def _params(sweep_dir: Path) -> dict[str, np.ndarray]:
    return {path.name: final_params(path) for path in sorted((sweep_dir / "trials").iterdir())}


def _assert_same_trials(left: Path, right: Path) -> None:
    first, second = _params(left), _params(right)
    assert list(first) == list(second)
    for name in first:
        assert np.array_equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def sweeps(spark, tmp_path_factory):
    """One sweep of each kind, run once for the module's tests."""
    tmp = tmp_path_factory.mktemp("sweeps")
    return {
        "grid": ddrl.sweep(spark, _config(tmp), out=tmp / "grid", track=True, **GRID),
        "halving": ddrl.sweep(spark, _config(tmp), out=tmp / "halving", track=False, **HALVING),
        "pbt": ddrl.sweep(spark, _config(tmp, PBT_STEPS), out=tmp / "pbt", track=False, **PBT),
    }


def test_a_grid_runs_every_trial_as_a_normal_run_with_a_table_a_plot_and_a_summary(sweeps):
    result = sweeps["grid"]
    assert [trial.name for trial in result.trials] == [f"trial-00{index}" for index in range(4)]
    assert [(trial.values["ppo.learning_rate"], trial.values["seed"]) for trial in result.trials] == [(1e-3, 7), (1e-3, 8), (3e-3, 7), (3e-3, 8)]
    assert all(trial.status == "finished" and trial.iterations == 3 for trial in result.trials)
    for trial in result.trials:  # what jobs/train.py leaves
        assert {"config.yaml", "metrics", "checkpoints", "policy", "best", "learning_curve.png", "result.json"} <= {p.name for p in trial.run_dir.iterdir()}
        assert ddrl.load_policy(trial.run_dir / "policy").act(np.zeros(4)) in (0, 1)
    table = pq.read_table(result.directory / "sweep.parquet")
    assert table.num_rows == 4 * 3 == result.table.num_rows
    assert {"trial", "status", "iteration", "ppo.learning_rate", "seed", "parent", "env_steps", "eval_return_mean"} <= set(table.column_names)
    rows = table.to_pylist()
    assert sorted({(row["trial"], row["ppo.learning_rate"]) for row in rows}) == [(t.name, t.values["ppo.learning_rate"]) for t in result.trials]
    assert (result.directory / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert result.best.eval_return_mean == max(trial.eval_return_mean for trial in result.trials)
    assert f"best: {result.best.name}" in result.summary and result.summary == (result.directory / "summary.txt").read_text()


@pytest.mark.parametrize("sync, jobs_per_iteration", [
    ("parameters", 1),  # one job carries all 4 trials' tasks
    ("gradients", 2),  # barrier stages of at most the session's 4 task slots: 2 trials of 2 tasks each
])
def test_each_iteration_of_every_live_trial_is_one_spark_job_per_stage_the_slots_allow(spark, tmp_path, sync, jobs_per_iteration):
    assert spark.sparkContext.defaultParallelism == 4
    config = _config(tmp_path)
    config["spark"] = {**config.get("spark", {}), "sync": sync}
    group = f"one-job-per-iteration-{sync}"
    spark.sparkContext.setJobGroup(group, "a sweep of 4 trials, 3 iterations each")
    try:
        result = ddrl.sweep(spark, config, out=tmp_path / "sweep", track=False, **GRID)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    jobs = spark.sparkContext.statusTracker().getJobIdsForGroup(group)
    assert len(result.trials) == 4 and len(jobs) == 3 * jobs_per_iteration


def test_a_trial_equals_its_config_trained_alone(spark, sweeps, tmp_path):
    trial = sweeps["grid"].trials[3]
    config = _config(tmp_path)
    config["seed"], config["ppo"]["learning_rate"] = 8, 3e-3
    alone = ddrl.train(spark, config, run_dir=tmp_path / "alone", observers=[])
    assert np.array_equal(final_params(alone.run_dir), final_params(trial.run_dir))
    assert alone.eval_return_mean == trial.eval_return_mean


@pytest.mark.parametrize("kind, per_job", [("grid", 1), ("pbt", 3)])
def test_how_trials_share_jobs_changes_no_trial(spark, sweeps, tmp_path, kind, per_job):
    """One trial per job, or 3 of the 4 in one job and the last alone: other tasks in each job, other finishing
    orders, the same bytes."""
    spec = {"grid": GRID, "pbt": PBT}[kind]
    ddrl.sweep(spark, _config(tmp_path, PBT_STEPS if kind == "pbt" else None), out=tmp_path / "again", track=False, trials_per_job=per_job, **spec)
    _assert_same_trials(sweeps[kind].directory, tmp_path / "again")


def test_successive_halving_keeps_the_top_half_at_each_rung(sweeps):
    result = sweeps["halving"]
    state = json.loads((result.directory / "state.json").read_text())
    by_name = {trial.name: trial for trial in result.trials}
    assert sorted(state["stopped"].values()) == [512, 512, 1024]
    assert [trial.status for trial in result.trials].count("finished") == 1
    for name, rung in state["stopped"].items():
        assert by_name[name].status == "stopped" and by_name[name].env_steps == rung
    assert [trial.env_steps for trial in result.trials if trial.status == "finished"] == [3 * 512]
    assert result.table.num_rows == 1 + 1 + 2 + 3  # rows of 512, 512, 1024 and 1536 env steps
    first_rung = {name: _eval_at(result, name, 1) for name in by_name}
    assert set(halving_survivors(first_rung, HalvingSpec(eta=2, min_steps=512))) == {n for n in by_name if n not in state["stopped"] or state["stopped"][n] > 512}


def _eval_at(result, name: str, iteration: int) -> float:
    return next(row["eval_return_mean"] for row in result.table.to_pylist() if row["trial"] == name and row["iteration"] == iteration)


def test_pbt_replaces_the_bottom_quantile_with_the_top_and_records_the_lineage(sweeps):
    result = sweeps["pbt"]
    state = json.loads((result.directory / "state.json").read_text())
    assert [generation["iteration"] for generation in state["generations"]] == [2, 4]
    assert result.table.num_rows == 4 * 6
    rows = result.table.to_pylist()
    for generation in state["generations"]:
        (exploit,) = generation["exploits"]  # a quarter of 4 trials
        assert exploit["applied"] and exploit["recipient"] != exploit["donor"]
        scores = {name: _latest_eval(rows, name, generation["iteration"]) for name in {row["trial"] for row in rows}}
        assert exploit["recipient"] == rank(scores)[-1] and exploit["donor"] == rank(scores)[0]
        after = next(row for row in rows if row["trial"] == exploit["recipient"] and row["iteration"] == generation["iteration"] + 1)
        assert after["parent"] == exploit["donor"]
        assert after["ppo.learning_rate"] == exploit["hyperparameters"]["ppo.learning_rate"]
        donor_rate = next(row["ppo.learning_rate"] for row in rows if row["trial"] == exploit["donor"] and row["iteration"] == generation["iteration"])
        assert after["ppo.learning_rate"] in (pytest.approx(0.8 * donor_rate), pytest.approx(1.2 * donor_rate))
    last = state["generations"][-1]["exploits"][0]
    stored = yaml.safe_load((result.directory / "trials" / last["recipient"] / "config.yaml").read_text())
    assert stored["ppo"]["learning_rate"] == last["values"]["ppo.learning_rate"]
    assert stored["seed"] == 7 + int(last["recipient"][-1])  # the recipient keeps its own seed


def _latest_eval(rows: list[dict], name: str, iteration: int) -> float:
    evaluations = [row["eval_return_mean"] for row in sorted(rows, key=lambda row: row["iteration"]) if row["trial"] == name and row["iteration"] <= iteration]
    return evaluations[-1]


class _Killed(BaseException):
    """The driver dying (a BaseException, so no except clause of the code under test catches it)."""


@pytest.mark.parametrize("kind, where", [("pbt", "after 3 jobs"), ("pbt", "deciding"), ("halving", "stopping"), ("grid", "after 2 jobs")])
def test_a_killed_sweep_resumes_to_the_same_trials(spark, sweeps, tmp_path, monkeypatch, kind, where):
    """Killed between jobs, between a PBT decision and its exploit, or while the rung's stopped trials finish."""
    spec, steps = {"grid": (GRID, None), "halving": (HALVING, None), "pbt": (PBT, PBT_STEPS)}[kind]
    out = tmp_path / "killed"
    calls = {"count": 0}

    def dies(original):
        def wrapper(*args, **kwargs):
            calls["count"] += 1
            if where.startswith("after") and calls["count"] > int(where.split()[1]):
                raise _Killed
            if not where.startswith("after") and (where != "stopping" or args[-1] == "stopped"):
                raise _Killed
            return original(*args, **kwargs)
        return wrapper

    target = {"after": ("step", driver.step), "deciding": ("_carry_out", driver._Sweep._carry_out), "stopping": ("_finish", driver._Sweep._finish)}
    name, original = target[where.split()[0]]
    monkeypatch.setattr(driver if name == "step" else driver._Sweep, name, dies(original))
    with pytest.raises(_Killed):
        ddrl.sweep(spark, _config(tmp_path, steps), out=out, track=False, **spec)
    monkeypatch.undo()
    result = ddrl.sweep(spark, resume=out, track=False)
    _assert_same_trials(sweeps[kind].directory, out)
    assert [(t.name, t.status, t.eval_return_mean) for t in result.trials] == [(t.name, t.status, t.eval_return_mean) for t in sweeps[kind].trials]
    assert result.table.num_rows == sweeps[kind].table.num_rows


def test_the_sweep_job_is_killed_and_resumed_from_the_command_line(sweeps, tmp_path):
    """jobs/sweep.py killed with SIGKILL (driver and JVM) after PBT's first generation, then --resume."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, PBT_STEPS)))
    out = tmp_path / "sweep"
    environment = {**os.environ, "PYSPARK_PYTHON": sys.executable, "DDRL_MASTER": "local[2,2]"}
    command = [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(config), "--seeds", "4", "--pbt-interval", "2", "--out", str(out)]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "iter    3" in line:
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    resumed = subprocess.run([sys.executable, str(ROOT / "jobs" / "sweep.py"), "--resume", str(out)], env=environment,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "best: trial-" in resumed.stdout
    _assert_same_trials(sweeps["pbt"].directory, out)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--grid", "ppo.nonsense=1,2"], "ddrl: sweep.grid.ppo.nonsense: unknown key"),
        (["--grid", "ppo.learning_rate="], "ddrl: --grid ppo.learning_rate: no values"),
        (["--grid", "ppo.learning_rate"], "ddrl: --grid 'ppo.learning_rate': expected key=v1,v2"),
        (["--grid", "ppo.learning_rate=2.0"], "ddrl: sweep.grid.ppo.learning_rate: Input should be less than or equal to 1"),
        (["--random", "ppo.ent_coef=low:0.1", "--trials", "2"], "ddrl: --random ppo.ent_coef: low 'low' is not a number"),
        (["--random", "ppo.ent_coef=0.1:0.01"], "ddrl: sweep.random.ppo.ent_coef: low (0.1) must be below high (0.01)\n"),
        (["--random", "ppo.ent_coef=0:0.1:log"], "ddrl: sweep.random.ppo.ent_coef: a log range needs low > 0 (got 0)\n"),
        (["--grid", "seed=1,2"], "ddrl: sweep.grid.seed: seed is not swept (seeds: use sweep.seeds)"),
        ([], "ddrl: sweep: nothing to sweep"),
        (["--seeds", "2", "--pbt-interval", "2", "--halving-min-steps", "100"], "ddrl: sweep: halving and pbt cannot both schedule one sweep\n"),
        (["--seeds", "4", "--pbt-interval", "2", "--pbt-hyperparameters", "ppo.anneal_lr"], "ddrl: sweep.pbt.hyperparameters: ppo.anneal_lr is not a number"),
    ],
)
def test_a_bad_sweep_gets_one_line_before_spark_starts(tmp_path, args, expected):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    completed = subprocess.run([sys.executable, str(ROOT / "jobs" / "sweep.py"), "--config", str(config), "--out", str(tmp_path / "out"), *args],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith(expected) and completed.stderr.count("\n") == 1, completed.stderr
    assert not (tmp_path / "out").exists()


def test_random_search_samples_each_range_from_the_config_seed(tmp_path):
    from ddrl import config as config_module
    from ddrl.sweeps.spec import load_spec, plan

    base = config_module.load(_config(tmp_path))
    spec = load_spec({"grid": {"ppo.update_epochs": [2, 3]}, "trials": 5,
                      "random": {"ppo.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "ppo.num_minibatches": {"low": 1, "high": 4}}})
    trials = plan(base, spec)
    assert len(trials) == 2 * 5
    rates = [trial.values["ppo.learning_rate"] for trial in trials]
    assert all(1e-4 <= rate <= 1e-2 for rate in rates) and len(set(rates)) == 5  # the same 5 samples at each grid point
    assert all(isinstance(trial.values["ppo.num_minibatches"], int) and 1 <= trial.values["ppo.num_minibatches"] <= 4 for trial in trials)
    assert [trial.config.hyperparameters.learning_rate for trial in trials] == rates
    assert [trial.values for trial in plan(base, spec)] == [trial.values for trial in trials]
    reseeded = plan(config_module.load(_config(tmp_path), ["seed=8"]), spec)
    assert [trial.values["ppo.learning_rate"] for trial in reseeded] != rates


def test_pbt_perturbs_what_the_config_allows_and_draws_from_the_sweep_seed(tmp_path):
    from ddrl import config as config_module
    from ddrl.sweeps.schedulers import exploit_and_explore
    from ddrl.sweeps.spec import PbtSpec, perturbed_keys

    configs = {f"trial-00{index}": config_module.load(_config(tmp_path), [f"seed={index}", "ppo.clip_coef=1.0"]) for index in range(4)}
    scores = {"trial-000": 10.0, "trial-001": float("nan"), "trial-002": 30.0, "trial-003": 20.0}
    pbt = PbtSpec(interval=2, quantile=0.25, factors=[1.2])
    keys = perturbed_keys(configs["trial-000"], pbt)
    assert keys == ["ppo.learning_rate", "ppo.ent_coef", "ppo.clip_coef"]
    (exploit,) = exploit_and_explore(scores, configs, pbt, keys, sweep_seed=7, generation=0)
    assert (exploit.recipient, exploit.donor) == ("trial-001", "trial-002")  # never evaluated ranks last
    assert exploit.values == {"ppo.learning_rate": pytest.approx(2.5e-4 * 1.2), "ppo.ent_coef": 0.0, "ppo.clip_coef": 1.0}  # 1.2 is over clip's limit
    assert exploit_and_explore(scores, configs, pbt, keys, 7, 0) == [exploit]
    es = config_module.load({"name": "es", "algo": "es", "env": {"id": "CartPole-v1"}, "train": {"total_env_steps": 1000}, "es": {"num_directions": 4}})
    assert perturbed_keys(es, pbt) == ["es.learning_rate", "es.sigma"]


BROKEN_ENV = {"id": "faulty_envs:BrokenCartPole", "num_envs": 4, "max_episode_steps": 500}


@pytest.mark.parametrize("fault, reason", [("fail", "injected failure in every task"), ("nan", "every task's result was rejected")])
def test_a_failing_trial_ends_failed_and_the_others_go_on_as_without_it(spark, tmp_path, fault, reason):
    config = _config(tmp_path)
    config["env"] = BROKEN_ENV
    faulty = ddrl.sweep(spark, config, out=tmp_path / "faulty", track=True, grid={f"env.kwargs.{fault}": [False, True]}, seeds=2)
    clean = ddrl.sweep(spark, config, out=tmp_path / "clean", track=False, grid={f"env.kwargs.{fault}": [False]}, seeds=2)

    assert [(t.values[f"env.kwargs.{fault}"], t.status) for t in faulty.trials] == [(False, "finished")] * 2 + [(True, "failed")] * 2
    for trial in faulty.trials[2:]:
        assert reason in trial.reason and "\n" not in trial.reason and f"{trial.name} failed: " in faulty.summary
        assert json.loads((trial.run_dir / "result.json").read_text())["status"] == "failed"
    assert faulty.best.name in ("trial-000", "trial-001")
    for finished, alone in zip(faulty.trials[:2], clean.trials):  # bit-identical to the sweep without the failing trials
        assert np.array_equal(final_params(finished.run_dir), final_params(alone.run_dir))
    rows = pq.read_table(faulty.directory / "sweep.parquet").to_pylist()
    assert {row["reason"] for row in rows if row["trial"] in ("trial-002", "trial-003")} == {faulty.trials[2].reason, faulty.trials[3].reason}

    resumed = ddrl.sweep(spark, None, resume=faulty.directory, track=False)  # failed trials stay failed, nothing reruns
    assert [(t.status, t.reason) for t in resumed.trials] == [(t.status, t.reason) for t in faulty.trials]


def test_a_sweep_whose_every_trial_fails_stops_with_one_line(spark, tmp_path):
    config = _config(tmp_path)
    config["env"] = {**BROKEN_ENV, "kwargs": {"fail": True}}
    with pytest.raises(driver.SweepFailed, match="every trial failed") as raised:
        ddrl.sweep(spark, config, out=tmp_path / "sweep", track=False, seeds=2)
    assert "\n" not in str(raised.value) and "injected failure" in str(raised.value)
    assert "best: none, every trial failed" in (tmp_path / "sweep" / "summary.txt").read_text()


def test_pbt_never_copies_from_a_failed_trial(spark, tmp_path):
    config = _config(tmp_path, PBT_STEPS)
    config["env"] = BROKEN_ENV
    result = ddrl.sweep(spark, config, out=tmp_path / "pbt", track=False, grid={"env.kwargs.nan": [True, False]}, seeds=2, pbt={"interval": 2})
    failed = {t.name for t in result.trials if t.status == "failed"}
    assert failed == {"trial-000", "trial-001"}
    state = json.loads((result.directory / "state.json").read_text())
    assert state["generations"] and all(e["donor"] not in failed for g in state["generations"] for e in g["exploits"])
