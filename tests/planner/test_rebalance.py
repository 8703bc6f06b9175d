"""Rebalance solver: measured per-rank speeds move layers off a slow rank, optimally on small cases."""

from __future__ import annotations

import itertools

import pytest

from planner.errors import ConfigError
from planner.parallel_config import ParallelConfig
from planner.rebalance import chunk_times_s, objective_with_speeds, rank_speeds, rebalance_split


def _pin(num_layers: int, pp: int, layer_s: float = 1.0, embed_s: float = 0.2, head_s: float = 0.5,
         capacity: int = 10**9) -> dict:
    return dict(layer_time_s=(layer_s,) * num_layers, layer_full_recompute_extra_s=(0.3,) * num_layers,
                layer_static_bytes=(10,) * num_layers, layer_activation_bytes=(5,) * num_layers,
                layer_activation_full_recompute_bytes=(1,) * num_layers, embed_time_s=embed_s, embed_static_bytes=10,
                embed_activation_bytes=1, head_time_s=head_s, head_static_bytes=10, head_activation_bytes=1,
                inflight_microbatches=tuple(range(pp, 0, -1)), rank_other_bytes=0, capacity_bytes=capacity)


def _cfg(pp: int, m: int) -> ParallelConfig:
    return ParallelConfig(dp=1, tp=1, pp=pp, micro_batch_size=1, global_batch_size=m, seq_len=64)


def _brute(pin, cfg, speeds, num_layers):
    best = None
    for split in itertools.product(range(1, num_layers + 1), repeat=cfg.pp):
        if sum(split) == num_layers:
            obj = objective_with_speeds(pin, cfg, speeds, split, (0,) * cfg.pp)
            best = obj if best is None else min(best, obj)
    return best


def test_speeds_are_measured_over_predicted():
    pin, cfg = _pin(8, 2), _cfg(2, 4)
    assert chunk_times_s(pin, (4, 4), (0, 0)) == pytest.approx([4.2, 4.5])
    assert rank_speeds(pin, cfg, (4, 4), [8.4, 4.5]) == pytest.approx((2.0, 1.0))


def test_slow_first_stage_moves_layers_to_the_second():
    pin, cfg = _pin(8, 2), _cfg(2, 4)
    res = rebalance_split(pin, cfg, (4, 4), [8.4, 4.5])
    assert res.stage_layers[0] < 4  # layers leave the slow rank
    assert res.objective_after_s < res.objective_before_s
    assert res.objective_after_s == pytest.approx(_brute(pin, cfg, res.speeds, 8))


@pytest.mark.parametrize("speeds", [(1.0, 3.0, 1.0, 1.0), (1.0, 1.0, 1.0, 2.5), (1.5, 1.0, 1.0, 1.0)])
def test_matches_brute_force_under_speed_model(speeds):
    L, pp = 10, 4
    pin, cfg = _pin(L, pp), _cfg(pp, 8)
    even = (2, 3, 3, 2)
    measured = [t * s for t, s in zip(chunk_times_s(pin, even, (0,) * pp), speeds)]
    res = rebalance_split(pin, cfg, even, measured)
    assert res.speeds == pytest.approx(speeds)
    assert res.objective_after_s == pytest.approx(_brute(pin, cfg, speeds, L))


@pytest.mark.parametrize("speeds", [(1.37, 1.0, 2.91), (1.0, 1.013, 1.0), (0.8, 1.9, 1.21)])
def test_one_exact_solve_with_mixed_layers_and_uneven_speeds(speeds):
    """Layers of different cost and non-round speeds: the single CP-SAT solve with per-rank speeds finds the
    brute-force optimum of the float speed model (no re-pricing rounds, no repair)."""
    L, pp = 9, 3
    pin, cfg = _pin(L, pp), _cfg(pp, 6)
    pin["layer_time_s"] = tuple(0.5 + 0.25 * (i % 4) for i in range(L))
    start = (3, 3, 3)
    measured = [t * s for t, s in zip(chunk_times_s(pin, start, (0,) * pp), speeds)]
    res = rebalance_split(pin, cfg, start, measured)
    assert res.speeds == pytest.approx(speeds)
    assert res.objective_after_s == pytest.approx(_brute(pin, cfg, speeds, L), rel=1e-6)


def test_balanced_measurement_keeps_the_split():
    pin, cfg = _pin(8, 2, embed_s=0.0, head_s=0.0), _cfg(2, 4)
    res = rebalance_split(pin, cfg, (4, 4), [4.0, 4.0])
    assert res.stage_layers == (4, 4) and res.objective_after_s == pytest.approx(res.objective_before_s)


def test_refuses_single_stage_and_missing_measurements():
    with pytest.raises(ConfigError, match="pp > 1"):
        rebalance_split(_pin(4, 1), _cfg(1, 4), (4,), [1.0])
    with pytest.raises(ConfigError, match="no compute time"):
        rebalance_split(_pin(8, 2), _cfg(2, 4), (4, 4), [1.0, 0.0])


def test_a_split_that_ran_over_the_modelled_capacity_bounds_the_new_one():
    # The memory model says even the measured split does not fit (capacity 1 byte), yet it ran: new splits
    # are held to the measured split's peak rank memory, not rejected outright.
    from planner.search.partition_problem import evaluate, problem_from_inputs

    pin, cfg = _pin(8, 2, capacity=1), _cfg(2, 4)
    problem = problem_from_inputs(pin, chunk_rank=[0, 1], micro_batches=4)
    peak_before = max(evaluate(problem, (4, 4), (0, 0)).rank_bytes)
    res = rebalance_split(pin, cfg, (4, 4), [8.4, 4.5])
    assert res.stage_layers[0] < 4 and res.objective_after_s < res.objective_before_s
    assert max(evaluate(problem, res.stage_layers, res.stage_recompute_layers).rank_bytes) <= peak_before
    unbounded = rebalance_split(_pin(8, 2), cfg, (4, 4), [8.4, 4.5])
    assert unbounded.objective_after_s <= res.objective_after_s
