"""Pipeline makespan and in-flight activations, from simulating planner/schedules.py.

The cost model never uses a closed-form bubble: it simulates the action lists the runtime executes
(planner/cost/schedule_dag.py: compiled once per schedule, one pass per set of durations). To stay fast for
thousands of micro-batches it simulates at most a few periods and extends the line:

* m <= EXACT_PERIODS pp micro-batches: simulated exactly;
* beyond: the makespan of a pipeline schedule is eventually linear in m (each further micro-batch repeats
  the steady-state round; max-plus linear systems are eventually periodic, Baccelli et al. 1992, "Synchronization
  and Linearity", Ch. 3), so two simulations, of K pp and (K + 1) pp micro-batches, give the slope, and
  makespan(m) = makespan((K+1) pp) + (m - (K+1) pp) x slope. The slope is never below the busiest rank's work
  per micro-batch: every rank does its work each round, so a shorter slope only means the warm-up has not
  settled (stages that differ by a few percent take many rounds to use up their slack).

K: 2 for the 1F1B family (gpipe, 1f1b, interleaved), whose steady state is reached by 2 pp; 4 for zbv, whose
deferred weight-gradient actions absorb stage imbalance for longer. tests/planner/test_schedules.py checks
the result against full simulations (exact for balanced stages, within 0.1% on a sample of real
configurations, within 3% for random stages unbalanced by 20%).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.cost.schedule_dag import finish_times, schedule_dag
from planner.parallel_config import ParallelConfig
from planner.schedules import build_schedule, peak_inflight

_rank_of = ParallelConfig.chunk_to_pp_rank

SETTLE_PERIODS = {"zbv": 4}
"""K of the module docstring per schedule (default DEFAULT_SETTLE_PERIODS)."""
DEFAULT_SETTLE_PERIODS = 2


@dataclass(frozen=True)
class PipelineResult:
    makespan_s: float
    finish_s: tuple[float, ...]
    """When each pipeline rank runs out of actions (its last backward)."""


@lru_cache(maxsize=8192)
def _sim(name: str, pp: int, v: int, m: int, f: tuple, b: tuple, w: tuple, p2p: float) -> PipelineResult:
    """Memoised on the schedule and the durations: the search prices many configurations that share them
    (e.g. differing only in ZeRO stage or gradient sync)."""
    finish = finish_times(schedule_dag(name, pp, m, v), f, b, w, p2p)
    return PipelineResult(max(finish), finish)


def makespan(name: str, pp: int, v: int, m: int, f_s: tuple[float, ...], b_s: tuple[float, ...],
             w_s: tuple[float, ...], p2p_s: float) -> PipelineResult:
    """Makespan of ``m`` micro-batches under schedule ``name``; per-chunk durations as in ``simulate``."""
    if pp == 1:
        per = sum(f_s) + sum(b_s) + sum(w_s)
        return PipelineResult(m * per, (m * per,))
    key = (tuple(f_s), tuple(b_s), tuple(w_s), float(p2p_s))
    k = SETTLE_PERIODS.get(name, DEFAULT_SETTLE_PERIODS)
    if m <= (k + 1) * pp:
        return _sim(name, pp, v, m, *key)
    first = _sim(name, pp, v, k * pp, *key)
    last = _sim(name, pp, v, (k + 1) * pp, *key)
    work = [0.0] * pp
    for c in range(len(f_s)):
        work[_rank_of(c, pp, name)] += f_s[c] + b_s[c] + w_s[c]
    slope = max((last.makespan_s - first.makespan_s) / pp, max(work))
    extra = (m - (k + 1) * pp) * slope
    return PipelineResult(last.makespan_s + extra, tuple(x + extra for x in last.finish_s))


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
