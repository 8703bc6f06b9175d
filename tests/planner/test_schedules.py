"""Pipeline schedules as data: validity, known bubble sizes, CSV round trip, simulation and extrapolation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cost.pipeline import inflight_per_chunk, makespan
from planner.cost.schedule_dag import finish_times, schedule_dag, schedule_dag_of
from planner.errors import ConfigError, SpecError
from planner.schedules import Action, Schedule, build_schedule, peak_inflight, simulate

CASES = [("gpipe", 4, 8, 1), ("1f1b", 4, 8, 1), ("1f1b", 4, 2, 1), ("interleaved", 4, 8, 2),
         ("interleaved", 2, 6, 3), ("zbv", 4, 8, 2), ("zbv", 2, 3, 2), ("1f1b", 1, 5, 1)]


@pytest.mark.parametrize("name,p,m,v", CASES)
def test_every_schedule_is_valid_and_round_trips_through_csv(name, p, m, v):
    s = build_schedule(name, p, m, v)
    s.validate()
    assert Schedule.from_csv(s.to_csv()) == s
    assert len(s.grid().splitlines()) == p


def test_1f1b_order_matches_pipedream_flush():
    s = build_schedule("1f1b", 4, 8)
    assert [f"{a.kind}{a.microbatch}" for a in s.actions[0][:5]] == ["F0", "F1", "F2", "F3", "B0"]
    assert [f"{a.kind}{a.microbatch}" for a in s.actions[3][:3]] == ["F0", "B0", "F1"]


def test_interleaved_chunks_are_round_robin_as_megatron():
    s = build_schedule("interleaved", 2, 4, 2)
    assert {a.chunk for a in s.actions[0]} == {0, 2}
    assert {a.chunk for a in s.actions[1]} == {1, 3}
    # rank 0 warm-up: (p - 1) * 2 + (v - 1) * p = 4 forwards: chunk 0 mb 0,1 then chunk 2 mb 0,1
    assert s.actions[0][:4] == (Action(0, "F", 0), Action(0, "F", 1), Action(2, "F", 0), Action(2, "F", 1))


def test_gpipe_and_1f1b_bubble_equal_the_closed_form():
    # Narayanan et al. 2021 Sec 2.2: bubble time (p - 1)(tf + tb) with uniform stages, no communication
    p, m, tf, tb = 4, 8, 1.0, 2.0
    for name in ("gpipe", "1f1b"):
        tl = simulate(build_schedule(name, p, m), [tf] * p, [tb] * p, [0.0] * p, 0.0)
        assert tl.makespan_s == pytest.approx((m + p - 1) * (tf + tb))


def test_interleaving_shrinks_the_bubble_by_v():
    p, m, v, tf, tb = 4, 8, 2, 1.0, 2.0
    tl = simulate(build_schedule("interleaved", p, m, v), [tf / v] * (p * v), [tb / v] * (p * v), [0.0] * (p * v), 0.0)
    busy = m * (tf + tb)
    assert tl.makespan_s - busy == pytest.approx((p - 1) * (tf + tb) / v)


def test_zbv_has_almost_no_bubble_with_equal_f_b_w():
    p, m = 4, 16
    s = build_schedule("zbv", p, m, 2)
    tl = simulate(s, [1.0] * 8, [1.0] * 8, [1.0] * 8, 0.0)
    onef1b = simulate(build_schedule("1f1b", p, m), [2.0] * p, [4.0] * p, [0.0] * p, 0.0)
    assert tl.bubble_fraction() < 0.05 < onef1b.bubble_fraction()


@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_zbv_bubble_is_far_below_1f1b_with_equal_stage_times(p):
    # Qi et al. 2024 Sec 6: with T_F = T_B = T_W the V schedule's only idle time is the (p - 1) chunk
    # forwards before the last rank's first action: makespan (6 m + p - 1) t, against 1F1B's (m + p - 1)(3 t)
    # for the same per-rank work (a stage = 2 chunks)
    for m in range(2 * p, 4 * p + 1):
        n = 2 * p
        zb = simulate(build_schedule("zbv", p, m, 2), [1.0] * n, [1.0] * n, [1.0] * n, 0.0)
        ref = simulate(build_schedule("1f1b", p, m), [2.0] * p, [4.0] * p, [0.0] * p, 0.0)
        assert zb.makespan_s == pytest.approx(6 * m + p - 1)
        assert zb.bubble_fraction() == pytest.approx((p - 1) / (6 * m + p - 1))
        assert zb.bubble_fraction() < ref.bubble_fraction() / 4


def test_zbv_order_is_torchs_schedule_zbv_zero_bubble():
    # torch.distributed.pipelining ScheduleZBVZeroBubble._calculate_single_rank_operations, p = 2, m = 4:
    # rank 0 (chunks 0 and 3): 3 warm-up forwards of chunk 0; 2 x (F, B, W) of chunk 3; steady rounds; cool-down
    s = build_schedule("zbv", 2, 4, 2)
    cells = [f"{a.kind}{a.chunk}.{a.microbatch}" for a in s.actions[0]]
    assert cells == ("F0.0 F0.1 F0.2 F3.0 B3.0 W3.0 F3.1 B3.1 W3.1 F0.3 B0.0 W0.0 F3.2 B3.2 W3.2 "
                     "B0.1 W0.1 F3.3 B3.3 W3.3 B0.2 W0.2 B0.3 W0.3").split()
    # rank 1 (chunks 1 and 2): 1 forward of chunk 1, one (F2, F1) pair, then (F, B, W) of chunk 2
    assert [f"{a.kind}{a.chunk}.{a.microbatch}" for a in s.actions[1][:6]] == "F1.0 F2.0 F1.1 F2.1 B2.0 W2.0".split()


@pytest.mark.parametrize("p", [2, 3, 4, 5, 8])
def test_zbv_is_valid_deadlock_free_and_keeps_the_1f1b_activation_budget(p):
    for m in sorted({p, p + 1, 2 * p - 1, 2 * p, 3 * p + 1}):
        s = build_schedule("zbv", p, m, 2)
        s.validate()  # every action once, on its chunk's rank, and runs to completion (no deadlock)
        assert s.split_backward and Schedule.from_csv(s.to_csv()) == s
        for r in range(p):
            held = peak_inflight(s, r)
            assert set(held) <= {r, 2 * p - 1 - r}
            # Qi et al. 2024 Sec 6: at most 2p chunk-microbatches (half-stage chunks), the peak of 1F1B's first
            # stage (p micro-batches of a whole stage); reached once the V is full (m >= 2p - 1)
            assert sum(held.values()) <= 2 * p
            if m >= 2 * p - 1:
                assert sum(held.values()) == 2 * p
        assert sum(inflight_per_chunk("zbv", p, 2, m)[c] for c in (0, 2 * p - 1)) <= 2 * p


@settings(max_examples=25, deadline=None)
@given(p=st.integers(2, 6), extra=st.integers(0, 10), seed=st.lists(st.floats(0.2, 3.0), min_size=6, max_size=6),
       p2p=st.sampled_from([0.0, 0.1]))
def test_zbv_runs_to_completion_with_any_durations(p, extra, seed, p2p):
    n = 2 * p
    f = [seed[c % 6] for c in range(n)]
    b = [seed[(c + 2) % 6] for c in range(n)]
    w = [seed[(c + 4) % 6] for c in range(n)]
    tl = simulate(build_schedule("zbv", p, p + extra, 2), f, b, w, p2p)  # raises SpecError on a deadlock
    assert tl.makespan_s >= max(tl.busy_s(r) for r in range(p))


def test_p2p_latency_delays_dependent_actions():
    s = build_schedule("1f1b", 2, 2)
    a = simulate(s, [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], 0.0).makespan_s
    b = simulate(s, [1.0, 1.0], [1.0, 1.0], [0.0, 0.0], 0.5).makespan_s
    assert b == pytest.approx(a + 2 * 0.5)


def test_validate_rejects_a_missing_or_misplaced_action():
    s = build_schedule("1f1b", 2, 2)
    broken = Schedule(s.name, s.pp, 1, s.num_microbatches, (s.actions[0][:-1], s.actions[1]))
    with pytest.raises(SpecError):
        broken.validate()
    swapped = Schedule(s.name, s.pp, 1, s.num_microbatches, (s.actions[1], s.actions[0]))
    with pytest.raises(SpecError):
        swapped.validate()


def test_deadlocking_order_is_refused():
    # rank 0 waits for B of micro-batch 1 before its second forward: the backward never comes
    acts = ((Action(0, "F", 0), Action(0, "B", 1), Action(0, "F", 1), Action(0, "B", 0)),
            (Action(1, "F", 0), Action(1, "B", 0), Action(1, "F", 1), Action(1, "B", 1)))
    with pytest.raises(SpecError, match="deadlock"):
        Schedule("1f1b", 2, 1, 2, acts).validate()


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError):
        build_schedule("interleaved", 4, 6, 2)
    with pytest.raises(ConfigError):
        build_schedule("nope", 2, 2)


def test_inflight_reproduces_korthikanti_first_stage_counts():
    assert inflight_per_chunk("1f1b", 8, 1, 64)[0] == 8  # eq. 5: first stage holds p micro-batches
    p, v = 8, 3
    chunks = inflight_per_chunk("interleaved", p, v, 64)
    rank0 = sum(chunks[c] for c in range(0, p * v, p))
    assert rank0 == v * p + p - 1  # L (1 + (p-1)/(p v)) layers' worth
    assert inflight_per_chunk("gpipe", 4, 1, 16) == (16,) * 4
    assert peak_inflight(build_schedule("1f1b", 4, 8), 3) == {3: 1}


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["1f1b", "interleaved", "zbv", "gpipe"]), p=st.integers(2, 5),
       k=st.integers(4, 12), seed=st.lists(st.floats(0.5, 2.0), min_size=3, max_size=3),
       p2p=st.sampled_from([0.0, 0.05]))
def test_extrapolated_makespan_equals_full_simulation(name, p, k, seed, p2p):
    v = 2 if name in ("interleaved", "zbv") else 1
    m = k * p
    n = p * v
    f = tuple(seed[0] * (1 + 0.1 * (c % 3)) for c in range(n))
    b = tuple(seed[1] * 2 * (1 + 0.05 * (c % 2)) for c in range(n))
    w = tuple(seed[2] * 0.5 for _ in range(n)) if name == "zbv" else (0.0,) * n
    full = simulate(build_schedule(name, p, m, v), f, b, w, p2p).makespan_s
    # exact while m <= (K + 1) pp; beyond, the line through the last two simulated periods (never flatter than
    # the busiest rank's work): within 3% here, with stages unbalanced by up to 20% (transients outlast K)
    assert makespan(name, p, v, m, f, b, w, p2p).makespan_s == pytest.approx(full, rel=3e-2)


@pytest.mark.parametrize("name,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 3), ("zbv", 2)])
@pytest.mark.parametrize("p2p", [0.0, 0.05, 0.3])
def test_extrapolation_is_exact_for_balanced_stages(name, v, p2p):
    # balanced stages settle at once; with asynchronous sends the 1F1B steady state waits a round trip per
    # micro-batch, longer than the busiest rank's work (the extension measures the slope, it does not assume it)
    p = 4
    n = p * v
    f, b = (1.0 / v,) * n, (1.5 / v,) * n
    w = (0.5 / v,) * n if name == "zbv" else (0.0,) * n
    for m in (8 * p, 20 * p):
        full = simulate(build_schedule(name, p, m, v), f, b, w, p2p)
        got = makespan(name, p, v, m, f, b, w, p2p)
        assert got.makespan_s == pytest.approx(full.makespan_s, rel=1e-9)
        assert got.finish_s == pytest.approx([acts[-1][2] for acts in full.ranks], rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["1f1b", "interleaved", "zbv", "gpipe"]), p=st.integers(1, 5), k=st.integers(1, 4),
       seed=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6), p2p=st.sampled_from([0.0, 0.05, 0.7]))
def test_compiled_dag_simulates_exactly_like_the_reference(name, p, k, seed, p2p):
    v = 2 if name in ("interleaved", "zbv") and p > 1 else 1
    if name in ("interleaved", "zbv") and p == 1:
        name = "1f1b"
    m = k * p
    n = p * v
    f = [seed[c % 6] for c in range(n)]
    b = [seed[(c + 1) % 6] + 0.1 for c in range(n)]
    w = [seed[(c + 3) % 6] for c in range(n)]
    ref = simulate(build_schedule(name, p, m, v), f, b, w, p2p)
    fast = finish_times(schedule_dag(name, p, m, v), f, b, w, p2p)
    assert fast == tuple(acts[-1][2] for acts in ref.ranks)  # the same arithmetic: equal floats
    assert max(fast) == ref.makespan_s


def test_compiled_dag_refuses_a_deadlocking_order():
    acts = ((Action(0, "F", 0), Action(0, "B", 1), Action(0, "F", 1), Action(0, "B", 0)),
            (Action(1, "F", 0), Action(1, "B", 0), Action(1, "F", 1), Action(1, "B", 1)))
    with pytest.raises(SpecError, match="deadlock"):
        schedule_dag_of(Schedule("1f1b", 2, 1, 2, acts))


@settings(max_examples=20, deadline=None)
@given(p=st.integers(2, 6), m1=st.integers(1, 4))
def test_more_microbatches_shrink_the_bubble_fraction(p, m1):
    m_small, m_big = m1 * p, (m1 + 2) * p
    frac = []
    for m in (m_small, m_big):
        tl = simulate(build_schedule("1f1b", p, m), [1.0] * p, [2.0] * p, [0.0] * p, 0.0)
        frac.append(tl.bubble_fraction())
    assert frac[1] < frac[0]
