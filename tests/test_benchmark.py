"""Smoke test of jobs/benchmark.py: its cheapest part (cost_model) with tiny sizes on the shared session writes a
table and a JSON file.  No timing is asserted: the figures themselves belong in BENCHMARKS.md."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT

from ddrl import config as config_module
from jobs import benchmark
from jobs.benchmark_parts import common, scaling_law, simulated_cluster, time_to_target


def test_cost_model_part_writes_a_table_and_json(spark, tmp_path, capsys):
    sizes = common.Sizes.quick()
    sizes.cost_sizes = (1_000, 5_000)
    sizes.cost_partitions = (2, 3)
    sizes.cost_depths = (1, 2)
    sizes.cost_jvm_tasks = (2, 4)
    out = tmp_path / "benchmark.json"
    bench = common.Bench(sizes, tmp_path / "work", out, quick=True, spark=spark)

    results = benchmark.run_parts(bench, ["cost_model"])

    printed = capsys.readouterr().out
    assert "## cost_model" in printed
    assert "| case | metric | value | target | status |" in printed
    stored = json.loads(out.read_text())
    assert stored["meta"]["failures"] == {}
    part = stored["parts"]["cost_model"]
    assert part["rows"] and {"case", "metric", "value", "unit", "target", "status"} <= set(part["rows"][0])
    assert set(part["data"]["sizes"]) == {"1000", "5000"}
    model = part["data"]["model"]
    assert {"job_floor_s", "per_param", "predictions", "half_efficiency_executors"} <= set(model)
    assert results["parts"]["cost_model"]["data"]["master"] == spark.sparkContext.master
    assert not spark.sparkContext._jsc.sc().isStopped()  # the shared session is the caller's: left running


def test_parse_train_output():
    text = "final evaluation: 500.0 +- 0.0 over 20 episodes (solved)\nenv steps: 36864 in 9 iterations\nwall time: 65.2 s, whole process\n"
    assert common.parse_train_output(text) == {"final_eval": 500.0, "final_eval_std": 0.0, "final_solved": True, "env_steps": 36864, "wall_s": 65.2}


def test_rounds_and_large_model_parts_run_at_smoke_size(spark, tmp_path):
    sizes = common.Sizes.quick()
    sizes.rounds_variants = sizes.rounds_variants[:1]
    sizes.rounds_budget = 2048
    out = tmp_path / "benchmark.json"
    bench = common.Bench(sizes, tmp_path / "work", out, quick=True, spark=spark)

    benchmark.run_parts(bench, ["rounds", "large_model"])

    stored = json.loads(out.read_text())
    assert stored["meta"]["failures"] == {}
    (runs,) = stored["parts"]["rounds"]["data"].values()
    assert [run["seed"] for run in runs] == [1] and runs[0]["consumed_env_steps"] <= 2048 + 4096
    large = stored["parts"]["large_model"]["data"]
    assert large["fedadamw, depth 1"]["result_bytes"] == 8 * large["fedadamw, depth 1"]["parameters"]
    assert large["average, depth 2"]["result_bytes"] == 56 * large["average, depth 2"]["parameters"]


@pytest.mark.parametrize("algo", ["ppo", "es"])
@pytest.mark.parametrize("tasks", [1, 16])
def test_simulated_cluster_configs_validate_with_the_same_work_per_task(algo, tasks):
    path, overrides = simulated_cluster.overrides(algo, tasks, iterations=6)
    config = config_module.load(ROOT / path, overrides)
    assert config.spark.num_tasks == tasks and config.env.id == "jobs.benchmark_parts.slow_envs:SlowPendulum"
    assert config.train.total_env_steps == 6 * common.iteration_steps(config)  # six iterations, whatever the task count
    assert common.iteration_steps(config) // tasks == (200 if algo == "ppo" else 400)


def test_time_to_target_reads_sb3s_evaluation_lines():
    output = "eval at 50000 steps: 998.7 (81.4 s)\nnoise\neval at 510404 steps: -5.5 (891.8 s)\nfinal evaluation: 5377.8 +- 587.6\n"
    assert time_to_target.sb3_evaluations(output) == [{"steps": 50000, "mean": 998.7, "seconds": 81.4},
                                                      {"steps": 510404, "mean": -5.5, "seconds": 891.8}]


def test_carry_part_compares_carried_and_reset_runs(spark, tmp_path):
    sizes = common.Sizes.quick()
    sizes.carry_iterations = {"CartPole PPO": 3}
    bench = common.Bench(sizes, tmp_path / "work", tmp_path / "benchmark.json", quick=True, spark=spark)

    results = benchmark.run_parts(bench, ["carry"])

    assert results["meta"]["failures"] == {}
    data = results["parts"]["carry"]["data"]["CartPole PPO"]
    assert len(data["carried"]["iterations"]) == len(data["reset every job"]["iterations"]) == 2
    assert all(metrics["carry_bytes"] > 0 for metrics in data["carried"]["metrics"])
    assert data["cold_restore"]["replayed_steps"] > 0 and data["cold_restore"]["replay_failures"] == 0


def test_scaling_law_part_projects_speed_ups_and_plots(spark, tmp_path):
    sizes = common.Sizes.quick()
    bench = common.Bench(sizes, tmp_path / "work", tmp_path / "benchmark.json", quick=True, spark=spark)
    # The overhead by task count comes from the simulated-cluster part of the same benchmark run.
    bench.results["parts"]["simulated_cluster"] = {"data": {"ppo": {1: {"iteration_s": 1.0, "task_work_s": 0.9},
                                                                    4: {"iteration_s": 1.3, "task_work_s": 0.9}}}}
    results = benchmark.run_parts(bench, ["scaling_law"])

    assert results["meta"]["failures"] == {}
    data = results["parts"]["scaling_law"]["data"]
    runs = data["cases"]["CartPole PPO, averaging"]
    assert set(runs) == {1, 2} and all(run["iterations"] for seeded in runs.values() for run in seeded)
    assert (tmp_path / "work" / "scaling_law.png").stat().st_size > 0
    metrics = [row["metric"] for row in results["parts"]["scaling_law"]["rows"]]
    assert "projected S(2), overhead of the simulated cluster" in metrics
    assert "iterations(1) / iterations(2), median of seeds" in metrics


def test_scaling_law_overhead_is_interpolated_and_extrapolated():
    overhead = {1: 0.1, 4: 0.4, 16: 1.0}
    assert scaling_law.overhead_at(overhead, 2) == pytest.approx(0.2)
    assert scaling_law.overhead_at(overhead, 16) == pytest.approx(1.0)
    assert scaling_law.overhead_at(overhead, 64) == pytest.approx(1.0 + 0.05 * 48)


def test_scaling_law_speed_up_is_the_median_of_each_seeds_ratio():
    def run(seed, iterations, work):
        return {"seed": seed, "iterations": iterations, "task_work_s": work}

    runs = {1: [run(1, 10, 1.0), run(2, 20, 1.0), run(3, 30, 1.0)], 4: [run(1, 5, 1.0), run(2, 5, 1.0), run(3, 30, 1.0)]}
    assert scaling_law.speed_ups(runs, None) == {1: 1.0, 4: 2.0}
    # With 1 s of overhead at 4 tasks (none at 1), T(4) doubles: seeds' ratios 1, 2 and 0.5.
    assert scaling_law.speed_ups(runs, lambda tasks, _: 1.0 if tasks == 4 else 0.0) == {1: 1.0, 4: 1.0}
    runs[4][0]["iterations"] = None  # a seed that missed the target: no speed-up to claim
    assert math.isnan(scaling_law.speed_ups(runs, None)[4])


def test_the_cost_models_cluster_overhead_grows_with_tasks_and_result_size():
    small = [scaling_law.model_overhead(tasks, 80_000) for tasks in (1, 16, 1000)]
    assert small == sorted(small) and small[0] < 0.1
    assert scaling_law.model_overhead(16, 80e6) > scaling_law.model_overhead(16, 80_000)


def test_the_timings_line_adds_up_and_the_benchmark_reads_it_back():
    import types

    import pyarrow as pa

    from jobs.benchmark_parts.vs_sb3 import fixed_time
    from jobs.train import fixed_time_line

    marks = {"launch": 100.0, "python": 101.0, "imports": 102.5, "run": 102.6, "session": 104.6, "trained": 112.0, "stopped": 112.2}
    iteration_s, wall_s = [3.0, 1.0, 1.0, 1.2], [3.4, 4.4, 5.4, 6.6]  # wall_s counts from ddrl.train's start (104.6)
    result = types.SimpleNamespace(metrics=pa.table({"iteration_s": iteration_s, "wall_s": wall_s}), wall_seconds=7.0)
    phases = fixed_time(fixed_time_line(marks, result))
    outside = (112.2 - 100.0) - sum(iteration_s) + (3.0 - 1.0)  # the first job's extra counts as outside
    assert phases["total"] == pytest.approx(outside, abs=0.01)
    assert sum(seconds for name, seconds in phases.items() if name != "total") == pytest.approx(outside, abs=0.05)
    assert phases["Spark session"] == pytest.approx(2.0) and phases["first job beyond a later iteration"] == pytest.approx(2.0)
    assert phases["final evaluation and saving"] == pytest.approx(0.4) and phases["before iteration 1"] == pytest.approx(0.4)


def test_data_part_measures_recording_scoring_and_bc_then_ppo(spark, tmp_path):
    bench = common.Bench(common.Sizes.quick(), tmp_path / "work", tmp_path / "benchmark.json", quick=True, spark=spark)

    results = benchmark.run_parts(bench, ["data"])

    assert results["meta"]["failures"] == {}
    data = results["parts"]["data"]["data"]
    assert all(case["files"] == 2 * case["tasks"] and case["record_s"] > 0 for case in data["recording"].values())  # a file an iteration and task
    assert all(case["score_rows_per_s"] > 0 and case["act_rows_per_s"] > 0 for case in data["scoring"].values())
    run = data["bc_then_ppo"][1]
    assert run["scratch_solved"] and run["recorded_rows"] > 0 and run["init_env_steps"] <= run["scratch_env_steps"]
