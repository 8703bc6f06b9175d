"""Pipeline makespan and in-flight activations, from simulating planner/schedules.py.

The cost model never uses a closed-form bubble: it simulates the action lists the runtime executes.
To keep one estimate well under a millisecond for thousands of micro-batches, the simulation runs at a
reduced micro-batch count and extrapolates. gpipe / 1f1b / interleaved: one simulation of 2 pp micro-batches,
then each further micro-batch adds the busiest rank's work (the steady state of the 1F1B family). zbv (whose
greedy order can stall in its steady state): once every rank is in its steady state, each further group of
``pp`` micro-batches adds the same time (the schedule repeats with period pp, or 2 pp), so makespan(m) is linear in
m beyond the warm-up. ``makespan`` simulates 2 pp, 4 pp, ... micro-batches (multiples of pp, as interleaving
needs) until one more period adds exactly what the last one did (unbalanced stages can take a few periods to
settle), then extends the line; tests/planner/test_schedules.py checks it against full simulations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.parallel_config import ParallelConfig
from planner.schedules import build_schedule, peak_inflight, simulate

_rank_of = ParallelConfig.chunk_to_pp_rank

EXACT_MAX_MICROBATCHES_FACTOR = 3
"""Simulate exactly while m <= 3 pp; extrapolate beyond."""
MAX_STEPS = 6
"""Longest warm-up (in steps of 2 pp micro-batches) the extrapolation waits for before it extends the line."""


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
    if m <= EXACT_MAX_MICROBATCHES_FACTOR * pp:
        return _sim(name, pp, v, m, *key)
    if name != "zbv":
        # 1F1B-family steady state: every further micro-batch costs the busiest rank's work (all its chunks'
        # F + B); one simulation of 2 pp micro-batches gives the warm-up and drain (tests: within 3% of a
        # full simulation for unbalanced stages, exact for balanced ones)
        base = _sim(name, pp, v, 2 * pp, *key)
        work = [0.0] * pp
        for c in range(len(f_s)):
            work[_rank_of(c, pp, name)] += f_s[c] + b_s[c] + w_s[c]
        extra = (m - 2 * pp) * max(work)
        return PipelineResult(base.makespan_s + extra, tuple(x + extra for x in base.finish_s))
    # grow the simulated count in steps of 2 pp (zbv's greedy order can alternate with period 2 pp) until two
    # more steps each add exactly what the one before did, then extend the line
    step = 2 * pp
    prev = _sim(name, pp, v, step, *key)
    cur = _sim(name, pp, v, 2 * step, *key)
    k, stable = 2, 0
    while k < MAX_STEPS and (k + 1) * step < m and stable < 2:
        nxt = _sim(name, pp, v, (k + 1) * step, *key)
        d_old, d_new = cur.makespan_s - prev.makespan_s, nxt.makespan_s - cur.makespan_s
        prev, cur, k = cur, nxt, k + 1
        stable = stable + 1 if abs(d_new - d_old) <= 1e-9 * max(abs(d_new), 1e-12) else 0
    if k * step >= m:
        return _sim(name, pp, v, m, *key)
    frac = (m - k * step) / step
    return PipelineResult(cur.makespan_s + frac * (cur.makespan_s - prev.makespan_s),
                          tuple(a + frac * (a - b) for a, b in zip(cur.finish_s, prev.finish_s)))


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
