"""Pipeline schedules as data: per pipeline rank, the ordered list of actions it executes.

An action is ``(chunk, kind, microbatch)`` with kind ``F`` (forward), ``B`` (backward; for schedules
without split backward it is the whole backward, input and weight gradients) or ``W`` (weight-gradient
half of a split backward, zero-bubble schedules). Model chunk ``c`` lives on pipeline rank
``ParallelConfig.chunk_to_pp_rank(c, pp, schedule)``: round robin for interleaved (Megatron), V shape for
zbv (rank r holds chunks r and 2pp-1-r).

The same lists serve three readers: the runtime executes them, the cost model simulates them
(``simulate``) to price the bubble, and the report draws the Gantt chart from the simulation. Schedules:

* ``gpipe``: all forwards, then all backwards (Huang et al. 2019).
* ``1f1b``: PipeDream-Flush / Megatron non-interleaved (Narayanan et al. 2021 Sec 2.2.1): rank r runs
  ``pp - r - 1`` warm-up forwards, then alternates one forward and one backward.
* ``interleaved``: Megatron interleaved 1F1B with v chunks per rank (Narayanan et al. 2021 Sec 2.2.2),
  the virtual-microbatch order of Megatron-LM ``forward_backward_pipelining_with_interleaving``.
* ``zbv``: zero-bubble V schedule (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", Sec 6): 2 chunks per
  rank in a V, backward split into B (input gradient) and W (weight gradient); the per-rank order of torch's
  ``ScheduleZBVZeroBubble`` (which the runtime runs): warm-up forwards down the V, then one F-B-W round per
  chunk and micro-batch, W deferred in the cool-down. At most 2 pp chunk-microbatches in flight per rank
  (1F1B's peak); with equal F, B, W times the makespan is (6 m + pp - 1) chunk-actions.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

from planner.errors import ConfigError, SpecError
from planner.parallel_config import ParallelConfig

KINDS = ("F", "B", "W")
SPLIT_BACKWARD_SCHEDULES = frozenset({"zbv"})
"""Schedules whose backward is two actions, B (input gradient) and W (weight gradient)."""
_KIND_INDEX = {"F": 0, "B": 1, "W": 2}


class Action(NamedTuple):
    chunk: int
    kind: str
    """'F', 'B' or 'W'."""
    microbatch: int


@dataclass(frozen=True)
class Schedule:
    """A pipeline schedule: ``actions[r]`` is what pipeline rank r runs, in order."""

    name: str
    pp: int
    chunks_per_rank: int
    num_microbatches: int
    actions: tuple[tuple[Action, ...], ...]
    split_backward: bool = False
    """True when backward is split into B (input grad) and W (weight grad) actions."""

    @property
    def num_chunks(self) -> int:
        return self.pp * self.chunks_per_rank

    def rank_of_chunk(self, chunk: int) -> int:
        return ParallelConfig.chunk_to_pp_rank(chunk, self.pp, self.name)

    def validate(self) -> None:
        """Each (chunk, kind, microbatch) exactly once, on the rank that holds the chunk, and the whole
        schedule runs to completion (no deadlock), checked by simulating unit durations."""
        if len(self.actions) != self.pp:
            raise SpecError(f"schedule {self.name}: {len(self.actions)} rank lists for pp={self.pp}")
        kinds = ("F", "B", "W") if self.split_backward else ("F", "B")
        expected = {(c, k, i) for c in range(self.num_chunks) for k in kinds for i in range(self.num_microbatches)}
        seen: set[tuple[int, str, int]] = set()
        for r, acts in enumerate(self.actions):
            for a in acts:
                if a.kind not in kinds:
                    raise SpecError(f"schedule {self.name}: action {a} has kind {a.kind!r}, expected one of {kinds}")
                if self.rank_of_chunk(a.chunk) != r:
                    raise SpecError(f"schedule {self.name}: action {a} on rank {r}, chunk lives on rank "
                                    f"{self.rank_of_chunk(a.chunk)}")
                key = (a.chunk, a.kind, a.microbatch)
                if key in seen:
                    raise SpecError(f"schedule {self.name}: action {a} appears twice")
                seen.add(key)
        if seen != expected:
            missing = sorted(expected - seen)[:1] or sorted(seen - expected)[:1]
            raise SpecError(f"schedule {self.name}: actions missing or out of range, e.g. {missing[0]}")
        ones = [1.0] * self.num_chunks
        simulate(self, ones, ones, ones if self.split_backward else [0.0] * self.num_chunks, 0.0)

    def grid(self) -> str:
        """One line per rank, one cell per action: e.g. ``F3.0`` is forward of chunk 3, micro-batch 0."""
        lines = []
        for r, acts in enumerate(self.actions):
            cells = " ".join(f"{a.kind}{a.chunk}.{a.microbatch}" for a in acts)
            lines.append(f"rank {r:>3}: {cells}")
        return "\n".join(lines)

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["schedule", "pp", "chunks_per_rank", "num_microbatches", "rank", "step", "chunk", "kind",
                    "microbatch"])
        for r, acts in enumerate(self.actions):
            for i, a in enumerate(acts):
                w.writerow([self.name, self.pp, self.chunks_per_rank, self.num_microbatches, r, i, a.chunk, a.kind,
                            a.microbatch])
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> "Schedule":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise SpecError("schedule CSV has no rows")
        try:
            head = rows[0]
            name, pp = head["schedule"], int(head["pp"])
            v, m = int(head["chunks_per_rank"]), int(head["num_microbatches"])
            per_rank: list[list[tuple[int, Action]]] = [[] for _ in range(pp)]
            for row in rows:
                per_rank[int(row["rank"])].append(
                    (int(row["step"]), Action(int(row["chunk"]), row["kind"], int(row["microbatch"]))))
        except (KeyError, ValueError, IndexError) as exc:
            raise SpecError(f"malformed schedule CSV: {exc}") from None
        acts = tuple(tuple(a for _, a in sorted(lst)) for lst in per_rank)
        split = any(a.kind == "W" for lst in acts for a in lst)
        sched = cls(name=name, pp=pp, chunks_per_rank=v, num_microbatches=m, actions=acts, split_backward=split)
        sched.validate()
        return sched


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=512)
def build_schedule(name: str, pp: int, num_microbatches: int, chunks_per_rank: int = 1) -> Schedule:
    """The action lists of schedule ``name`` for ``pp`` ranks and ``num_microbatches`` micro-batches."""
    m, p, v = num_microbatches, pp, chunks_per_rank
    if p <= 0 or m <= 0 or v <= 0:
        raise ConfigError(f"schedule needs positive pp, micro-batches and chunks, got {p}, {m}, {v}")
    if name == "gpipe":
        acts = [tuple([Action(r, "F", i) for i in range(m)] + [Action(r, "B", i) for i in range(m)]) for r in range(p)]
        return Schedule(name, p, 1, m, tuple(acts))
    if name == "1f1b":
        return Schedule(name, p, 1, m, tuple(_one_f_one_b(r, p, m) for r in range(p)))
    if name == "interleaved":
        if v < 2 and p > 1:
            raise ConfigError("interleaved schedule needs at least 2 chunks per rank")
        if m % p:
            raise ConfigError(f"interleaved schedule needs micro-batches ({m}) to be a multiple of pp ({p})")
        return Schedule(name, p, v, m, tuple(_interleaved(r, p, v, m) for r in range(p)))
    if name == "zbv":
        return Schedule(name, p, 2, m, _zbv(p, m), split_backward=True)
    raise ConfigError(f"unknown schedule {name!r} (expected gpipe, 1f1b, interleaved or zbv)")


def _one_f_one_b(r: int, p: int, m: int) -> tuple[Action, ...]:
    warm = min(p - r - 1, m)
    out = [Action(r, "F", i) for i in range(warm)]
    f, b = warm, 0
    while f < m:
        out.append(Action(r, "F", f))
        out.append(Action(r, "B", b))
        f, b = f + 1, b + 1
    out.extend(Action(r, "B", i) for i in range(b, m))
    return tuple(out)


def _interleaved(r: int, p: int, v: int, m: int) -> tuple[Action, ...]:
    """Megatron-LM ``forward_backward_pipelining_with_interleaving``: virtual micro-batch k runs local
    chunk (k // p) % v (backward: reversed) of micro-batch (k // (p v)) p + k % p; warm-up is
    (p - r - 1) * 2 + (v - 1) * p forwards."""
    total = m * v

    def fwd(k: int) -> Action:
        local = (k // p) % v
        return Action(local * p + r, "F", (k // (p * v)) * p + k % p)

    def bwd(k: int) -> Action:
        local = v - 1 - (k // p) % v
        return Action(local * p + r, "B", (k // (p * v)) * p + k % p)

    warm = min((p - r - 1) * 2 + (v - 1) * p, total)
    out = [fwd(k) for k in range(warm)]
    f, b = warm, 0
    while f < total:
        out.append(fwd(f))
        out.append(bwd(b))
        f, b = f + 1, b + 1
    out.extend(bwd(k) for k in range(b, total))
    return tuple(out)


def _zbv(p: int, m: int) -> tuple[tuple[Action, ...], ...]:
    """ZB-V (Qi et al. 2024 Sec 6, Fig. 8), in the per-rank order torch's ``ScheduleZBVZeroBubble`` runs
    (``_calculate_single_rank_operations``), so the cost model simulates what the runtime executes.

    Rank r holds chunk ``c0 = r`` (going down the V) and ``c1 = 2p - 1 - r`` (coming back up). With
    n = max(m, 2p - 1) micro-batches (torch pads to fill the V, then drops the padding):

    1. warm-up: 2(p - r) - 1 forwards of c0; r pairs (F c1, F c0); p - r triples (F c1, B c1, W c1);
    2. steady state, one micro-batch per round: F c0 (while any left), B c0, W c0, F c1, B c1, W c1;
    3. cool-down: r pairs (B c0, B c1) with their W deferred; p - r pairs (B c0, oldest W c0); then every
       deferred W of c1, then of c0.

    Rank r has at most 2p chunk-microbatches of activations in flight (its warm-up holds 2p - r - 1 of c0
    and r + 1 of c1 before its first W), the 1F1B budget the paper keeps (Sec 6: same peak memory as
    1F1B); with equal F, B and W times the steady state has no idle slot.
    """
    n = max(m, 2 * p - 1)
    out = []
    for r in range(p):
        c0, c1 = r, 2 * p - 1 - r
        acts: list[Action] = []
        f0 = f1 = b0 = b1 = 0

        def add(c: int, kind: str, i: int) -> None:
            acts.append(Action(c, kind, i))

        for _ in range(2 * (p - r) - 1):
            add(c0, "F", f0)
            f0 += 1
        for _ in range(r):
            add(c1, "F", f1)
            add(c0, "F", f0)
            f1, f0 = f1 + 1, f0 + 1
        for _ in range(p - r):
            add(c1, "F", f1)
            add(c1, "B", b1)
            add(c1, "W", b1)
            f1, b1 = f1 + 1, b1 + 1
        while f1 < f0 or f0 < n:
            if f0 < n:
                add(c0, "F", f0)
                f0 += 1
            add(c0, "B", b0)
            add(c0, "W", b0)
            add(c1, "F", f1)
            add(c1, "B", b1)
            add(c1, "W", b1)
            b0, f1, b1 = b0 + 1, f1 + 1, b1 + 1
        w0, w1 = b0, b1
        for _ in range(r):
            add(c0, "B", b0)
            add(c1, "B", b1)
            b0, b1 = b0 + 1, b1 + 1
        for _ in range(p - r):
            add(c0, "B", b0)
            add(c0, "W", w0)
            b0, w0 = b0 + 1, w0 + 1
        acts.extend(Action(c1, "W", i) for i in range(w1, b1))
        acts.extend(Action(c0, "W", i) for i in range(w0, b0))
        if not (f0 == b0 == n and f1 == b1 == n):  # cannot happen: the loops above balance by construction
            raise SpecError(f"zbv construction for rank {r}: {f0}/{b0} and {f1}/{b1} of {n} micro-batches")
        out.append(tuple(a for a in acts if a.microbatch < m))
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# Event simulation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timeline:
    """Simulated execution: per rank, (action, start_s, end_s) in execution order."""

    ranks: tuple[tuple[tuple[Action, float, float], ...], ...]
    makespan_s: float

    def busy_s(self, rank: int) -> float:
        return sum(e - s for _, s, e in self.ranks[rank])

    def bubble_fraction(self) -> float:
        """Idle share of the busiest rank's makespan."""
        if self.makespan_s <= 0:
            return 0.0
        return 1.0 - max(self.busy_s(r) for r in range(len(self.ranks))) / self.makespan_s


def simulate(schedule: Schedule, f_s: Sequence[float], b_s: Sequence[float], w_s: Sequence[float],
             p2p_s: float) -> Timeline:
    """Run the action lists with per-chunk durations.

    ``f_s[c]``, ``b_s[c]``, ``w_s[c]``: forward, input-grad backward and weight-grad backward time of one
    micro-batch on chunk c. Schedules without split backward run B as ``b_s + w_s``. An action starts when
    its rank is free and its dependency has finished (+ ``p2p_s`` when the dependency ran on another rank):
    F(c, i) needs F(c-1, i); B(c, i) needs B(c+1, i), and the last chunk's B needs its own F; W(c, i) needs
    B(c, i). Raises SpecError on a deadlock (an order no execution can follow).
    """
    p, C, m = schedule.pp, schedule.num_chunks, schedule.num_microbatches
    split = schedule.split_backward
    rank_of = [schedule.rank_of_chunk(c) for c in range(C)]
    dur = [[float(f_s[c]), float(b_s[c]) if split else float(b_s[c]) + float(w_s[c]), float(w_s[c])]
           for c in range(C)]
    end = [-1.0] * (C * m * 3)
    ptr = [0] * p
    free = [0.0] * p
    acts = schedule.actions
    out: list[list[tuple[Action, float, float]]] = [[] for _ in range(p)]
    remaining = sum(len(a) for a in acts)
    while remaining:
        progressed = False
        for r in range(p):
            lst, k, t_free = acts[r], ptr[r], free[r]
            while k < len(lst):
                a = lst[k]
                c, ki, i = a.chunk, _KIND_INDEX[a.kind], a.microbatch
                if ki == 0:
                    dep_c, dep_k = c - 1, 0
                elif ki == 1:
                    dep_c, dep_k = (c, 0) if c == C - 1 else (c + 1, 1)
                else:
                    dep_c, dep_k = c, 1
                if dep_c < 0:
                    ready = 0.0
                else:
                    dep_end = end[(dep_c * m + i) * 3 + dep_k]
                    if dep_end < 0:
                        break
                    ready = dep_end + (p2p_s if rank_of[dep_c] != r else 0.0)
                start = ready if ready > t_free else t_free
                t_free = start + dur[c][ki]
                end[(c * m + i) * 3 + ki] = t_free
                out[r].append((a, start, t_free))
                k += 1
                remaining -= 1
                progressed = True
            ptr[r], free[r] = k, t_free
        if not progressed:
            stuck = [acts[r][ptr[r]] for r in range(p) if ptr[r] < len(acts[r])]
            raise SpecError(f"schedule {schedule.name} deadlocks: ranks wait on {stuck[:3]}")
    return Timeline(tuple(tuple(x) for x in out), max(free) if free else 0.0)


def peak_inflight(schedule: Schedule, rank: int) -> dict[int, int]:
    """Micro-batches of activations each chunk of ``rank`` holds at the rank's peak (all chunks weighted
    equally): an F stores one, the B (or, with split backward, the W) that consumes it frees it."""
    held: dict[int, int] = {}
    best: dict[int, int] = {}
    best_total = -1
    for a in schedule.actions[rank]:
        if a.kind == "F":
            held[a.chunk] = held.get(a.chunk, 0) + 1
            total = sum(held.values())
            if total > best_total:
                best_total, best = total, dict(held)
        elif a.kind == ("W" if schedule.split_backward else "B"):
            held[a.chunk] -= 1
    return best
