"""Exact, order-independent merging of task results (ddrl.merge), without Spark.

Spark's treeReduce combines partial results in an order and tree shape that vary from run to run; the merged
means must not depend on either, down to the last bit, and must match the exact weighted mean.
"""

from __future__ import annotations

import dataclasses
import itertools
from fractions import Fraction

import numpy as np
import pytest

from ddrl.config import ConfigError
from ddrl.engines import size_in_bytes
from ddrl.merge import FixedPoint, MergedResult, Partial, TaskOutput, decode_partial, encode_partial, from_limbs, merge, to_limbs

NUM_TASKS = 9
SIZE = 257
TWO_UNIT_ROUNDOFFS = 2.0**-52  # converting the exact sum to float64, then dividing by the weight


# ---- helpers ----------------------------------------------------------------------------------------------


def _mixed(rng, shape, low=-6, high=4, signs=True) -> np.ndarray:
    """float32 values with magnitudes log-uniform in [10**low, 10**high], of both signs unless told."""
    magnitude = 10.0 ** rng.uniform(low, high, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape) if signs else 1.0
    return (magnitude * sign).astype(np.float32)


def _output(rng, index: int, weight: int | None = None, **weighted) -> TaskOutput:
    weighted = weighted or {"params": _mixed(rng, SIZE), "stat": _mixed(rng, (2, 3))}
    episodes = int(rng.integers(0, 4))
    return TaskOutput(
        weight=int(rng.integers(1, 5000)) if weight is None else weight,
        weighted=weighted,
        records={"loss": float(rng.normal()), "updates": index + 1, "index": index, "vector": rng.normal(size=3)},
        env_steps=100 + index,
        episode_returns=rng.normal(size=episodes),
        episode_lengths=rng.integers(1, 500, size=episodes),
    )


def _outputs(seed: int, count: int = NUM_TASKS) -> list[TaskOutput]:
    rng = np.random.default_rng(seed)
    return [_output(rng, index) for index in range(count)]


def _partials(outputs) -> list[Partial]:
    return [Partial.of_task(index, output) for index, output in enumerate(outputs)]


def _fold(partials) -> Partial:
    total = partials[0]
    for partial in partials[1:]:
        total = merge(total, partial)
    return total


def _random_tree(partials, rng) -> Partial:
    """Merge in a random binary tree over the given order."""
    if len(partials) == 1:
        return partials[0]
    split = int(rng.integers(1, len(partials)))
    left, right = _random_tree(partials[:split], rng), _random_tree(partials[split:], rng)
    return left.merge(right) if rng.random() < 0.5 else right.merge(left)


def _assert_bit_identical(result: MergedResult, reference: MergedResult) -> None:
    assert result.weight == reference.weight
    assert result.means.keys() == reference.means.keys()
    for name in reference.means:
        assert result.means[name].dtype == np.float64
        assert np.array_equal(result.means[name], reference.means[name]), name
        assert np.array_equal(result.means[name].astype(np.float32), reference.means[name].astype(np.float32)), name
    assert [task["index"] for task in result.tasks] == [task["index"] for task in reference.tasks]
    assert dict(result.rejected) == dict(reference.rejected)


def _exact_mean(outputs, name: str, flat_index: int) -> Fraction:
    total = sum(Fraction(float(output.weighted[name].reshape(-1)[flat_index])) * output.weight for output in outputs)
    return total / sum(output.weight for output in outputs)


def _assert_within_rounding_of_exact(outputs, result: MergedResult, name: str) -> None:
    means = result.means[name].reshape(-1)
    for flat_index in range(len(means)):
        exact = _exact_mean(outputs, name, flat_index)
        error = abs(Fraction(float(means[flat_index])) - exact)
        assert error <= abs(exact) * Fraction(TWO_UNIT_ROUNDOFFS), (
            f"{name}[{flat_index}] = {means[flat_index]!r}, exact {float(exact)!r}, relative error {float(error / abs(exact)):.3g}"
        )


# ---- limbs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(-6, 4), (-12, -6), (0, 7)], ids=["1e-6..1e4", "1e-12..1e-6", "1..1e7"])
def test_limbs_round_trip_is_exact_for_float32_times_integer_weight(low, high):
    rng = np.random.default_rng(low + 100)
    values = _mixed(rng, 4000, low, high, signs=False).astype(np.float64)
    weights = rng.integers(1, 10_000, size=values.shape)
    products = values * weights  # exact in float64: 24-bit mantissa times a 14-bit integer
    round_trip = from_limbs(to_limbs(products))
    assert round_trip.dtype == np.float64
    np.testing.assert_array_equal(round_trip, products)


def test_limbs_round_trip_is_exact_for_negative_values_of_moderate_size():
    rng = np.random.default_rng(11)
    values = _mixed(rng, 4000, -6, 4).astype(np.float64) * rng.integers(1, 10_000, size=4000)
    np.testing.assert_array_equal(from_limbs(to_limbs(values)), values)
    np.testing.assert_array_equal(from_limbs(to_limbs(-values)), -values)


def test_limbs_round_trip_is_exact_for_small_negative_float32():
    values = -np.float32([1.2345e-10, 3e-12, 7.5e-9, 1e-7]).astype(np.float64)
    np.testing.assert_array_equal(from_limbs(to_limbs(values)), values)


def test_limbs_of_special_values():
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0**-80, 2.0**61, -(2.0**61), 123456789.125])
    np.testing.assert_array_equal(from_limbs(to_limbs(values)), values)
    limbs = to_limbs(values)
    assert limbs.shape == (3, len(values)) and limbs.dtype == np.int64


def test_limbs_keep_the_input_shape():
    values = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 8 - 1
    limbs = to_limbs(values)
    assert limbs.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(from_limbs(limbs), values)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**62, -(2.0**62), 1e300])
def test_to_limbs_rejects_non_finite_and_huge_values(bad):
    with pytest.raises(ValueError):
        to_limbs(np.array([1.0, bad]))


def test_from_limbs_normalises_carries():
    """Different limb vectors holding the same exact value give the same float."""
    carry = 1 << 40
    same_value = [
        np.array([[2], [0], [0]]),
        np.array([[1], [carry], [0]]),
        np.array([[1], [carry - 1], [carry]]),
        np.array([[3], [-carry], [0]]),
    ]
    for limbs in same_value:
        assert from_limbs(limbs.astype(np.int64))[0] == 2.0
    assert from_limbs(np.array([[0], [-1], [carry]], dtype=np.int64))[0] == 0.0


def test_sums_of_limbs_are_exact_where_float_sums_are_not():
    values = np.array([1e16, 1.0, -1e16, 1.0, 2.0**-60])
    assert sum(values.tolist()) != 2.0 + 2.0**-60  # float addition loses the small terms
    total = sum(to_limbs(np.array([value])) for value in values)
    assert from_limbs(total)[0] == 2.0 + 2.0**-60


# ---- merging ----------------------------------------------------------------------------------------------


def test_naive_float_sums_of_the_test_data_depend_on_order():
    """Sanity check on the data: plain float64 weighted sums would differ between orders."""
    outputs = _outputs(seed=1)
    rng = np.random.default_rng(0)
    sums = set()
    for _ in range(20):
        order = rng.permutation(NUM_TASKS)
        total = np.zeros(SIZE)
        for index in order:
            total = total + outputs[index].weighted["params"].astype(np.float64) * outputs[index].weight
        sums.add(total.tobytes())
    assert len(sums) > 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merge_is_bit_identical_in_any_order_and_tree_shape(seed):
    outputs = _outputs(seed)
    partials = _partials(outputs)
    reference = _fold(partials).finish()
    rng = np.random.default_rng(seed + 1000)
    for _ in range(40):
        order = [partials[index] for index in rng.permutation(NUM_TASKS)]
        _assert_bit_identical(_fold(order).finish(), reference)
        _assert_bit_identical(_random_tree(order, rng).finish(), reference)
    _assert_bit_identical(_fold(partials[::-1]).finish(), reference)
    assert reference.weight == sum(output.weight for output in outputs)


def test_merge_is_associative_and_commutative_on_the_exact_sums():
    a, b, c = _partials(_outputs(seed=4, count=3))
    left, right = (a.merge(b)).merge(c), a.merge(b.merge(c))
    for first, second in [(left, right), (a.merge(b), b.merge(a)), (left, c.merge(b).merge(a))]:
        assert first.weight == second.weight
        assert first.sums.keys() == second.sums.keys()
        for name in first.sums:
            assert first.sums[name].dtype == np.int64
            assert np.array_equal(first.sums[name], second.sums[name])
        assert first.records.keys() == second.records.keys()
        assert first.rejected == second.rejected


def test_merge_in_every_order_of_four():
    partials = _partials(_outputs(seed=5, count=4))
    reference = _fold(partials).finish()
    for order in itertools.permutations(partials):
        _assert_bit_identical(_fold(list(order)).finish(), reference)


def test_merge_does_not_modify_its_operands():
    a, b = _partials(_outputs(seed=6, count=2))
    a_sums = {name: value.copy() for name, value in a.sums.items()}
    a_records, a_weight = dict(a.records), a.weight
    a.merge(b)
    merge(a, b)
    assert a.weight == a_weight and a.records == a_records and a.rejected == {}
    for name, value in a_sums.items():
        assert np.array_equal(a.sums[name], value)


@pytest.mark.parametrize("seed", [7, 8])
def test_merged_mean_is_within_rounding_of_the_exact_weighted_mean(seed):
    outputs = _outputs(seed)
    result = _random_tree(_partials(outputs), np.random.default_rng(seed)).finish()
    _assert_within_rounding_of_exact(outputs, result, "params")
    _assert_within_rounding_of_exact(outputs, result, "stat")


def test_merged_mean_of_positive_tiny_and_huge_values_is_within_rounding():
    rng = np.random.default_rng(9)
    outputs = [_output(rng, index, params=_mixed(rng, 64, -12, 7, signs=False)) for index in range(NUM_TASKS)]
    result = _fold(_partials(outputs)).finish()
    _assert_within_rounding_of_exact(outputs, result, "params")


def test_merged_mean_of_small_negative_values_is_within_rounding():
    rng = np.random.default_rng(10)
    outputs = [_output(rng, index, params=-_mixed(rng, 64, -12, -3, signs=False)) for index in range(NUM_TASKS)]
    result = _fold(_partials(outputs)).finish()
    _assert_within_rounding_of_exact(outputs, result, "params")


def test_mean_of_equal_values_is_that_value():
    rng = np.random.default_rng(12)
    value = _mixed(rng, SIZE)
    outputs = [_output(rng, index, params=value) for index in range(NUM_TASKS)]
    result = _fold(_partials(outputs)).finish()
    np.testing.assert_array_equal(result.means["params"].astype(np.float32), value)
    np.testing.assert_array_equal(result.means["params"], value.astype(np.float64))


def test_mean_of_equal_small_negative_values_is_that_value():
    value = -np.float32([3e-12, 1.2345e-10, 7e-9])
    rng = np.random.default_rng(13)
    outputs = [_output(rng, index, weight=100, params=value) for index in range(3)]
    result = _fold(_partials(outputs)).finish()
    np.testing.assert_array_equal(result.means["params"].astype(np.float32), value)


def test_weights_weigh():
    rng = np.random.default_rng(14)
    heavy = _output(rng, 0, weight=3, x=np.array([1.0, -2.0]))
    light = _output(rng, 1, weight=1, x=np.array([5.0, 2.0]))
    result = Partial.of_task(1, light).merge(Partial.of_task(0, heavy)).finish()
    np.testing.assert_array_equal(result.means["x"], [2.0, -1.0])
    assert result.weight == 4


# ---- records ----------------------------------------------------------------------------------------------


def test_records_come_back_in_task_index_order():
    outputs = _outputs(seed=15)
    partials = _partials(outputs)
    rng = np.random.default_rng(15)
    for _ in range(10):
        result = _random_tree([partials[index] for index in rng.permutation(NUM_TASKS)], rng).finish()
        assert [task["index"] for task in result.tasks] == list(range(NUM_TASKS))
        for output, task in zip(outputs, result.tasks):
            assert task["loss"] == output.records["loss"]
            assert task["updates"] == output.records["updates"]
            np.testing.assert_array_equal(task["vector"], output.records["vector"])
            assert task["env_steps"] == output.env_steps
            assert task["episode_returns"].dtype == np.float64
            assert task["episode_lengths"].dtype == np.int64
            np.testing.assert_array_equal(task["episode_returns"], output.episode_returns)
            np.testing.assert_array_equal(task["episode_lengths"], output.episode_lengths)


def test_task_indices_need_not_be_contiguous():
    rng = np.random.default_rng(16)
    indices = [40, 3, 17, 0, 1000]
    partials = [Partial.of_task(index, _output(rng, index)) for index in indices]
    result = _fold(partials).finish()
    assert [task["index"] for task in result.tasks] == sorted(indices)


# ---- rejection of NaN and infinity ------------------------------------------------------------------------

POISONS = [
    ("weighted-nan", "params", lambda output: output.weighted["params"].__setitem__(5, np.nan)),
    ("weighted-inf", "params", lambda output: output.weighted["params"].__setitem__(0, np.inf)),
    ("weighted-minus-inf", "stat", lambda output: output.weighted["stat"].__setitem__((1, 2), -np.inf)),
    ("record-nan", "loss", lambda output: output.records.__setitem__("loss", float("nan"))),
    ("record-inf", "loss", lambda output: output.records.__setitem__("loss", float("inf"))),
    ("record-array-nan", "vector", lambda output: output.records["vector"].__setitem__(1, np.nan)),
    ("record-numpy-scalar-inf", "kl", lambda output: output.records.__setitem__("kl", np.float32(-np.inf))),
    ("record-list-nan", "history", lambda output: output.records.__setitem__("history", [0.5, float("nan")])),
    ("record-complex-nan", "z", lambda output: output.records.__setitem__("z", complex(np.nan, 0))),
]


@pytest.mark.parametrize("name, poison", [case[1:] for case in POISONS], ids=[case[0] for case in POISONS])
def test_non_finite_output_is_rejected(name, poison):
    outputs = _outputs(seed=17)
    bad_index = 4
    poison(outputs[bad_index])
    bad = Partial.of_task(bad_index, outputs[bad_index])
    assert bad.weight == 0
    assert bad.sums == {} and bad.records == {}
    assert list(bad.rejected) == [bad_index]
    assert name in bad.rejected[bad_index]

    healthy = [Partial.of_task(index, output) for index, output in enumerate(outputs) if index != bad_index]
    reference = _fold(healthy).finish()
    assert dict(reference.rejected) == {}
    rng = np.random.default_rng(17)
    for _ in range(10):
        mixed = healthy + [bad]
        result = _random_tree([mixed[index] for index in rng.permutation(len(mixed))], rng).finish()
        assert dict(result.rejected) == {bad_index: bad.rejected[bad_index]}
        assert result.weight == reference.weight == sum(o.weight for i, o in enumerate(outputs) if i != bad_index)
        for key in reference.means:
            assert np.array_equal(result.means[key], reference.means[key])
        assert [task["index"] for task in result.tasks] == [i for i in range(NUM_TASKS) if i != bad_index]


def test_finite_records_of_other_kinds_are_accepted():
    rng = np.random.default_rng(18)
    output = _output(rng, 0)
    output.records.update({"name": "task", "flag": True, "count": np.int64(3), "empty": np.array([]), "big": 1e308})
    partial = Partial.of_task(0, output)
    assert partial.rejected == {} and partial.weight == output.weight


def test_rejected_results_are_listed_in_index_order_and_all_rejected_gives_no_means():
    outputs = _outputs(seed=19, count=4)
    for output in outputs:
        output.weighted["params"][0] = np.nan
    result = _fold(_partials(outputs)[::-1]).finish()
    assert list(result.rejected) == [0, 1, 2, 3]
    assert result.weight == 0 and result.tasks == [] and dict(result.means) == {}


def test_two_rejected_and_seven_healthy():
    outputs = _outputs(seed=20)
    outputs[0].weighted["params"][3] = np.inf
    outputs[8].records["loss"] = float("nan")
    result = _random_tree(_partials(outputs)[::-1], np.random.default_rng(20)).finish()
    assert list(result.rejected) == [0, 8]
    healthy = _fold([Partial.of_task(index, outputs[index]) for index in range(1, 8)]).finish()
    _assert_bit_identical(result, MergedResult(healthy.weight, healthy.means, healthy.tasks, result.rejected))


# ---- fixed point: one int64 per value (parameter changes) ---------------------------------------------------


def _change_outputs(seed: int, fixed_point: FixedPoint, count: int = NUM_TASKS, scale: float = 1e-2) -> list[TaskOutput]:
    rng = np.random.default_rng(seed)
    outputs = []
    for index in range(count):
        output = _output(rng, index, weight=int(rng.integers(1, 4096)))
        change = (rng.standard_normal(SIZE) * scale * 10.0 ** rng.uniform(-6, 0, size=SIZE)).astype(np.float32)
        outputs.append(dataclasses.replace(output, fixed={"params_change": change}, fixed_point=fixed_point))
    return outputs


def _exact_fixed_mean(outputs, fixed_point: FixedPoint, flat_index: int) -> Fraction:
    """The mean of the values as the format holds them: each weighted value rounded to a multiple of 2**-k."""
    step = Fraction(1, 2**fixed_point.fraction_bits)
    total = sum(round(Fraction(float(o.fixed["params_change"][flat_index])) * o.weight / step) * step for o in outputs)
    return total / sum(output.weight for output in outputs)


def test_fixed_point_scale_fits_the_sum_of_the_largest_terms_in_int64():
    fixed_point = FixedPoint.for_sums(terms=100_000, magnitude=65536 * 1024.0)
    assert fixed_point.terms * fixed_point.limit * 2**fixed_point.fraction_bits <= 2**63 - 1
    assert fixed_point.limit >= 65536 * 1024.0
    assert FixedPoint.for_sums(terms=2, magnitude=2048 * 1024.0).fraction_bits == 41


@pytest.mark.parametrize("seed", range(4))
def test_fixed_point_mean_is_the_exact_mean_of_the_rounded_values_in_any_order(seed):
    fixed_point = FixedPoint.for_sums(NUM_TASKS, 4096 * 1024.0)
    outputs = _change_outputs(seed, fixed_point)
    reference = _fold(_partials(outputs)).finish()
    rng = np.random.default_rng(seed)
    for _ in range(5):
        order = rng.permutation(NUM_TASKS)
        shuffled = _random_tree([Partial.of_task(int(i), outputs[i]) for i in order], rng).finish()
        assert np.array_equal(shuffled.means["params_change"], reference.means["params_change"])
    means = reference.means["params_change"]
    for flat_index in range(0, SIZE, 7):
        exact = _exact_fixed_mean(outputs, fixed_point, flat_index)
        # One rounding converting the exact integer total to float64, one dividing by the weight.
        assert abs(Fraction(float(means[flat_index])) - exact) <= abs(exact) * Fraction(TWO_UNIT_ROUNDOFFS)


def test_fixed_point_rounding_is_far_below_float32_resolution():
    fixed_point = FixedPoint.for_sums(NUM_TASKS, 4096 * 1024.0)
    outputs = _change_outputs(9, fixed_point, scale=1.0)
    merged = _fold(_partials(outputs)).finish().means["params_change"]
    weights = np.array([o.weight for o in outputs], dtype=np.float64)
    exact_float = sum(o.fixed["params_change"].astype(np.float64) * o.weight for o in outputs) / weights.sum()
    assert np.max(np.abs(merged - exact_float)) <= 2.0**-fixed_point.fraction_bits  # ~1e-12 here


def test_fixed_point_sums_stay_exact_when_partial_sums_wrap_around():
    """Within the safe range no partial sum overflows; beyond it int64 addition still wraps modulo 2**64, so a
    total that fits is exact in every order.  Terms of 2**62 (a one-term scale) make partial sums wrap."""
    fixed_point = FixedPoint(fraction_bits=0, terms=1)
    outputs = [
        TaskOutput(1, {}, {}, 0, np.zeros(0), np.zeros(0), fixed={"change": np.array([value])}, fixed_point=fixed_point)
        for value in (2.0**62, 2.0**62, -(2.0**62))
    ]
    partials = _partials(outputs)
    wrapped = partials[0].merge(partials[1])
    assert wrapped.fixed_sums["change"][0] < 0  # 2**63 wrapped around to -2**63
    for order in itertools.permutations(range(3)):
        total = _fold([partials[i] for i in order])
        assert int(total.fixed_sums["change"][0]) == 2**62
        assert total.finish().means["change"][0] == 2.0**62 / 3


def test_a_change_outside_the_safe_range_is_rejected_with_its_reason():
    fixed_point = FixedPoint.for_sums(2, 100 * 1024.0)
    healthy, diverged = _change_outputs(3, fixed_point, count=2)
    diverged.fixed["params_change"][5] = 3.0 * fixed_point.limit / diverged.weight
    merged = merge(Partial.of_task(0, healthy), Partial.of_task(1, diverged)).finish()
    assert list(merged.rejected) == [1]
    assert "outside the safe range" in merged.rejected[1] and "params_change" in merged.rejected[1]
    assert merged.weight == healthy.weight
    np.testing.assert_array_equal(merged.means["params_change"], Partial.of_task(0, healthy).finish().means["params_change"])


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_a_non_finite_change_is_rejected(poison):
    fixed_point = FixedPoint.for_sums(2, 100 * 1024.0)
    (output,) = _change_outputs(4, fixed_point, count=1)
    output.fixed["params_change"][0] = poison
    assert Partial.of_task(0, output).rejected == {0: "non-finite values in 'params_change'"}


def test_fixed_point_and_limbs_travel_together():
    fixed_point = FixedPoint.for_sums(NUM_TASKS, 4096 * 1024.0)
    outputs = _change_outputs(5, fixed_point)
    merged = _fold(_partials(outputs)).finish()
    assert set(merged.means) == {"params", "stat", "params_change"}
    _assert_within_rounding_of_exact(outputs, merged, "params")


# ---- results as data (Spark Connect's Arrow rows) -----------------------------------------------------------


def test_an_encoded_partial_decodes_to_the_same_merge_bit_for_bit():
    fixed_point = FixedPoint.for_sums(NUM_TASKS, 4096 * 1024.0)
    outputs = _change_outputs(6, fixed_point)
    outputs[3].weighted["params"][0] = np.nan  # a rejected task travels too, with its reason and its evaluation
    partials = [Partial.of_task(index, output, {"returns": np.arange(index + 1.0), "seconds": 0.5})
                for index, output in enumerate(outputs)]
    halves = [decode_partial(encode_partial(_fold(partials[:4]))), decode_partial(encode_partial(_fold(partials[4:])))]

    decoded, reference = _fold(halves).finish(), _fold(partials).finish()

    _assert_bit_identical(decoded, reference)
    assert decoded.rejected == {3: "non-finite values in 'params'"}
    for task, expected in zip(decoded.tasks, reference.tasks):
        assert task.keys() == expected.keys()
        for name, value in expected.items():
            assert type(task[name]) is type(value) and np.array_equal(task[name], value), name
    assert [list(share["returns"]) for share in decoded.evaluations] == [list(np.arange(i + 1.0)) for i in range(NUM_TASKS)]


def test_encoding_refuses_what_would_need_pickle():
    partial = Partial.of_task(0, _output(np.random.default_rng(0), 0))
    partial.records[0]["nested"] = {"a": 1}
    with pytest.raises(TypeError, match=r"records/0/nested: only numbers, strings and their arrays travel as data"):
        encode_partial(partial)


@pytest.mark.parametrize("size, expected", [("1g", 2**30), ("512m", 512 * 2**20), ("0", 0), ("100", 100), ("4 GB", 4 * 2**30), ("2k", 2048)])
def test_spark_size_strings(size, expected):
    assert size_in_bytes(size) == expected


def test_an_unreadable_spark_size_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^spark: cannot read the size '1.5g'"):
        size_in_bytes("1.5g")
