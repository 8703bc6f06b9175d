"""The answer of any partitioner (CP-SAT, greedy, brute force): one split, its cost and how sure we are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.search.partition_problem import Evaluation, PartitionProblem, objective_seconds


@dataclass(frozen=True)
class PartitionResult:
    stage_layers: tuple[int, ...]
    """Layers per model chunk, chunk order (ParallelConfig.stage_layers)."""
    stage_recompute_layers: tuple[int, ...]
    """Fully recomputed layers per chunk (ParallelConfig.stage_recompute_layers)."""
    objective: int
    """Makespan proxy in the problem's integer units (see partition_problem)."""
    objective_s: float
    bound: int
    """Proven lower bound on the objective (equal to it when optimal)."""
    feasible: bool
    status: str
    """'optimal', 'feasible' (time limit hit; see gap), 'infeasible' (proven: nothing fits) or 'unknown'."""
    solver: str
    wall_s: float = 0.0
    rank_bytes: tuple[int, ...] = ()
    rank_ticks: tuple[int, ...] = ()
    secondary: int = 0

    @property
    def gap(self) -> float:
        """Relative optimality gap (objective - bound) / objective; 0 when proven optimal."""
        if not self.feasible or self.objective <= 0:
            return 0.0 if self.status == "infeasible" else float("inf")
        return max(0.0, (self.objective - self.bound) / self.objective)

    @classmethod
    def from_evaluation(cls, p: PartitionProblem, layers: tuple[int, ...], rec: tuple[int, ...], ev: Evaluation, *,
                        solver: str, status: str, bound: int = 0, wall_s: float = 0.0) -> "PartitionResult":
        return cls(stage_layers=tuple(layers), stage_recompute_layers=tuple(rec), objective=ev.objective,
                   objective_s=objective_seconds(p, ev.objective), bound=bound, feasible=ev.feasible,
                   status=status, solver=solver, wall_s=wall_s, rank_bytes=ev.rank_bytes, rank_ticks=ev.rank_ticks,
                   secondary=ev.secondary)

    def to_dict(self) -> dict[str, Any]:
        gap = self.gap
        return {"solver": self.solver, "status": self.status, "objective_s": self.objective_s,
                "gap": None if gap == float("inf") else gap, "wall_s": self.wall_s,
                "stage_layers": list(self.stage_layers), "stage_recompute_layers": list(self.stage_recompute_layers)}
