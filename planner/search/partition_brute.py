"""Brute-force reference partitioner: every split and every recompute count, for small instances.

Used only to test the CP-SAT model and the greedy differentially (<= 8 layers, <= 4 chunks is a few
thousand evaluations). Ties break towards the lexicographically smallest (layers, recompute).
"""

from __future__ import annotations

import itertools
import time

from planner.errors import ConfigError
from planner.search.partition_greedy import prefixes
from planner.search.partition_problem import PartitionProblem, evaluate
from planner.search.partition_result import PartitionResult

MAX_BRUTE_FORCE_LAYERS = 12


def compositions(total: int, parts: int):
    """All tuples of ``parts`` positive integers summing to ``total``."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        edges = (0, *cuts, total)
        yield tuple(edges[i + 1] - edges[i] for i in range(parts))


def solve_brute_force(p: PartitionProblem) -> PartitionResult:
    if p.num_layers > MAX_BRUTE_FORCE_LAYERS:
        raise ConfigError(f"brute force is for <= {MAX_BRUTE_FORCE_LAYERS} layers, got {p.num_layers}")
    t0 = time.perf_counter()
    pre = prefixes(p)
    best = None
    for layers in compositions(p.num_layers, p.num_chunks):
        ranges = [range(n + 1) if p.allow_recompute else range(1) for n in layers]
        for rec in itertools.product(*ranges):
            ev = evaluate(p, layers, rec, pre)
            if ev.feasible and (best is None or ev.key < best[2].key):
                best = (layers, rec, ev)
    wall = time.perf_counter() - t0
    if best is None:
        layers = next(compositions(p.num_layers, p.num_chunks))
        rec = (0,) * p.num_chunks
        return PartitionResult.from_evaluation(p, layers, rec, evaluate(p, layers, rec, pre), solver="brute-force",
                                               status="infeasible", wall_s=wall)
    layers, rec, ev = best
    return PartitionResult.from_evaluation(p, layers, rec, ev, solver="brute-force", status="optimal",
                                           bound=ev.objective, wall_s=wall)
