"""The predicted timeline of one step: the cost model's own schedule simulation, kept action by action.

The cost model prices the pipeline by simulating the action lists of planner/schedules.py (the lists the
runtime executes) with per-chunk forward / backward / weight-gradient durations and the stage-to-stage
transfer time. The Gantt chart and predicted_trace.json must show exactly that simulation, so this
module asks the cost model for the same inputs (``CostModel.pipeline_durations``) and calls the same
``simulate``; it never models time itself. After the pipeline, a step spends the exposed DP gradient sync, the
exposed ZeRO-3 gathers and the optimizer step (planner/cost/assemble.py), taken from the breakdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.cost.durations import ChunkDurations
from planner.parallel_config import ParallelConfig
from planner.schedules import Timeline, build_schedule, simulate


@dataclass(frozen=True)
class StepTimeline:
    """One predicted step: the simulated pipeline plus the tail terms, and what each action contains."""

    config: ParallelConfig
    timeline: Timeline
    """schedules.simulate output: per pipeline rank, (Action, start_s, end_s)."""
    chunks: tuple[ChunkDurations, ...]
    """What each action contains, per model chunk (CostModel.pipeline_durations)."""
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


def step_timeline(cm: Any, config: ParallelConfig, breakdown: dict[str, float]) -> StepTimeline:
    """Simulate ``config``'s schedule with the cost model's durations (all micro-batches, no extrapolation)."""
    dur = cm.pipeline_durations(config)
    f, b, w, edge_p2p = dur.simulation_inputs()
    sched = build_schedule(config.schedule, config.pp, config.num_micro_batches, config.virtual_stages)
    tl = simulate(sched, f, b, w, edge_p2p)
    return StepTimeline(config=config, timeline=tl, chunks=dur.chunks, p2p_s=dur.p2p_s,
                        p2p_in_actions=dur.p2p_blocking,
                        dp_sync_exposed_s=breakdown.get("dp_sync_exposed", 0.0),
                        zero3_gather_s=breakdown.get("zero3_gather", 0.0),
                        optimizer_s=breakdown.get("optimizer", 0.0))
