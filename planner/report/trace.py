"""predicted_trace.json: the predicted step as a Chrome / Perfetto trace in the shared schema.

Built from the cost model's own schedule simulation (planner/report/timeline.py), so every slice has the
predicted duration and the trace ends at the predicted step time. Schema: planner/trace_schema.py (the
runtime writes its measured trace with the same builder), one process per rank (pid = global rank),
tracks compute / tp / pp / dp / ep.

Inside one action the cost model adds compute and the exposed collectives (BlockTime sums), so an action
[start, end] becomes a compute slice followed by its TP slice and its EP slice, back to back: their
order inside the action is a drawing choice, their durations are the prediction. Pipeline sends run
beside compute (CostOptions.pp_comm_overlap) from the producing action's end; when sends block, the send
is the tail of the producing action. After the pipeline: the exposed DP gradient sync and ZeRO-3 gathers
(dp track), then the optimizer step (compute track), as in planner/cost/assemble.py.

Ranks: ranks of one TP group run the same timeline, as do the DP replicas of one stage; the trace shows
the first rank of every TP group (tp coordinate 0), or only the first replica's when that is more than
MAX_PROCESSES processes. ``otherData.ranks`` says which global ranks each shown process stands for.
"""

from __future__ import annotations

from typing import Any

from planner.rank_order import coords_of, rank_of
from planner.report.timeline import StepTimeline
from planner.trace_schema import TraceBuilder

MAX_PROCESSES = 64
"""Above this many shown ranks, one replica is enough: the others are identical copies (Perfetto stays fast)."""
US = 1e6


def shown_ranks(st: StepTimeline) -> list[int]:
    """Global ranks the trace shows (see module docstring)."""
    d = st.config.degrees
    ranks = [rank_of(d, tp=0, dp=j, pp=k) for k in range(d.pp) for j in range(d.dp)]
    if len(ranks) > MAX_PROCESSES:
        ranks = [rank_of(d, tp=0, dp=0, pp=k) for k in range(d.pp)]
    return sorted(ranks)


def predicted_trace(st: StepTimeline, *, plan_name: str, step_time_s: float) -> dict[str, Any]:
    """The trace object (validated by the caller through planner.trace_schema.save)."""
    cfg = st.config
    d = cfg.degrees
    ranks = shown_ranks(st)
    tb = TraceBuilder("predicted", plan=plan_name, step_time_s=step_time_s, pipeline_s=st.pipeline_s,
                      bubble_fraction=st.bubble_fraction(),
                      ranks={str(r): _stands_for(d, r, len(ranks) == d.pp and d.dp > 1) for r in ranks})
    n = len(st.chunks)
    pp_rank_of = [cfg.chunk_to_pp_rank(c, cfg.pp, cfg.schedule) for c in range(n)]
    for r in ranks:
        _rank_events(tb, r, st, st.timeline.ranks[coords_of(d, r)["pp"]], pp_rank_of)
    t = st.pipeline_s
    for r in ranks:
        tail = t
        for name, dur in (("grad sync (exposed)", st.dp_sync_exposed_s), ("ZeRO-3 gathers (exposed)",
                                                                          st.zero3_gather_s)):
            if dur > 0:
                tb.add(r, "dp", name, *_span(tail, dur), kind="S")
                tail += dur
        if st.optimizer_s > 0:
            tb.add(r, "compute", "optimizer step", *_span(tail, st.optimizer_s), kind="O")
    return tb.to_dict()


def _span(start_s: float, dur_s: float) -> tuple[float, float]:
    """(ts, dur) in microseconds rounded to nanoseconds (far below any predicted duration; a smaller file).
    The end is rounded, not the duration, so back-to-back slices stay back to back."""
    ts = round(start_s * US, 3)
    return ts, max(0.0, round((start_s + dur_s) * US, 3) - ts)


def _stands_for(d, r: int, all_replicas: bool) -> list[int]:
    c = coords_of(d, r)
    dps = range(d.dp) if all_replicas else (c["dp"],)
    return sorted(rank_of(d, tp=i, dp=j, pp=c["pp"]) for i in range(d.tp) for j in dps)


def _rank_events(tb: TraceBuilder, r: int, st: StepTimeline, actions, pp_rank_of: list[int]) -> None:
    n = len(st.chunks)
    pp_free = 0.0
    for a, s, e in actions:
        p = st.chunks[a.chunk]
        tag = f"c{a.chunk} mb{a.microbatch}"
        args = dict(chunk=a.chunk, microbatch=a.microbatch, kind=a.kind)
        if a.kind == "F":
            pieces = [("compute", f"F {tag}", p.fwd_compute_s), ("tp", f"tp F {tag}", p.tp_fwd_s),
                      ("ep", f"ep dispatch/combine F {tag}", p.ep_fwd_s)]
            consumer = a.chunk + 1 if a.chunk < n - 1 else None
        elif a.kind == "B":
            pieces = [("compute", f"B {tag}", p.recompute_s + p.bwd_compute_s - p.weight_grad_s),
                      ("tp", f"tp B {tag}", p.tp_bwd_s), ("ep", f"ep dispatch/combine B {tag}", p.ep_bwd_s)]
            consumer = a.chunk - 1 if a.chunk > 0 else None
        else:
            pieces = [("compute", f"W {tag}", p.weight_grad_s)]
            consumer = None
        sends = consumer is not None and pp_rank_of[consumer] != pp_rank_of[a.chunk]
        t = s
        for track, name, dur in pieces:
            if dur > 0:
                extra = {"recompute_s": p.recompute_s} if track == "compute" and a.kind == "B" and p.recompute_s else {}
                tb.add(r, track, name, *_span(t, dur), **args, **extra)
                t += dur
        if sends and st.p2p_s > 0:
            start = e - st.p2p_s if st.p2p_in_actions else max(e, pp_free)
            tb.add(r, "pp", f"send {'activation' if a.kind == 'F' else 'gradient'} {tag}",
                   *_span(start, st.p2p_s), **args, to_pp_rank=pp_rank_of[consumer])
            pp_free = start + st.p2p_s
