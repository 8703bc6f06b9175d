"""What the search produces: one record per candidate (or per group pruned wholesale), stats, the result."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator

from planner.parallel_config import ParallelConfig
from planner.search.bounds import rank_key
from planner.search.partition_result import PartitionResult

STATUSES = ("ok", "infeasible", "pruned")

_SCHEDULE_ORDER = {"1f1b": 0, "gpipe": 1, "interleaved": 2, "zbv": 3}
_RECOMPUTE_ORDER = {"none": 0, "selective": 1, "full": 2}


def ranking_tiebreak(c: ParallelConfig) -> tuple:
    """Tie-break between equally fast candidates: the one with less machinery (lower ZeRO stage, plain sync, no
    compression, 1F1B, fewer chunks, no SP, less recomputation, even split) is easier to run and to debug."""
    return (c.zero_stage, c.grad_sync != "allreduce", c.compression != "none", _SCHEDULE_ORDER[c.schedule],
            c.virtual_stages, c.sequence_parallel, _RECOMPUTE_ORDER[c.recompute], sum(c.stage_recompute_layers),
            bool(c.stage_layers))


@dataclass(frozen=True)
class CandidateRecord:
    """One row of candidates.csv."""

    name: str
    status: str
    """'ok' (evaluated and fits), 'infeasible' (with reason) or 'pruned' (a bound showed it cannot win)."""
    config: ParallelConfig | None
    """None for a row that stands for a whole pruned group (``count`` configurations)."""
    estimate: Any = None
    """planner.cost.Estimate when evaluated."""
    reason: str = ""
    lower_bound_s: float | None = None
    partition: PartitionResult | None = None
    count: int = 1
    """Configurations this row stands for (> 1 for a group pruned before its members were listed)."""
    group: dict[str, Any] = field(default_factory=dict)
    """For group rows: the shared dimensions (tp, pp, dp, ep, micro_batch, sequence_parallel, recompute)."""
    members: Callable[[], Iterator[ParallelConfig]] | None = field(default=None, compare=False, repr=False)
    """For group rows: the configurations it stands for, listed on demand (candidates.csv writes one row each)."""

    @property
    def step_time_s(self) -> float | None:
        return None if self.estimate is None else float(self.estimate.step_time_s)

    @property
    def key(self) -> float:
        if self.status != "ok" or self.estimate is None or self.config is None:
            return float("inf")
        return rank_key(self.estimate.step_time_s, self.config.compression)

    @cached_property
    def base_name(self) -> str:
        """Name without the layer split: what an even split of the same choices is called."""
        if self.config is None:
            return self.name
        return self.config.replace(stage_layers=(), stage_recompute_layers=()).name


@dataclass
class SearchStats:
    enumerated: int = 0
    """Configurations in the space (counting every member of every group)."""
    evaluated: int = 0
    """Cost-model estimates made (including re-estimates of solved splits)."""
    feasible: int = 0
    pruned: int = 0
    infeasible: int = 0
    groups: int = 0
    groups_explored: int = 0
    partitions_greedy: int = 0
    partitions_cpsat: int = 0
    cpsat_optimal: int = 0
    max_gap: float = 0.0
    """Largest optimality gap among the CP-SAT solves whose split was kept."""
    timed_out: bool = False
    unexplored: int = 0
    """Configurations not looked at because the time limit ran out (0 on a complete search)."""
    search_gap: float = 0.0
    """(best - smallest lower bound left unexplored) / best; 0 on a complete search."""
    wall_s: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    """Infeasible / pruned configurations by reason kind."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("enumerated", "evaluated", "feasible", "pruned", "infeasible", "groups",
                                           "groups_explored", "partitions_greedy", "partitions_cpsat", "cpsat_optimal",
                                           "max_gap", "timed_out", "unexplored", "search_gap", "wall_s")}
        d = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}  # JSON-safe
        d["reasons"] = dict(self.reasons)
        d["candidates_per_s"] = self.enumerated / self.wall_s if self.wall_s > 0 else None
        return d


@dataclass
class SearchResult:
    ranked: list[CandidateRecord]
    """Feasible candidates, best first, one per base configuration (its best split)."""
    records: list[CandidateRecord]
    """Every row for candidates.csv."""
    stats: SearchStats

    @property
    def best(self) -> CandidateRecord:
        return self.ranked[0]
