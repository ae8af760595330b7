"""Running moments merged across tasks (Chan et al.), and observation normalization."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ddrl.normalizer import CLIP, EPSILON, Moments, normalize

RTOL, ATOL = 1e-12, 1e-12


def _fold(chunks, shape):
    return functools.reduce(lambda total, chunk: total.combine(chunk), chunks, Moments.empty(shape))


def _assert_moments_equal(actual: Moments, expected: Moments):
    assert actual.count == expected.count
    np.testing.assert_allclose(actual.mean, expected.mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(actual.m2, expected.m2, rtol=RTOL, atol=ATOL * max(1.0, float(np.max(np.abs(expected.m2)))))
    np.testing.assert_allclose(actual.variance, expected.variance, rtol=RTOL, atol=ATOL)


def _samples(rng, count, shape):
    # Offsets and scales that differ per dimension, as observations do (positions, velocities, angles).
    scale = np.geomspace(1e-2, 1e3, num=int(np.prod(shape, dtype=int)) or 1).reshape(shape) if shape else 5.0
    return rng.normal(size=(count, *shape)) * scale + 3.0 * scale


@pytest.mark.parametrize("sizes", [[7, 1, 13, 1, 1, 40], [1], [1, 1, 1], [100], [2, 3, 500, 1]], ids=str)
@pytest.mark.parametrize("shape", [(4,), (), (2, 3)], ids=str)
def test_combined_chunks_equal_the_whole(sizes, shape):
    rng = np.random.default_rng(len(sizes) * 31 + len(shape))
    chunks = [_samples(rng, size, shape) for size in sizes]
    whole = Moments.of(np.concatenate(chunks))
    combined = _fold([Moments.of(chunk) for chunk in chunks], shape)
    _assert_moments_equal(combined, whole)
    np.testing.assert_allclose(whole.mean, np.concatenate(chunks).mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(whole.variance, np.concatenate(chunks).var(axis=0), rtol=1e-10)


def test_combining_in_another_order_or_grouping_agrees():
    rng = np.random.default_rng(5)
    chunks = [Moments.of(_samples(rng, size, (3,))) for size in [5, 1, 9, 2, 30]]
    left_to_right = _fold(chunks, (3,))
    reversed_order = _fold(chunks[::-1], (3,))
    grouped = (chunks[0].combine(chunks[1])).combine(chunks[2].combine(chunks[3].combine(chunks[4])))
    _assert_moments_equal(reversed_order, left_to_right)
    _assert_moments_equal(grouped, left_to_right)


def test_one_sample_chunk_has_zero_m2():
    moments = Moments.of(np.array([[1.5, -2.0, 3.0]]))
    assert moments.count == 1.0
    np.testing.assert_array_equal(moments.mean, [1.5, -2.0, 3.0])
    np.testing.assert_array_equal(moments.m2, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(moments.variance, [0.0, 0.0, 0.0])


def test_empty_moments_are_neutral():
    rng = np.random.default_rng(6)
    data = _samples(rng, 20, (3,))
    moments = Moments.of(data)
    empty = Moments.empty((3,))
    _assert_moments_equal(empty.combine(moments), moments)
    _assert_moments_equal(moments.combine(empty), moments)
    _assert_moments_equal(_fold([empty, Moments.of(data[:4]), empty, empty, Moments.of(data[4:]), empty], (3,)), moments)
    both = empty.combine(Moments.empty((3,)))
    assert both.count == 0.0
    np.testing.assert_array_equal(both.variance, np.ones(3))  # no data yet: unit variance


def test_variance_of_no_data_is_one():
    np.testing.assert_array_equal(Moments.empty((2,)).variance, [1.0, 1.0])
    assert float(Moments.empty(()).variance) == 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_empty_chunk_from_of_is_neutral(where):
    rng = np.random.default_rng(7)
    chunks = [_samples(rng, size, (3,)) for size in [4, 6]]
    empty = np.empty((0, 3))
    position = {"first": 0, "middle": 1, "last": 2}[where]
    with_empty = chunks[:position] + [empty] + chunks[position:]
    with np.errstate(all="ignore"):
        combined = functools.reduce(lambda total, chunk: total.combine(chunk), [Moments.of(chunk) for chunk in with_empty])
    _assert_moments_equal(combined, Moments.of(np.concatenate(chunks)))


def test_combine_with_large_offset_is_stable():
    """Chan's formula keeps precision when the mean is far larger than the spread."""
    rng = np.random.default_rng(8)
    data = 1e6 + rng.normal(size=(1000, 2))
    combined = _fold([Moments.of(chunk) for chunk in np.array_split(data, 7)], (2,))
    np.testing.assert_allclose(combined.variance, data.var(axis=0), rtol=1e-9)


def test_combine_does_not_modify_its_inputs():
    first, second = Moments.of(np.arange(6.0).reshape(3, 2)), Moments.of(np.ones((2, 2)))
    first_mean, first_m2 = first.mean.copy(), first.m2.copy()
    first.combine(second)
    np.testing.assert_array_equal(first.mean, first_mean)
    np.testing.assert_array_equal(first.m2, first_m2)


def test_normalize_standardizes_in_range_values():
    mean, variance = np.array([1.0, -2.0, 0.0]), np.array([4.0, 0.25, 1.0])
    values = np.array([[3.0, -2.5, 0.5], [1.0, -2.0, -1.0]])
    result = normalize(values, mean, variance)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, (values - mean) / np.sqrt(variance + EPSILON), rtol=1e-6)


def test_normalize_clips_to_ten():
    assert CLIP == 10.0
    mean, variance = np.zeros(4), np.ones(4)
    values = np.array([[1e6, -1e6, 10.5, -10.000001], [9.99, -9.99, 0.0, np.inf]])
    result = normalize(values, mean, variance)
    np.testing.assert_array_equal(result[0], np.float32([10.0, -10.0, 10.0, -10.0]))
    np.testing.assert_allclose(result[1, :3], [9.99, -9.99, 0.0], rtol=1e-6)
    assert result[1, 3] == 10.0
    assert np.all(result <= 10.0) and np.all(result >= -10.0)


def test_normalize_with_zero_variance_is_finite_and_clipped():
    result = normalize(np.array([[1.0, 2.0]]), np.array([1.0, 0.0]), np.array([0.0, 0.0]))
    assert result[0, 0] == 0.0
    assert result[0, 1] == 10.0  # 2 / sqrt(1e-8) = 2e4, clipped


def test_normalize_random_values_are_always_in_range():
    rng = np.random.default_rng(9)
    values = rng.standard_cauchy(size=(500, 3)) * 100
    result = normalize(values, rng.normal(size=3), rng.uniform(0.01, 2, size=3))
    assert np.all(np.abs(result) <= CLIP)
    assert np.any(np.abs(result) == CLIP)
