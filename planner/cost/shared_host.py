"""Ranks that share one host's cores (a gloo cluster such as the ``cpu`` preset, priced from a profile).

Why: the profiler times every block with all N ranks of a host computing at once (profile concurrency N,
issue #5), which is what a data-parallel step does. A plan whose ranks idle part of the step (pipeline
fill and drain, a stage waiting on a slower one) leaves cores to the ranks still working, and those run
faster than the N-concurrency numbers say (the profile's 2-rank blocks on a 2-core host ran 2.3x faster
than its 4-rank ones).

Model: a fixed point on k, the number of a host's ranks computing at once as the work sees it: the
busy-weighted mean sum_t c_t^2 / sum_t c_t over the step, with c_t the ranks busy at time t. Why weighted by
the work and not a plain time average (Little's law): a pipeline's ranks are busy together in its steady
state and idle together in fill and drain, so most of the work runs while nearly all ranks run (measured,
4 stages on 2 cores: the busy ranks ran at the 4-concurrency speed although only ~2.6 were busy on
average), and waiting in a gloo recv costs no CPU (measured: 2 ranks computing beside 2 blocked in
``recv`` ran as fast as beside 2 sleeping ones), so the idle ones really are idle.

1. Price the step with the profile read at concurrency k (start: k = N). The profile blends its measured
   levels linearly between them (``Profile._level_weights``: processor sharing, a rank's share of the
   cores falls as 1 / k);
2. c_t from the simulated pipeline timeline (planner/schedules.py ``simulate``, the durations the step
   was priced with): the dp x tp replicas of a pipeline rank on the host run in lock-step, so c_t is
   (ranks per pipeline rank) x (pipeline ranks busy); the optimizer step and the DP gradient sync run on
   every rank at once (c = N; gloo's collectives copy and reduce on the same cores);
3. k <- the busy-weighted mean; stop when it moves less than ``TOLERANCE`` (k is rounded to ``GRID`` so
   configurations share the per-concurrency models and their caches).

k never goes below the lowest measured level: fewer busy ranks than the profile measured cannot be
extrapolated safely, so there blocks are priced at that level (which caps the predicted speed-up).
"""

from __future__ import annotations

from typing import Any

GRID = 0.1
"""k is rounded to this many ranks: one CostModel (with its block caches) per grid point."""
TOLERANCE = 0.15
"""Stop when k moves less than this (ranks); the step time changes by well under 1 % per 0.1 rank."""
MAX_ROUNDS = 6


def applies(cluster: Any, profile: Any) -> bool:
    """Gloo ranks on shared hosts, priced from a profile measured at more than one concurrency level."""
    return (getattr(cluster, "backend", "") == "gloo" and profile is not None
            and len(getattr(profile, "concurrency_levels", ())) > 1)


SIMULATED_MICROBATCHES = 64
"""Beyond this many micro-batches the concurrency profile is the steady state's: simulate at most this many."""


def work_concurrency(cm: Any, config: Any, est: Any) -> float:
    """Busy-weighted mean number of the host's ranks computing at once (module docstring, step 2)."""
    from planner.schedules import build_schedule, simulate

    n = float(cm.cluster.devices_per_node)
    b = est.breakdown
    tail = b.get("optimizer", 0.0) + b.get("dp_sync_exposed", 0.0) + b.get("zero3_gather", 0.0)
    if config.pp == 1:
        return n
    per_stage = n / config.pp
    dur = cm._durations(config)
    m = min(config.num_micro_batches, SIMULATED_MICROBATCHES)
    timeline = simulate(build_schedule(config.schedule, config.pp, m, config.virtual_stages),
                        *dur.simulation_inputs())
    events = sorted([(s, 1) for rank in timeline.ranks for _, s, e in rank if e > s]
                    + [(e, -1) for rank in timeline.ranks for _, s, e in rank if e > s])
    num = den = 0.0
    busy, last = 0, 0.0
    for t, step in events:
        if busy:
            c = per_stage * busy
            num += c * c * (t - last)
            den += c * (t - last)
        busy, last = busy + step, t
    scale = config.num_micro_batches / m  # the tail is per step, the simulated pipeline per m micro-batches
    num, den = num * scale + n * n * tail, den * scale + n * tail
    return num / den if den > 0 else n


def _snap(k: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, round(round(k / GRID) * GRID, 6)))


def concurrency_for(cm: Any, config: Any, estimate_at) -> tuple[float, Any]:
    """(k, the estimate at k) for ``config``; ``estimate_at(k)`` prices it with the profile read at k."""
    levels = cm.profile.concurrency_levels
    n = float(cm.cluster.devices_per_node)
    lo, hi = float(levels[0]), min(n, float(levels[-1]))
    k = hi
    est = estimate_at(k)
    for _ in range(MAX_ROUNDS):
        target = _snap(work_concurrency(cm.at_concurrency(k), config, est), lo, hi)
        if abs(target - k) < TOLERANCE:
            break
        # halfway: the concurrency profile itself moves a little with k (all durations scale, p2p does not)
        k = _snap((k + target) / 2, lo, hi) if abs(target - k) > 2 * GRID else target
        est = estimate_at(k)
    return k, est
