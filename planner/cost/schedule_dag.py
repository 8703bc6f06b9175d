"""The cost model's fast pipeline simulator: a schedule compiled once into a flat DAG, then one pass per set
of durations.

``planner.schedules.simulate`` is the reference: it walks the action lists rank by rank, waits where a
dependency has not finished, and keeps every (action, start, end) for the report. The cost model only needs
when each rank finishes, for many duration vectors and the same few schedules, so here the action lists
are compiled once per (schedule, pp, micro-batches, chunks) into one topological order of the actions with,
for each, the position of its predecessor on the same rank, of its dependency (F(c-1) / B(c+1) / own F for
the last chunk / own B for W) and whether that dependency crosses ranks (p2p on the edge). A simulation is
then ``end[i] = max(end[prev[i]], end[dep[i]] + p2p x cross[i]) + duration[slot[i]]`` in that order: the
same arithmetic as the reference, so the same floats (tests/planner/test_schedules.py checks equality).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from planner.errors import SpecError
from planner.schedules import Schedule, build_schedule

_KIND = {"F": 0, "B": 1, "W": 2}


@dataclass(frozen=True)
class ScheduleDag:
    """A schedule's actions in one topological order (positions index every tuple)."""

    num_chunks: int
    split_backward: bool
    prev: tuple[int, ...]
    """Position of the previous action on the same rank; -1 (a 0.0 sentinel) for a rank's first action."""
    dep: tuple[int, ...]
    """Position of the action this one waits for; -1 for a forward of chunk 0."""
    cross: tuple[float, ...]
    """1.0 when the dependency ran on another rank (a stage-to-stage transfer), else 0.0."""
    slot: tuple[int, ...]
    """Index of the duration: 3 x chunk + (0 F, 1 B, 2 W)."""
    last: tuple[int, ...]
    """Per pipeline rank, the position of its last action (-1 for a rank without actions)."""


@lru_cache(maxsize=256)
def schedule_dag(name: str, pp: int, num_microbatches: int, chunks_per_rank: int = 1) -> ScheduleDag:
    """``schedule_dag_of(build_schedule(...))``, cached: the search prices many configurations per schedule."""
    return schedule_dag_of(build_schedule(name, pp, num_microbatches, chunks_per_rank))


def schedule_dag_of(sched: Schedule) -> ScheduleDag:
    """Compile a schedule's action lists; SpecError if no execution can follow them (a deadlock)."""
    C, m = sched.num_chunks, sched.num_microbatches
    n_ids = C * m * 3
    step = 3 * m  # id distance between the same action on neighbouring chunks
    # action id = (chunk * m + micro-batch) * 3 + kind; dependency (module docstring): F(c-1), B(c+1) or the last
    # chunk's own F, W's own B; -1 for none
    kind = _KIND
    ids = [[(c * m + i) * 3 + kind[k] for c, k, i in acts] for acts in sched.actions]
    last_chunk = (C - 1) * step
    dep_of = [-1] * (n_ids + 1)
    for lst in ids:
        for x in lst:
            k = x % 3
            if k == 0:
                dep_of[x] = x - step if x >= step else -1
            elif k == 2 or x >= last_chunk:
                dep_of[x] = x - 1
            else:
                dep_of[x] = x + step
    # one topological order: round robin over ranks, each running ahead while its next dependency is placed
    pos = [-1] * (n_ids + 1)  # position in the order; pos[-1] stays -1 ("none")
    placed = bytearray(n_ids + 1)
    placed[-1] = 1  # id -1 (no dependency) counts as placed
    order: list[int] = []
    ptr = [0] * len(ids)
    remaining = sum(len(lst) for lst in ids)
    while remaining:
        before = remaining
        for r, lst in enumerate(ids):
            k, n = ptr[r], len(lst)
            while k < n and placed[dep_of[lst[k]]]:
                x = lst[k]
                placed[x] = 1
                pos[x] = len(order)
                order.append(x)
                k += 1
            remaining -= k - ptr[r]
            ptr[r] = k
        if remaining == before:
            stuck = [sched.actions[r][ptr[r]] for r in range(len(ids)) if ptr[r] < len(ids[r])]
            raise SpecError(f"schedule {sched.name} deadlocks: ranks wait on {stuck[:3]}")
    prev_pos = [-1] * (n_ids + 1)
    rank_id = [-1] * (n_ids + 1)
    for r, lst in enumerate(ids):
        for a, b in zip(lst, lst[1:]):
            prev_pos[b] = pos[a]
        for a in lst:
            rank_id[a] = r
    deps = [dep_of[x] for x in order]
    return ScheduleDag(
        num_chunks=C, split_backward=sched.split_backward,
        prev=tuple([prev_pos[x] for x in order]), dep=tuple([pos[d] for d in deps]),
        cross=tuple([0.0 if d < 0 or rank_id[d] == rank_id[x] else 1.0 for x, d in zip(order, deps)]),
        slot=tuple([(x // step) * 3 + x % 3 for x in order]),
        last=tuple(pos[lst[-1]] if lst else -1 for lst in ids))


def finish_times(dag: ScheduleDag, f_s: Sequence[float], b_s: Sequence[float], w_s: Sequence[float],
                 p2p_s: float) -> tuple[float, ...]:
    """When each pipeline rank finishes its last action (durations as ``planner.schedules.simulate``)."""
    dur = []
    for c in range(dag.num_chunks):
        dur += (f_s[c], b_s[c] if dag.split_backward else b_s[c] + w_s[c], w_s[c])
    end = [0.0] * (len(dag.prev) + 1)  # end[-1] is the 0.0 sentinel of "no predecessor"
    i = 0
    for p, q, x, s in zip(dag.prev, dag.dep, dag.cross, dag.slot):
        t = end[p]
        u = end[q] + x * p2p_s
        end[i] = (t if t > u else u) + dur[s]
        i += 1
    return tuple(end[j] if j >= 0 else 0.0 for j in dag.last)
