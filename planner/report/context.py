"""Everything one report shows, gathered once: the plan, the priced candidates, the rejected ones, the run.

Why a separate record: the search, ``estimate`` and ``compare`` all produce reports; each fills this
record from what it has, and the section builders read only this (no section re-prices anything,
except the sensitivity sweep, which is explicitly a re-estimate).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from planner.parallel_config import ParallelConfig
from planner.plan import Plan

CHINCHILLA_TOKENS_PER_PARAM = 20
"""Default training length when ``--tokens`` is not given: compute-optimal tokens per parameter
(Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Table 3: ~20 tokens/param)."""


@dataclass(frozen=True)
class Rejected:
    """A candidate the search did not keep, with the reason it gives the user."""

    name: str
    reason: str
    step_time_s: float | None = None
    """Predicted step time had it been allowed (None when not priced, e.g. rejected before pricing)."""
    status: str = "infeasible"
    """'infeasible' (cannot run: does not fit, does not divide) or 'pruned' (a bound showed it cannot win)."""
    count: int = 1
    """Configurations this row stands for (a group rejected as a whole)."""


@dataclass(frozen=True)
class ReportContext:
    plan: Plan
    ranked: tuple[Any, ...]
    """planner.cost Estimates of the feasible candidates, best first; ranked[0] prices plan.config."""
    rejected: tuple[Rejected, ...] = ()
    command: str = ""
    """The exact command line that produced the plan."""
    launch_command: str = ""
    """How to run the plan (the search's torchrun line); shown verbatim."""
    tokens: float = 0.0
    """Tokens to train for the time / GPU-hour estimate; 0 means the Chinchilla default."""
    profile_desc: str = ""
    """The profile used (path and header summary), '' for spec-sheet numbers."""
    search_stats: dict[str, Any] = field(default_factory=dict)
    """Counts and timings of the search (evaluated, pruned, infeasible, seconds, solver gap...)."""
    pareto_points: tuple[tuple[str, float, float, bool], ...] = ()
    """(name, tokens/s/GPU, peak bytes, fits) for every priced candidate; defaults to the ranked ones."""
    top_n: int = 10

    @property
    def infeasible(self) -> tuple[Rejected, ...]:
        return tuple(r for r in self.rejected if r.status != "pruned")

    @property
    def pruned(self) -> tuple[Rejected, ...]:
        return tuple(r for r in self.rejected if r.status == "pruned")

    @property
    def chosen(self) -> Any:
        return self.ranked[0]

    @property
    def runner_up(self) -> Any | None:
        return self.ranked[1] if len(self.ranked) > 1 else None

    @property
    def config(self) -> ParallelConfig:
        return self.plan.config

    @property
    def train_tokens(self) -> float:
        if self.tokens and self.tokens > 0:
            return float(self.tokens)
        return float(CHINCHILLA_TOKENS_PER_PARAM * self.plan.model.total_params())

    @property
    def tokens_source(self) -> str:
        if self.tokens and self.tokens > 0:
            return "--tokens"
        return f"default: {CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter (Chinchilla); set --tokens"

    def points(self) -> tuple[tuple[str, float, float, bool], ...]:
        if self.pareto_points:
            return self.pareto_points
        return tuple((e.config.name, e.tokens_per_s_per_gpu, e.peak_memory_bytes, e.fits) for e in self.ranked)


def training_time(step_time_s: float, tokens_per_step: int, tokens: float, world_size: int) -> tuple[float, float]:
    """(wall seconds, GPU-hours) to train ``tokens`` tokens at ``step_time_s`` per step."""
    if tokens_per_step <= 0 or not math.isfinite(step_time_s):
        return math.inf, math.inf
    steps = math.ceil(tokens / tokens_per_step)
    wall = steps * step_time_s
    return wall, wall * world_size / 3600.0


def reason_groups(rejected: tuple[Rejected, ...]) -> list[tuple[str, int, str]]:
    """Rejections grouped by the shape of their reason (numbers replaced): (pattern, configurations, one example)."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for r in rejected:
        key = re.sub(r"\d+(\.\d+)?", "N", r.reason)
        counts[key] += r.count
        example.setdefault(key, r.reason)
    return [(k, n, example[k]) for k, n in counts.most_common()]
