"""The predicted timeline of one step: the cost model's own schedule simulation, kept action by action.

The cost model prices the pipeline by simulating the action lists of planner/schedules.py (the lists the
runtime executes) with per-chunk forward / backward / weight-gradient durations and the stage-to-stage
transfer time. The Gantt chart and predicted_trace.json must show exactly that simulation, so this
module asks the cost model for the same inputs (``chunk_durations``) and calls the same ``simulate``;
it never models time itself. After the pipeline, a step spends the exposed DP gradient sync, the
exposed ZeRO-3 gathers and the optimizer step (planner/cost/assemble.py), taken from the breakdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.cost.assemble import _p2p_s
from planner.parallel_config import ParallelConfig
from planner.schedules import Timeline, build_schedule, simulate


@dataclass(frozen=True)
class ChunkParts:
    """Where one micro-batch's time goes on one model chunk (seconds; planner.cost BlockTime sums)."""

    fwd_compute_s: float
    tp_fwd_s: float
    ep_fwd_s: float
    recompute_s: float
    """Re-run forward at the start of the backward (selective or full recomputation)."""
    bwd_compute_s: float
    """Backward matmuls and kernels, weight gradients included (W is carved out of it for split backward)."""
    tp_bwd_s: float
    ep_bwd_s: float
    weight_grad_s: float
    """The W action of split-backward schedules (0 otherwise)."""


@dataclass(frozen=True)
class StepTimeline:
    """One predicted step: the simulated pipeline plus the tail terms, and what each action contains."""

    config: ParallelConfig
    timeline: Timeline
    """schedules.simulate output: per pipeline rank, (Action, start_s, end_s)."""
    chunks: tuple[ChunkParts, ...]
    p2p_s: float
    p2p_in_actions: bool
    """True when sends block the sender (CostOptions.pp_comm_overlap False): p2p is inside F / B."""
    dp_sync_exposed_s: float
    zero3_gather_s: float
    optimizer_s: float

    @property
    def pipeline_s(self) -> float:
        return self.timeline.makespan_s

    @property
    def step_time_s(self) -> float:
        return self.pipeline_s + self.dp_sync_exposed_s + self.zero3_gather_s + self.optimizer_s

    def bubble_fraction(self) -> float:
        return self.timeline.bubble_fraction()

    def gantt_rows(self) -> list[list[tuple[str, int, int, float, float]]]:
        """Per pipeline rank: (kind, chunk, micro-batch, start_s, end_s), for plots.gantt_figure."""
        return [[(a.kind, a.chunk, a.microbatch, s, e) for a, s, e in rank] for rank in self.timeline.ranks]


def chunk_durations(cm: Any, config: ParallelConfig) -> tuple[list[ChunkParts], float, bool]:
    """Per-chunk parts, the p2p time and whether p2p blocks, exactly as planner/cost/assemble.py builds them.

    Reads the cost model's per-chunk terms (``CostModel._chunks``: fwd, bwd + recompute, weight-grad part,
    BlockTime sum, recompute extra) and its p2p price (``assemble._p2p_s``).
    """
    parts = []
    for fwd, bwd, w, bt, extra in cm._chunks(config):
        parts.append(ChunkParts(fwd_compute_s=bt.fwd_compute_s, tp_fwd_s=bt.tp_fwd_s, ep_fwd_s=bt.ep_fwd_s,
                                recompute_s=extra, bwd_compute_s=bt.bwd_compute_s, tp_bwd_s=bt.tp_bwd_s,
                                ep_bwd_s=bt.ep_bwd_s, weight_grad_s=w))
    return parts, _p2p_s(cm, config), not cm.options.pp_comm_overlap and config.pp > 1


def step_timeline(cm: Any, config: ParallelConfig, breakdown: dict[str, float]) -> StepTimeline:
    """Simulate ``config``'s schedule with the cost model's durations (all micro-batches, no extrapolation)."""
    parts, p2p, blocking = chunk_durations(cm, config)
    rank_of = [ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule) for c in range(len(parts))]
    f = [p.fwd_compute_s + p.tp_fwd_s + p.ep_fwd_s for p in parts]
    b = [p.recompute_s + p.bwd_compute_s + p.tp_bwd_s + p.ep_bwd_s - p.weight_grad_s for p in parts]
    w = [p.weight_grad_s for p in parts]
    if blocking:  # a send blocks its rank: fold it into the action that produces the tensor (assemble.py)
        n = len(parts)
        f = [x + (p2p if c < n - 1 and rank_of[c + 1] != rank_of[c] else 0.0) for c, x in enumerate(f)]
        b = [x + (p2p if c > 0 and rank_of[c - 1] != rank_of[c] else 0.0) for c, x in enumerate(b)]
    sched = build_schedule(config.schedule, config.pp, config.num_micro_batches, config.virtual_stages)
    tl = simulate(sched, f, b, w, 0.0 if blocking else p2p)
    return StepTimeline(config=config, timeline=tl, chunks=tuple(parts), p2p_s=p2p, p2p_in_actions=blocking,
                        dp_sync_exposed_s=breakdown.get("dp_sync_exposed", 0.0),
                        zero3_gather_s=breakdown.get("zero3_gather", 0.0),
                        optimizer_s=breakdown.get("optimizer", 0.0))
