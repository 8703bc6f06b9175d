"""Pipeline makespan and in-flight activations, from simulating planner/schedules.py.

The cost model never uses a closed-form bubble: it simulates the action lists the runtime executes.
To keep one estimate well under a millisecond for thousands of micro-batches, the simulation runs at a
reduced micro-batch count and extrapolates: once every rank is in its steady state, each further group of
``pp`` micro-batches adds the same time (the schedule repeats with period pp), so makespan(m) is linear in
m beyond the warm-up. ``makespan`` simulates m1 = 2 pp and m2 = 3 pp (both multiples of pp, as interleaving
needs) and extends the line; tests/planner/test_schedules.py checks it against full simulations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.schedules import build_schedule, peak_inflight, simulate

EXACT_MAX_MICROBATCHES_FACTOR = 3
"""Simulate exactly while m <= 3 pp; extrapolate beyond."""


@dataclass(frozen=True)
class PipelineResult:
    makespan_s: float
    finish_s: tuple[float, ...]
    """When each pipeline rank runs out of actions (its last backward)."""


@lru_cache(maxsize=8192)
def _sim(name: str, pp: int, v: int, m: int, f: tuple, b: tuple, w: tuple, p2p: float) -> PipelineResult:
    sched = build_schedule(name, pp, m, v)
    tl = simulate(sched, f, b, w, p2p)
    finish = tuple((acts[-1][2] if acts else 0.0) for acts in tl.ranks)
    return PipelineResult(tl.makespan_s, finish)


def makespan(name: str, pp: int, v: int, m: int, f_s: tuple[float, ...], b_s: tuple[float, ...],
             w_s: tuple[float, ...], p2p_s: float) -> PipelineResult:
    """Makespan of ``m`` micro-batches under schedule ``name``; per-chunk durations as in ``simulate``."""
    if pp == 1:
        per = sum(f_s) + sum(b_s) + sum(w_s)
        return PipelineResult(m * per, (m * per,))
    key = (tuple(round(x, 12) for x in f_s), tuple(round(x, 12) for x in b_s), tuple(round(x, 12) for x in w_s),
           round(p2p_s, 12))
    if m <= EXACT_MAX_MICROBATCHES_FACTOR * pp or name == "gpipe" and m <= 4 * pp:
        return _sim(name, pp, v, m, *key)
    m1, m2 = 2 * pp, 3 * pp
    r1, r2 = _sim(name, pp, v, m1, *key), _sim(name, pp, v, m2, *key)
    k = (m - m1) / (m2 - m1)
    return PipelineResult(r1.makespan_s + k * (r2.makespan_s - r1.makespan_s),
                          tuple(a + k * (b - a) for a, b in zip(r1.finish_s, r2.finish_s)))


@lru_cache(maxsize=4096)
def inflight_per_chunk(name: str, pp: int, v: int, m: int) -> tuple[int, ...]:
    """For each model chunk, micro-batches of its activations held at its rank's peak (1F1B first stage: pp;
    interleaved rank 0 holds vp + p - 1 chunk-microbatches, Korthikanti's factor 1 + (p-1)/(pv); gpipe: m)."""
    if pp == 1:
        return (1,) * v if name != "gpipe" else (m,) * v
    if name == "gpipe":
        return (m,) * pp
    m_eff = m if m <= 3 * pp else 3 * pp
    sched = build_schedule(name, pp, m_eff, v)
    out = [0] * sched.num_chunks
    for r in range(pp):
        for c, n in peak_inflight(sched, r).items():
            out[c] = n
    return tuple(out)
