"""Alpha-beta fits: recover known coefficients, stay monotone, refuse nonsense."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from planner.errors import SpecError
from planner.fits import fit_alpha_beta, median_by_size

SIZES = [2**k for k in range(4, 25, 2)]


def _samples(alpha: float, beta: float, noise: float = 0.0, repeats: int = 5, seed: int = 0):
    rng = random.Random(seed)
    return [(n, (alpha + beta * n) * (1 + rng.uniform(-noise, noise))) for n in SIZES for _ in range(repeats)]


def test_recovers_exact_alpha_beta():
    fit = fit_alpha_beta(_samples(50e-6, 1 / 2e9))
    assert fit.alpha_s == pytest.approx(50e-6, rel=1e-9)
    assert fit.bandwidth_bytes_per_s == pytest.approx(2e9, rel=1e-9)
    assert fit.max_abs_residual < 1e-9
    assert fit.num_samples == len(SIZES) * 5
    assert (fit.min_bytes, fit.max_bytes) == (SIZES[0], SIZES[-1])


def test_recovers_alpha_beta_under_noise():
    # 10% uniform noise on every repeat; the median per size and the relative loss keep both within 5%.
    fit = fit_alpha_beta(_samples(20e-6, 1 / 5e9, noise=0.10, repeats=9, seed=3))
    assert fit.alpha_s == pytest.approx(20e-6, rel=0.05)
    assert fit.bandwidth_bytes_per_s == pytest.approx(5e9, rel=0.05)


def test_negative_intercept_is_clamped_to_zero_and_stays_monotone():
    # Data whose unconstrained line has a negative intercept (a super-linear curve).
    samples = [(n, 1e-12 * n ** 1.3) for n in SIZES]
    fit = fit_alpha_beta(samples)
    assert fit.alpha_s >= 0 and fit.beta_s_per_byte >= 0
    ts = [fit.time_s(n) for n in SIZES]
    assert ts == sorted(ts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**28), st.floats(1e-7, 10.0)), min_size=1, max_size=30))
def test_any_data_gives_monotone_time_and_bandwidth(samples):
    fit = fit_alpha_beta(samples)
    assert fit.alpha_s >= 0 and fit.beta_s_per_byte >= 0
    grid = [0, 1, 1e3, 1e5, 1e7, 1e9]
    times = [fit.time_s(n) for n in grid]
    bws = [fit.effective_bandwidth_bytes_per_s(n) for n in grid[1:]]
    assert times == sorted(times)
    assert all(b2 >= b1 * (1 - 1e-12) for b1, b2 in zip(bws, bws[1:]))


def test_median_by_size_groups_repeats():
    assert median_by_size([(8, 3.0), (8, 1.0), (8, 2.0), (4, 5.0)]) == [(4.0, 5.0), (8.0, 2.0)]


def test_single_size_and_bad_samples():
    fit = fit_alpha_beta([(1000, 1e-3), (1000, 1e-3)])
    assert fit.time_s(1000) == pytest.approx(1e-3)
    with pytest.raises(SpecError, match="zero samples"):
        fit_alpha_beta([])
    with pytest.raises(SpecError, match="time_s > 0"):
        fit_alpha_beta([(10, 0.0)])
