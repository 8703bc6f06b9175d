"""The inner partition problem: CP-SAT equals brute force on small instances, the greedy is sound, and the
integer problem agrees with the cost model it was built from."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cluster_spec import resolve_cluster
from planner.cost import CostModel
from planner.errors import ConfigError
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.search.partition import solve_cpsat
from planner.search.partition_brute import compositions, solve_brute_force
from planner.search.partition_greedy import solve_greedy
from planner.search.partition_problem import PartitionProblem, evaluate, problem_from_inputs

SCHEDULES = {1: ("gpipe", "1f1b"), 2: ("interleaved", "zbv"), 3: ("interleaved",)}


@st.composite
def problems(draw, max_layers: int = 8, max_ranks: int = 4) -> PartitionProblem:
    """Random instances: <= 8 layers, <= 4 pipeline ranks, 1-3 chunks per rank, uniform or mixed layers, with
    or without per-rank speeds."""
    L = draw(st.integers(2, max_layers))
    pp = draw(st.integers(1, min(max_ranks, L)))
    v = draw(st.sampled_from([x for x in (1, 2, 3) if pp * x <= L and (x == 1 or pp > 1)]))
    sched = draw(st.sampled_from(SCHEDULES[v]))
    C = pp * v
    m = draw(st.integers(pp, 3 * pp + 1))
    uniform = draw(st.booleans())

    def arr(lo: int, hi: int) -> tuple[int, ...]:
        if uniform:
            return (draw(st.integers(lo, hi)),) * L
        return tuple(draw(st.lists(st.integers(lo, hi), min_size=L, max_size=L)))

    act = arr(20, 100)
    full = tuple(min(a, f) for a, f in zip(act, arr(1, 40)))
    chunk_rank = tuple(ParallelConfig.chunk_to_pp_rank(c, pp, sched) for c in range(C))
    inflight = tuple(draw(st.integers(1, m)) for _ in range(C))
    speeds = draw(st.none() | st.lists(st.floats(0.25, 4.0, allow_nan=False, allow_infinity=False), min_size=pp,
                                       max_size=pp).map(tuple))
    return PartitionProblem(
        layer_time=arr(5, 40), layer_extra=arr(0, 15), layer_static=arr(50, 300), layer_act=act, layer_act_full=full,
        embed_time=draw(st.integers(0, 40)), head_time=draw(st.integers(0, 60)),
        embed_static=draw(st.integers(0, 400)), head_static=draw(st.integers(0, 400)),
        embed_act=draw(st.integers(0, 60)), head_act=draw(st.integers(0, 90)), inflight=inflight,
        chunk_rank=chunk_rank, num_ranks=pp, micro_batches=m, rank_other_bytes=(draw(st.integers(0, 100)),) * pp,
        capacity_bytes=draw(st.integers(300, 4000)), allow_recompute=draw(st.booleans()), rank_speed=speeds)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_cpsat_equals_brute_force(p: PartitionProblem) -> None:
    exact = solve_brute_force(p)
    got = solve_cpsat(p, time_limit_s=10.0)
    assert got.feasible == exact.feasible
    if exact.feasible:
        assert got.status == "optimal"
        assert (got.objective, got.secondary) == (exact.objective, exact.secondary)
        assert got.gap == 0.0 and got.bound == got.objective
        assert evaluate(p, got.stage_layers, got.stage_recompute_layers).feasible
    else:
        assert got.status == "infeasible"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_greedy_is_sound(p: PartitionProblem) -> None:
    """The warm start never claims better than the optimum, reports its own split truthfully, and for one
    chunk per rank with identical layers decides feasibility exactly (the solver relies on that)."""
    exact = solve_brute_force(p)
    for quick in (False, True):
        g = solve_greedy(p, quick=quick)
        ev = evaluate(p, g.stage_layers, g.stage_recompute_layers)
        assert (ev.feasible, ev.objective) == (g.feasible, g.objective)
        assert sum(g.stage_layers) == p.num_layers and min(g.stage_layers) >= 1
        if g.feasible:
            assert exact.feasible and g.objective >= exact.objective
    if p.chunks_per_rank == 1 and p.homogeneous:
        assert solve_greedy(p).feasible == exact.feasible


def test_compositions_cover_every_split() -> None:
    splits = list(compositions(6, 3))
    assert len(splits) == 10 and len(set(splits)) == 10
    assert all(sum(s) == 6 and min(s) >= 1 for s in splits)


def _uniform(L: int, pp: int, cap: int, v: int = 1, sched: str = "1f1b") -> PartitionProblem:
    C = pp * v
    chunk_rank = tuple(ParallelConfig.chunk_to_pp_rank(c, pp, sched) for c in range(C))
    inflight = tuple(pp - chunk_rank[c] + (pp if v > 1 and c < pp else 0) for c in range(C))
    return PartitionProblem(layer_time=(1000,) * L, layer_extra=(330,) * L, layer_static=(5000,) * L,
                            layer_act=(800,) * L, layer_act_full=(40,) * L, embed_time=2000, head_time=5000,
                            embed_static=30000, head_static=30000, embed_act=500, head_act=3000, inflight=inflight,
                            chunk_rank=chunk_rank, num_ranks=pp, micro_batches=64, rank_other_bytes=(1000,) * pp,
                            capacity_bytes=cap)


def test_large_uniform_problem_is_solved_to_optimality() -> None:
    """126 layers on 16 ranks (Llama 3.1 405B shape): the count encoding keeps it small enough to prove."""
    p = _uniform(126, 16, 100_000)
    r = solve_cpsat(p, time_limit_s=20.0)
    assert r.status == "optimal" and r.gap == 0.0
    assert evaluate(p, r.stage_layers, r.stage_recompute_layers).feasible
    assert any(r.stage_recompute_layers), "memory this tight needs full-recompute layers on the first ranks"
    # the heavy head (5 layers' worth) pushes layers off the last rank
    assert r.stage_layers[-1] < max(r.stage_layers)
    greedy = solve_greedy(p)
    assert greedy.feasible and greedy.objective >= r.objective


def test_infeasible_problem_is_proven() -> None:
    p = _uniform(16, 4, 20_000)
    assert not solve_greedy(p).feasible
    r = solve_cpsat(p, time_limit_s=5.0)
    assert r.status == "infeasible" and not r.feasible


def test_problem_validation() -> None:
    p = _uniform(8, 2, 100_000)
    with pytest.raises(ConfigError):
        PartitionProblem(**{**p.__dict__, "layer_extra": (1,) * 7})
    with pytest.raises(ConfigError):
        PartitionProblem(**{**p.__dict__, "chunk_rank": (0, 0), "inflight": (1, 1)})


def test_rank_speed_multiplies_each_ranks_time() -> None:
    """A slow rank's chunk costs its speed times the ticks (in time_unit_s); equal speeds change no decision."""
    p = _uniform(8, 2, 10**9)
    slow = dataclasses.replace(p, rank_speed=(3.0, 1.5))
    plain, weighted = evaluate(p, (4, 4), (0, 0)), evaluate(slow, (4, 4), (0, 0))
    for c, r in enumerate((0, 1)):
        secs = weighted.chunk_ticks[c] * slow.time_unit_s
        assert secs == pytest.approx(plain.chunk_ticks[c] * p.tick_s * slow.rank_speed[r], rel=1e-9)
    same = dataclasses.replace(p, rank_speed=(2.0, 2.0))
    a, b = solve_cpsat(p, time_limit_s=5.0), solve_cpsat(same, time_limit_s=5.0)
    assert a.stage_layers == b.stage_layers and b.objective_s == pytest.approx(2.0 * a.objective_s, rel=1e-9)
    moved = solve_cpsat(slow, time_limit_s=5.0)
    assert moved.status == "optimal" and moved.stage_layers[0] < a.stage_layers[0]  # work leaves the slow rank


@pytest.mark.parametrize("speeds", [(1.0,), (1.0, 0.0), (1.0, float("nan")), (1.0, float("inf")), (1.0, 1e5)])
def test_rank_speed_validation(speeds) -> None:
    p = _uniform(8, 2, 100_000)
    with pytest.raises(ConfigError, match="rank_speed|rank speeds"):
        dataclasses.replace(p, rank_speed=speeds)


def test_problem_from_inputs_quantises_conservatively() -> None:
    pin = SimpleNamespace(layer_time_s=(0.25, 0.25, 0.5), layer_full_recompute_extra_s=(0.1,) * 3,
                          layer_static_bytes=(10.2, 10.2, 20.5), layer_activation_bytes=(5.5,) * 3,
                          layer_activation_full_recompute_bytes=(1.0,) * 3, embed_time_s=0.0, embed_static_bytes=7.1,
                          embed_activation_bytes=0.0, head_time_s=0.0, head_static_bytes=3.0,
                          head_activation_bytes=2.2, inflight_microbatches=(2, 1), rank_other_bytes=4.4,
                          capacity_bytes=1000.0)
    p = problem_from_inputs(pin, chunk_rank=[0, 1], micro_batches=4)
    assert p.layer_static == (11, 11, 21) and p.embed_static == 8 and p.rank_other_bytes == (5, 5)
    assert p.layer_time[2] == 2 * p.layer_time[0]
    assert abs(p.tick_s * sum(p.layer_time) - 1.0) < 1e-9
    full = problem_from_inputs(pin, chunk_rank=[0, 1], micro_batches=4, allow_recompute=False)
    assert full.layer_extra == (0, 0, 0) and not full.allow_recompute
    fast = problem_from_inputs(pin, chunk_rank=[0, 1], micro_batches=4, rank_speed=[2.0, 0.5])
    assert fast.rank_speed == (2.0, 0.5) and fast.speed_weights == (40_000, 10_000)
    assert fast.time_unit_s == pytest.approx(p.tick_s * 0.5 / 10_000)


@pytest.mark.parametrize("model,gpus,schedule,v", [("gpt-7.5b", 16, "1f1b", 1), ("llama3.1-8b", 16, "interleaved", 2),
                                                  ("mixtral-8x7b", 16, "zbv", 2)])
def test_partition_agrees_with_the_cost_model(model: str, gpus: int, schedule: str, v: int) -> None:
    """A split the problem calls feasible fits in the cost model's estimate, and chunk times agree."""
    m = PRESETS[model].replace(seq_len=2048)
    if m.is_moe:  # two dense layers first: mixed layer types exercise the element (boundary) encoding
        m = m.replace(first_dense_layers=2)
    cluster = resolve_cluster("dgx-a100-80gb", gpus=gpus)
    cm = CostModel(m, cluster)
    config = ParallelConfig(dp=2, tp=2, pp=4, ep=2 if m.is_moe else 1, micro_batch_size=4, global_batch_size=64,
                            seq_len=2048, schedule=schedule, virtual_stages=v, zero_stage=3 if m.is_moe else 0)
    chunk_rank = [ParallelConfig.chunk_to_pp_rank(c, 4, schedule) for c in range(config.num_chunks)]
    p = problem_from_inputs(cm.partition_inputs(config), chunk_rank=chunk_rank,
                            micro_batches=config.num_micro_batches)
    r = solve_cpsat(p, time_limit_s=5.0)
    assert r.feasible, "80 GB with activation recomputation allowed fits these models"
    split = config.replace(stage_layers=r.stage_layers, stage_recompute_layers=r.stage_recompute_layers)
    est = cm.estimate(split)
    assert est.fits
    ticks = evaluate(p, r.stage_layers, r.stage_recompute_layers).chunk_ticks
    for c, t in enumerate(est.chunk_times_s):  # each layer's time was rounded to the nearest tick
        slack = (r.stage_layers[c] + 2) * p.tick_s
        if schedule == "zbv":  # B also waits for TP collectives the deferred W no longer hides: never less
            assert ticks[c] * p.tick_s - slack <= t <= ticks[c] * p.tick_s * 1.02 + slack
        else:
            assert abs(t - ticks[c] * p.tick_s) <= slack
    for s in est.memory_by_stage:
        assert abs(s.total_bytes - r.rank_bytes[s.pp_rank]) <= 1e-6 * s.total_bytes + 64
