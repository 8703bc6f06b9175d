"""predicted_trace.json: valid in the shared schema, the cost model's schedule, its durations, its step time."""

from __future__ import annotations

from collections import defaultdict

import pytest

from planner import trace_schema
from planner.cluster_spec import CLUSTER_PRESETS
from planner.cost import CostModel, CostOptions
from planner.cost.pipeline import DEFAULT_SETTLE_PERIODS, SETTLE_PERIODS
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.rank_order import coords_of
from planner.report.timeline import step_timeline
from planner.report.trace import MAX_PROCESSES, predicted_trace
from planner.schedules import build_schedule

LLAMA8 = PRESETS["llama3.1-8b"]
H100 = CLUSTER_PRESETS["dgx-h100"]


def trace_for(cfg: ParallelConfig, model=LLAMA8, gpus: int = 16, options: CostOptions | None = None):
    cm = CostModel(model, H100.with_world(gpus=gpus), options=options)
    est = cm.estimate(cfg)
    st = step_timeline(cm, cfg, est.breakdown)
    data = predicted_trace(st, plan_name=cfg.name, step_time_s=est.step_time_s)
    return est, st, data, trace_schema.events(data, "predicted")  # the shared validator


def STEP_REL(c: ParallelConfig) -> float:  # noqa: N802 - reads like a constant at the call site
    # the estimate simulates all micro-batches up to (K + 1) pp and extends the steady-state line beyond
    # (planner/cost/pipeline.py: within 0.1% of the full simulation the trace shows, on real configurations)
    k = SETTLE_PERIODS.get(c.schedule, DEFAULT_SETTLE_PERIODS)
    return 1e-9 if c.num_micro_batches <= (k + 1) * c.pp else 1e-3


def cfg(**kw) -> ParallelConfig:
    base = dict(dp=2, tp=2, pp=4, micro_batch_size=1, global_batch_size=32, seq_len=4096, sequence_parallel=True)
    base.update(kw)
    return ParallelConfig(**base)


SCHEDULES = [dict(), dict(schedule="gpipe"), dict(schedule="interleaved", virtual_stages=2),
             dict(schedule="zbv", virtual_stages=2), dict(recompute="full", stage_layers=(6, 10, 10, 6)),
             dict(pp=1, dp=8, zero_stage=1)]


@pytest.mark.parametrize("kw", SCHEDULES, ids=lambda kw: cfg(**kw).name)
def test_trace_is_the_schedule_with_predicted_durations(kw) -> None:
    c = cfg(**kw)
    est, st, data, evs = trace_for(c)
    assert data["otherData"]["source"] == "predicted" and data["displayTimeUnit"] == "ms"
    # the trace ends at the predicted step time (microseconds; STEP_REL: the estimate's extrapolation)
    assert max(e.end_us for e in evs) == pytest.approx(est.step_time_s * 1e6, rel=STEP_REL(c))
    sched = build_schedule(c.schedule, c.pp, c.num_micro_batches, c.virtual_stages)
    by_rank = defaultdict(list)
    for e in evs:
        by_rank[e.rank].append(e)
    assert sorted(by_rank) == sorted(r for r in range(c.world_size) if coords_of(c.degrees, r)["tp"] == 0)
    chunk_total = defaultdict(float)
    for chunk, t in enumerate(est.chunk_times_s):
        chunk_total[ParallelConfig.chunk_to_pp_rank(chunk, c.pp, c.schedule)] += t
    for rank, lst in by_rank.items():
        p = coords_of(c.degrees, rank)["pp"]
        compute = sorted((e for e in lst if e.track == "compute" and e.kind in ("F", "B", "W")), key=lambda e: e.ts_us)
        # exactly the action list the runtime executes, in its order
        assert [(e.kind, e.chunk, e.microbatch) for e in compute] == [(a.kind, a.chunk, a.microbatch)
                                                                      for a in sched.actions[p]]
        # compute + TP + EP slices of F/B/W carry exactly the cost model's per-chunk time x micro-batches
        busy = sum(e.dur_us for e in lst if e.track in ("compute", "tp", "ep") and e.kind in ("F", "B", "W"))
        assert busy == pytest.approx(c.num_micro_batches * chunk_total[p] * 1e6, rel=1e-6)
        opt = [e for e in lst if e.kind == "O"]
        assert len(opt) == 1 and opt[0].dur_us == pytest.approx(est.breakdown["optimizer"] * 1e6, abs=2e-3)
    tp = sum(e.dur_us for e in evs if e.track == "tp")
    assert tp > 0  # tp=2 collectives are on their own track
    if c.pp > 1:
        sends = [e for e in evs if e.track == "pp"]
        assert sends and all(e.dur_us == pytest.approx(st.p2p_s * 1e6, abs=2e-3) for e in sends)  # ns rounding


def test_blocking_sends_are_the_tail_of_their_action() -> None:
    c = cfg()
    est, st, data, evs = trace_for(c, options=CostOptions(pp_comm_overlap=False))
    assert st.p2p_in_actions
    assert max(e.end_us for e in evs) == pytest.approx(est.step_time_s * 1e6, rel=STEP_REL(c))
    rank0 = [e for e in evs if e.rank == 0]
    for send in (e for e in rank0 if e.track == "pp"):
        owner = [e for e in rank0 if e.track == "compute" and (e.kind, e.chunk, e.microbatch) ==
                 (send.kind, send.chunk, send.microbatch)]
        assert len(owner) == 1 and owner[0].end_us <= send.ts_us + 1e-3


def test_moe_expert_parallel_track() -> None:
    model = PRESETS["mixtral-8x7b"]
    c = ParallelConfig(dp=8, tp=1, pp=2, ep=8, micro_batch_size=1, global_batch_size=32, seq_len=4096,
                       zero_stage=1)
    _, _, _, evs = trace_for(c, model=model, gpus=16)
    assert any(e.track == "ep" and e.dur_us > 0 for e in evs)


def test_large_world_shows_one_replica() -> None:
    c = ParallelConfig(dp=64, tp=8, pp=4, micro_batch_size=1, global_batch_size=1024, seq_len=4096,
                       sequence_parallel=True)
    _, _, data, evs = trace_for(c, model=PRESETS["llama3.1-70b"], gpus=2048)
    ranks = sorted({e.rank for e in evs})
    assert len(ranks) == c.pp <= MAX_PROCESSES
    assert all(coords_of(c.degrees, r)["tp"] == 0 and coords_of(c.degrees, r)["dp"] == 0 for r in ranks)
    stands = data["otherData"]["ranks"][str(ranks[-1])]
    assert len(stands) == c.tp * c.dp  # each shown process stands for its whole stage


def test_validator_rejects_what_the_trace_must_not_contain() -> None:
    _, _, data, _ = trace_for(cfg())
    xs = [e for e in data["traceEvents"] if e["ph"] == "X" and e["tid"] == 0]
    bad = dict(data, traceEvents=data["traceEvents"] + [dict(xs[0], ts=xs[0]["ts"] + xs[0]["dur"] / 2)])
    with pytest.raises(Exception, match="overlaps"):
        trace_schema.validate(bad)
    missing = dict(data, traceEvents=[{k: v for k, v in xs[0].items() if k != "dur"}])
    with pytest.raises(Exception, match="dur"):
        trace_schema.validate(missing)
