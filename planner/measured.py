"""Per-stage times of a trace in the shared schema (planner/trace_schema.py), measured or predicted.

Both ``compare`` and ``rebalance`` read traces through this one module, so predicted and measured numbers
are cut the same way. Per rank and per step:

* steps: a step ends with the rank's optimizer slice (kind ``O``); a trace without one is one step. With
  three or more steps the first is dropped (warm-up: allocator, gloo connections, autograd caches) and the
  median over the rest is kept, so one slow step of a shared machine does not move the answer;
* ``compute_s``: forward / backward / weight-gradient slices (F, B, W) on the compute track together with
  the tp and ep tracks: TP / EP collectives happen inside a block's F or B (a runtime timing whole actions
  cannot tell them apart; the predicted trace draws them beside the compute), so both sides count them here;
* ``optimizer_s``: the optimizer slices (O);
* ``comm_s``: pipeline and data-parallel communication (pp, dp tracks) *not* overlapped by the above
  (exposed), so the four terms add up to the step;
* ``bubble_s``: the rest of the step span, time the rank neither computed nor communicated (pipeline
  fill / drain, waiting for a slower peer);
* ``chunk_compute_s``: per model chunk, the median over micro-batches of one micro-batch's F + B + W
  seconds (what planner/rebalance.py compares with the cost model's chunk times).

A pipeline stage's numbers are the mean over its ranks (its TP and DP members).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from planner.errors import SpecError
from planner.rank_order import Degrees, coords_of
from planner.trace_schema import TraceEvent, events

BLOCK_COMM_TRACKS = ("tp", "ep")
"""Collectives inside a block's forward / backward: counted with compute."""
COMM_TRACKS = ("pp", "dp")
WARMUP_STEPS_DROPPED = 1
"""Steps dropped from the front when at least MIN_STEPS_TO_DROP steps were recorded."""
MIN_STEPS_TO_DROP = 3


@dataclass(frozen=True)
class StageTimes:
    """One pipeline stage, per step (seconds)."""

    pp_rank: int
    step_s: float
    compute_s: float
    comm_s: float
    bubble_s: float
    optimizer_s: float
    chunk_compute_s: dict[int, float]
    """Model chunk -> one micro-batch's F + B + W on this stage (median)."""
    steps: int
    """Steps the medians are over."""

    def to_dict(self) -> dict[str, Any]:
        return {"pp_rank": self.pp_rank, "step_s": self.step_s, "compute_s": self.compute_s, "comm_s": self.comm_s,
                "bubble_s": self.bubble_s, "optimizer_s": self.optimizer_s,
                "chunk_compute_s": {str(k): v for k, v in sorted(self.chunk_compute_s.items())}, "steps": self.steps}


def _union_s(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _split_steps(evs: list[TraceEvent]) -> list[list[TraceEvent]]:
    evs = sorted(evs, key=lambda e: (e.ts_us, e.end_us))
    ends = sorted(e.end_us for e in evs if e.kind == "O")
    if not ends:
        return [evs]
    steps: list[list[TraceEvent]] = [[] for _ in ends]
    for e in evs:
        i = next((k for k, end in enumerate(ends) if e.ts_us < end), None)
        if i is not None:
            steps[i].append(e)
    return [s for s in steps if s]


def _rank_step(evs: list[TraceEvent], start: float) -> dict[str, Any]:
    """One rank's step, from ``start`` (the step's first event on any rank: a later stage's wait for its
    first input is bubble, not outside the step)."""
    span = (max(e.end_us for e in evs) - start) / 1e6
    comp = [(e.ts_us, e.end_us) for e in evs if (e.track == "compute" and e.kind in ("F", "B", "W"))
            or e.track in BLOCK_COMM_TRACKS]
    opt = [(e.ts_us, e.end_us) for e in evs if e.track == "compute" and e.kind == "O"]
    comm = [(e.ts_us, e.end_us) for e in evs if e.track in COMM_TRACKS]
    busy_compute = _union_s(comp + opt) / 1e6
    exposed = (_union_s(comp + opt + comm) / 1e6) - busy_compute
    per_chunk: dict[tuple[int, int], float] = defaultdict(float)
    for e in evs:
        if e.track == "compute" and e.kind in ("F", "B", "W"):
            per_chunk[(e.chunk, e.microbatch)] += e.dur_us / 1e6
    return {"step_s": span, "compute_s": _union_s(comp) / 1e6, "optimizer_s": _union_s(opt) / 1e6,
            "comm_s": exposed, "bubble_s": max(0.0, span - busy_compute - exposed), "per_chunk": per_chunk}


def stage_times(data: Any, degrees: Degrees, source: str = "trace") -> list[StageTimes]:
    """Per pipeline stage, the per-step times of the trace (see module docstring)."""
    evs = events(data, source)
    by_rank: dict[int, list[TraceEvent]] = defaultdict(list)
    for e in evs:
        if e.rank >= degrees.world_size:
            raise SpecError(f"{source}: rank {e.rank} is outside the plan's world of {degrees.world_size}")
        by_rank[e.rank].append(e)
    per_stage: dict[int, list[dict[str, Any]]] = defaultdict(list)
    split = {rank: _split_steps(lst) for rank, lst in sorted(by_rank.items())}
    counts = {len(v) for v in split.values()}
    if len(counts) != 1:
        raise SpecError(f"{source}: ranks recorded different numbers of steps ({sorted(counts)})")
    n_steps = counts.pop()
    starts = [min(steps[k][0].ts_us for steps in split.values()) for k in range(n_steps)]
    keep = range(WARMUP_STEPS_DROPPED if n_steps >= MIN_STEPS_TO_DROP else 0, n_steps)
    for rank, steps in split.items():
        rows = [_rank_step(steps[k], starts[k]) for k in keep]
        summary = {k: statistics.median(r[k] for r in rows) for k in ("step_s", "compute_s", "optimizer_s", "comm_s",
                                                                         "bubble_s")}
        chunks: dict[int, list[float]] = defaultdict(list)
        for r in rows:
            for (c, _mb), t in r["per_chunk"].items():
                if c is not None:
                    chunks[c].append(t)
        summary["chunk"] = {c: statistics.median(ts) for c, ts in chunks.items()}
        summary["steps"] = len(rows)
        per_stage[coords_of(degrees, rank)["pp"]].append(summary)
    out = []
    for p in range(degrees.pp):
        ranks = per_stage.get(p)
        if not ranks:
            raise SpecError(f"{source}: no events for pipeline stage {p}")
        chunk_ids = sorted({c for r in ranks for c in r["chunk"]})
        out.append(StageTimes(
            pp_rank=p, **{k: statistics.fmean(r[k] for r in ranks) for k in ("step_s", "compute_s", "comm_s",
                                                                            "bubble_s", "optimizer_s")},
            chunk_compute_s={c: statistics.fmean(r["chunk"][c] for r in ranks if c in r["chunk"]) for c in chunk_ids},
            steps=min(r["steps"] for r in ranks)))
    return out


def step_time_s(stages: list[StageTimes]) -> float:
    """The step time of the trace: the slowest stage's span (every rank waits for it at the DP sync)."""
    return max(s.step_s for s in stages)
