"""Benchmark part 4: cost model."""

from __future__ import annotations

import contextlib
import math
import re
import time
from typing import Any, Iterator

import numpy as np

from ddrl.engines.tree import levels
from jobs.benchmark_parts.common import Bench, log, median, row, timed


def _cost_format() -> Any:
    """The fixed-point scale PPO would use for 8 tasks of 2,048 samples: the sizes measured here."""
    from ddrl.merge import FixedPoint

    return FixedPoint.for_sums(8, 2048 * 1024.0)


def _make_partial(index: int, size: int) -> Any:
    """Executor side: one task's Partial of a change of ``size`` float32 parameters, built the real way (PPO's format)."""
    from ddrl.merge import Partial, TaskOutput

    started = time.perf_counter()
    values = np.random.default_rng(index).standard_normal(size, dtype=np.float32) * 1e-3
    output = TaskOutput(1, {}, {}, 0, np.zeros(0), np.zeros(0, dtype=np.int64), fixed={"params_change": values}, fixed_point=_cost_format())
    partial = Partial.of_task(index, output)
    partial.records[index]["make_s"] = time.perf_counter() - started
    return partial


def _tiny_partial(index: int) -> Any:
    return _make_partial(index, 1)


def partial_costs(values: np.ndarray, repetitions: int) -> dict[str, Any]:
    """Driver-side costs of one task's Partial for ``values``: making, merging, finishing and (un)pickling it."""
    from pyspark.serializers import CPickleSerializer

    from ddrl.merge import Partial

    costs: dict[str, Any] = {"float32_bytes": values.nbytes}
    costs["encode_s"], encoded = timed(lambda: _cost_format().encode(values.astype(np.float64)), repetitions)
    partial = Partial(1, {}, {}, {}, fixed_sums={"params_change": encoded}, fixed_point=_cost_format())
    costs["merge_pair_s"], _ = timed(lambda: partial.merge(partial), repetitions)
    costs["finish_s"], _ = timed(partial.finish, repetitions)
    serializer = CPickleSerializer()
    costs["pickle_s"], pickled = timed(lambda: serializer.dumps(partial), repetitions)
    costs["unpickle_s"], _ = timed(lambda: serializer.loads(pickled), repetitions)  # our own bytes, just made
    costs["partial_bytes"] = len(pickled)
    return costs


def cost_model(bench: Bench) -> dict[str, Any]:
    from ddrl.merge import merge

    sizes = bench.sizes
    context = bench.spark().sparkContext
    repetitions = sizes.cost_repetitions
    rows, data = [], {"master": context.master, "default_parallelism": context.defaultParallelism, "sizes": {}, "baseline": {}}
    driver_memory = _bytes(context.getConf().get("spark.driver.memory", "1g"))
    max_driver_bytes = sizes.cost_driver_heap_share * driver_memory
    data["driver_memory_bytes"], data["max_bytes_to_driver"] = driver_memory, max_driver_bytes

    # Python workers up, and a floor: the same job with a one-parameter Partial.
    most = max(sizes.cost_partitions)
    context.parallelize(range(most), most).map(_tiny_partial).treeReduce(merge, depth=1)
    for partitions in sizes.cost_partitions:
        seconds, _ = timed(lambda: context.parallelize(range(partitions), partitions).map(_tiny_partial).treeReduce(merge, depth=1), max(repetitions, 5))
        data["baseline"][partitions] = seconds
        rows.append(row(f"{partitions} partitions", "job floor: map + treeReduce of 1-parameter Partials", seconds * 1e3, "ms"))
    # The driver's serial cost per task, bounded from above by JVM-only jobs (no Python): many tiny tasks.
    session = bench.spark()
    few, many = sizes.cost_jvm_tasks
    jvm = {}
    for tasks in (few, many):
        jvm[tasks], _ = timed(lambda: session.range(0, tasks, 1, tasks).count(), max(repetitions, 3))
    data["jvm_tasks"] = jvm
    data["driver_per_task_s"] = (jvm[many] - jvm[few]) / (many - few)
    rows.append(row(f"{few} vs {many} JVM-only tasks", "driver per-task cost (upper bound: includes running them on 2 cores)", data["driver_per_task_s"] * 1e3, "ms"))

    for size in sizes.cost_sizes:
        log(f"cost_model: {size:,} parameters")
        values = np.random.default_rng(0).standard_normal(size, dtype=np.float32)
        entry: dict[str, Any] = {"broadcast": {}, "tree_reduce": {}, **partial_costs(values, repetitions)}
        case = f"{size:,} params"
        rows += [
            row(case, "Partial on the wire (one int64 per parameter)", entry["partial_bytes"] / 1e6, "MB"),
            row(case, "encode the change (task side)", entry["encode_s"] * 1e3, "ms"),
            row(case, "merge of two Partials", entry["merge_pair_s"] * 1e3, "ms"),
            row(case, "pickle / unpickle one Partial", f"{entry['pickle_s'] * 1e3:.1f} / {entry['unpickle_s'] * 1e3:.1f}", "ms"),
            row(case, "finish (decode on the driver)", entry["finish_s"] * 1e3, "ms"),
        ]
        for partitions in sizes.cost_partitions:
            created, reads = [], []
            for _ in range(repetitions):
                started = time.perf_counter()
                broadcast = context.broadcast(values)
                created.append(time.perf_counter() - started)
                started = time.perf_counter()
                context.parallelize(range(partitions), partitions).map(lambda i: float(broadcast.value[i % 7])).collect()
                reads.append(time.perf_counter() - started)
                broadcast.destroy()
            plain, _ = timed(lambda: context.parallelize(range(partitions), partitions).map(lambda i: float(i)).collect(), repetitions)
            entry["broadcast"][partitions] = {"create_s": median(created), "job_s": median(reads), "plain_job_s": plain}
            rows.append(row(case, f"broadcast: create + job reading it, {partitions} tasks (job without: {plain * 1e3:.0f} ms)",
                            f"{median(created) * 1e3:.1f} + {median(reads) * 1e3:.0f}", "ms"))
        for partitions in sizes.cost_partitions:
            measured_plans: dict[tuple[int, ...], dict[str, Any]] = {}
            for depth in sizes.cost_depths:
                plan = levels(partitions, depth)
                key = f"{partitions}x{depth}"
                if tuple(plan) in measured_plans:
                    entry["tree_reduce"][key] = {"plan": plan, "same_as": measured_plans[tuple(plan)]["key"]}
                    continue
                to_driver = plan[-1] * entry["partial_bytes"]
                if to_driver > max_driver_bytes:
                    reason = (f"skipped: {to_driver / 1e6:.0f} MB would reach the driver; local mode holds ~4 copies in the "
                              f"{driver_memory / 2**30:.0f} GiB heap (10M params x 2 tasks: OutOfMemoryError, job hung)")
                    entry["tree_reduce"][key] = {"plan": plan, "skipped": reason}
                    measured_plans[tuple(plan)] = {"key": key}
                    rows.append(row(case, f"treeReduce {partitions} partitions depth {depth} (levels {plan})", reason))
                    continue
                seconds, makes, merges = [], [], []
                try:
                    for _ in range(repetitions):
                        started = time.perf_counter()
                        with _watchdog(context, sizes.cost_job_timeout):
                            result = context.parallelize(range(partitions), partitions).map(lambda i, n=size: _make_partial(i, n)).treeReduce(merge, depth=depth)
                        seconds.append(time.perf_counter() - started)
                        makes.append(max(record["make_s"] for record in result.records.values()))
                        merges.append(result.merge_seconds)
                        del result
                except Exception as error:  # cancelled by the watchdog, or a result Spark refused
                    reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    entry["tree_reduce"][key] = {"plan": plan, "failed": reason}
                    measured_plans[tuple(plan)] = {"key": key}
                    rows.append(row(case, f"treeReduce {partitions} partitions depth {depth} (levels {plan})", reason))
                    continue
                measured = {"key": key, "plan": plan, "job_s": median(seconds), "max_make_s": median(makes), "merge_calls_s": median(merges),
                            "bytes_to_driver": to_driver, "critical_bytes": critical_bytes(plan, entry["partial_bytes"], context.defaultParallelism)}
                measured["communication_s"] = measured["job_s"] - data["baseline"].get(partitions, 0.0) - _waves(partitions, context.defaultParallelism) * measured["max_make_s"]
                entry["tree_reduce"][key] = measured
                measured_plans[tuple(plan)] = measured
                same = [d for d in sizes.cost_depths if d != depth and tuple(levels(partitions, d)) == tuple(plan)]
                depth_label = f"depth {depth}" + (f" (= depth {', '.join(map(str, same))})" if same else "")
                rows.append(row(case, f"treeReduce {partitions} partitions {depth_label}, levels {plan}: job (make {measured['max_make_s'] * 1e3:.0f} ms/task)",
                                measured["job_s"] * 1e3, "ms"))
        data["sizes"][size] = entry
    data["model"] = fit_model(data, context.defaultParallelism)
    rows += model_rows(data["model"])
    return {"rows": rows, "data": data}


def _bytes(text: str) -> int:
    """Spark's memory strings: 2g, 1024m, 512k, or bytes."""
    match = re.fullmatch(r"(\d+)([kmgt]?)b?", text.strip().lower())
    if not match:
        return 2**30
    return int(match[1]) * 1024 ** "bkmgt".index(match[2] or "b")


@contextlib.contextmanager
def _watchdog(context: Any, seconds: float) -> Iterator[None]:
    """Cancel the jobs started inside after ``seconds``: a result too big for the driver's heap ends in an
    OutOfMemoryError on a JVM thread and the job never finishes (seen at 10M parameters on a 2g driver)."""
    import threading

    group = f"ddrl-benchmark-{time.monotonic_ns()}"
    context.setJobGroup(group, "cost model", interruptOnCancel=True)
    timer = threading.Timer(seconds, context.cancelJobGroup, args=(group,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        context.setLocalProperty("spark.jobGroup.id", None)


def critical_bytes(plan: list[int], partial_bytes: int, cores: int) -> int:
    """Bytes on the critical path of a treeReduce plan: per inner level, the waves of reducers on ``cores`` cores
    times each reducer's fan-in; then the driver's fan-in."""
    total = 0
    for upper, lower in zip(plan, plan[1:]):
        total += _waves(lower, cores) * math.ceil(upper / lower) * partial_bytes
    return total + plan[-1] * partial_bytes


def _waves(partitions: int, cores: int) -> int:
    return math.ceil(partitions / max(cores, 1))


# The model: per-parameter and per-task constants fitted from the measurements above, plus stated assumptions
# for a real cluster network.  See BENCHMARKS.md for the derivation.
NETWORK_BYTES_PER_S = 1.25e9  # assumption: 10 Gb/s driver and executor NICs
MAX_RESULT_BYTES = 2**30  # spark.driver.maxResultSize's default: a plan collecting more on the driver is infeasible
BROADCAST_BYTES_PER_PARAM = 4  # PPO's default payload: the parameters as float32 (adam_moments: restart)
RESULT_BYTES_PER_PARAM = 8  # its result: the parameter change as one int64 (ddrl.merge.FixedPoint)


def fit_model(data: dict[str, Any], cores: int) -> dict[str, Any]:
    """Constants for ``iteration_model`` from the measurements: see BENCHMARKS.md for the model."""
    baseline = data["baseline"]
    partitions = sorted(baseline)
    waves = [math.ceil(p / cores) for p in partitions]
    if len(set(waves)) >= 2:
        per_wave, floor = np.polyfit(waves, [baseline[p] for p in partitions], 1)
    else:
        per_wave, floor = 0.0, baseline[partitions[0]]
    sizes = sorted(data["sizes"])
    largest = data["sizes"][sizes[-1]]
    params = float(sizes[-1])
    per_param = {
        "encode_s": largest["encode_s"] / params,
        "merge_s": largest["merge_pair_s"] / params,
        "finish_s": largest["finish_s"] / params,
        "pickle_s_per_byte": largest["pickle_s"] / largest["partial_bytes"],
        "unpickle_s_per_byte": largest["unpickle_s"] / largest["partial_bytes"],
    }
    # Moving results, seconds per byte: the slope of (job - floor - the tasks' own making per wave) over bytes, every
    # size.  Executor pickling, Python -> JVM, block manager / shuffle files, JVM -> Python and unpickling, all on
    # one machine (a real network adds bytes / bandwidth).  One-level plans give the cost of collecting results on
    # the driver; plans with inner levels add reduceByKey shuffles, whose cost per byte is fitted on what remains.
    plans = [m for entry in data["sizes"].values() for m in entry["tree_reduce"].values() if "job_s" in m]
    collect_s_per_byte = _slope([(m["bytes_to_driver"], m["communication_s"]) for m in plans if len(m["plan"]) == 1])
    shuffle_s_per_byte = _slope([(m["critical_bytes"] - m["bytes_to_driver"], m["communication_s"] - collect_s_per_byte * m["bytes_to_driver"])
                                 for m in plans if len(m["plan"]) > 1])
    if not math.isfinite(shuffle_s_per_byte):
        shuffle_s_per_byte = collect_s_per_byte
    create = _slope([(e["float32_bytes"], b["create_s"]) for e in data["sizes"].values() for b in e["broadcast"].values()])
    read = _slope([(e["float32_bytes"], b["job_s"] - b["plain_job_s"]) for e in data["sizes"].values() for b in e["broadcast"].values()])
    constants = {
        "job_floor_s": max(float(floor), 0.0),
        "python_task_s": max(float(per_wave), 0.0),
        "driver_per_task_s": max(float(data.get("driver_per_task_s", 0.0)), 0.0),
        "cores": cores,
        "per_param": per_param,
        "collect_s_per_byte": collect_s_per_byte,
        "shuffle_s_per_byte": shuffle_s_per_byte,
        "broadcast_create_s_per_byte": create,
        "broadcast_read_s_per_byte": read,
        "network_bytes_per_s_assumed": NETWORK_BYTES_PER_S,
        "fitted_at_params": sizes[-1],
    }
    return {**constants, "predictions": predictions(constants), "half_efficiency_executors": half_efficiency(constants)}


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (seconds per byte), at least 0; NaN without two distinct x."""
    if len({x for x, _ in points}) < 2:
        return math.nan
    slope, _ = np.polyfit([x for x, _ in points], [y for _, y in points], 1)
    return max(float(slope), 0.0)


def iteration_model(executors: int, params: float, task_s: float, depth: int, constants: dict[str, Any]) -> dict[str, Any]:
    """Predicted seconds of one PPO iteration, one task per executor (weak scaling: fixed work per task).

    broadcast   the driver pickles the float32 parameters (4 bytes/param) once; torrent distribution takes about
                log2(E + 1) rounds of the whole payload over the network; every executor's worker unpickles it;
    scheduling  a per-job floor, one Python task start (all executors in parallel), and the driver's serial
                per-task cost times E;
    reduce      every task encodes its parameter change (8 bytes/param) and pickles it; each tree level
                moves fan-in results into one reducer (shuffle cost per byte + network) and merges them; the
                driver collects the last level's results (collect cost per byte + network), merges, finishes.
    """
    per = constants["per_param"]
    collect_per_byte = constants["collect_s_per_byte"] + 1 / constants["network_bytes_per_s_assumed"]
    shuffle_per_byte = constants["shuffle_s_per_byte"] + 1 / constants["network_bytes_per_s_assumed"]
    broadcast_bytes = BROADCAST_BYTES_PER_PARAM * params
    result_bytes = RESULT_BYTES_PER_PARAM * params
    broadcast = (broadcast_bytes * (constants["broadcast_create_s_per_byte"] + constants["broadcast_read_s_per_byte"])
                 + broadcast_bytes / constants["network_bytes_per_s_assumed"] * math.ceil(math.log2(executors + 1)))
    scheduling = constants["job_floor_s"] + constants["python_task_s"] + constants["driver_per_task_s"] * executors
    task_side = params * per["encode_s"]
    plan = levels(executors, depth)
    reduce_levels = 0.0
    for upper, lower in zip(plan, plan[1:]):
        fan_in = math.ceil(upper / lower)
        reduce_levels += fan_in * result_bytes * shuffle_per_byte + (fan_in - 1) * params * per["merge_s"]
    final = plan[-1]
    driver = final * result_bytes * collect_per_byte + (final - 1) * params * per["merge_s"] + params * per["finish_s"]
    overhead = broadcast + scheduling + task_side + reduce_levels + driver
    return {"broadcast_s": broadcast, "scheduling_s": scheduling, "task_side_s": task_side, "reduce_levels_s": reduce_levels,
            "driver_reduce_s": driver, "overhead_s": overhead, "iteration_s": task_s + overhead, "efficiency": task_s / (task_s + overhead),
            "levels": plan, "bytes_to_driver": final * result_bytes, "feasible": final * result_bytes <= MAX_RESULT_BYTES}


def predictions(constants: dict[str, Any], task_s: float = 1.0) -> list[dict[str, Any]]:
    """The model at 10k, 1M and 10M parameters, 2 to 1,000 executors, depths 1-3, ``task_s`` of work per task."""
    return [
        {"params": params, "executors": executors, "depth": depth, "task_s": task_s, **iteration_model(executors, params, task_s, depth, constants)}
        for params in (1e4, 1e6, 1e7)
        for executors in (2, 10, 100, 1000)
        for depth in (1, 2, 3)
    ]


def best_plan(executors: int, params: float, task_s: float, constants: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest of depths 1-3 whose last level fits spark.driver.maxResultSize; None if none does."""
    plans = [{"depth": depth, **iteration_model(executors, params, task_s, depth, constants)} for depth in (1, 2, 3)]
    feasible = [plan for plan in plans if plan["feasible"]]
    return min(feasible, key=lambda plan: plan["overhead_s"]) if feasible else None


def half_efficiency(constants: dict[str, Any], task_s: float = 1.0) -> dict[str, Any]:
    """Where scaling flattens: the smallest executor count at which the overhead exceeds the task's own work
    (efficiency below 50% at the best feasible depth), per parameter count; None if not below 100,000."""
    found = {}
    for params in (1e4, 1e6, 1e7):
        found[f"{params:.0e}"] = None
        for executors in sorted({int(round(10 ** (k / 20))) for k in range(0, 101)}):
            best = best_plan(executors, params, task_s, constants)
            if best is None or best["efficiency"] < 0.5:
                found[f"{params:.0e}"] = executors
                break
    return found


def model_rows(model: dict[str, Any]) -> list[dict[str, Any]]:
    per = model["per_param"]
    rows = [
        row("model", "job floor / Python task start / driver per task",
            f"{model['job_floor_s'] * 1e3:.0f} / {model['python_task_s'] * 1e3:.0f} / {model['driver_per_task_s'] * 1e3:.2f}", "ms"),
        row("model", "merge / encode / finish per parameter", f"{per['merge_s'] * 1e9:.2f} / {per['encode_s'] * 1e9:.1f} / {per['finish_s'] * 1e9:.1f}", "ns"),
        row("model", "pickle / unpickle per MB", f"{per['pickle_s_per_byte'] * 1e9:.2f} / {per['unpickle_s_per_byte'] * 1e9:.2f}", "ms"),
        row("model", "moving results per MB: collect on the driver / through a reduceByKey level (local session)",
            f"{model['collect_s_per_byte'] * 1e9:.2f} / {model['shuffle_s_per_byte'] * 1e9:.2f}", "ms"),
        row("model", "broadcast create / read per MB", f"{model['broadcast_create_s_per_byte'] * 1e9:.2f} / {model['broadcast_read_s_per_byte'] * 1e9:.2f}", "ms"),
    ]
    for params in (1e4, 1e6, 1e7):
        for executors in (100, 1000):
            best = best_plan(executors, params, 1.0, model)
            case = f"predicted PPO {params:.0e} params, {executors} executors"
            if best is None:
                rows.append(row(case, "overhead per iteration", f"infeasible: every depth collects > {MAX_RESULT_BYTES / 2**30:.0f} GiB on the driver"))
            else:
                rows.append(row(case, f"overhead per iteration (best depth {best['depth']}, levels {best['levels']})", best["overhead_s"], "s"))
    for params, executors in model["half_efficiency_executors"].items():
        rows.append(row(f"predicted PPO {params} params", "executors where overhead exceeds 1 s of work per task", executors if executors else "> 100,000"))
    return rows
