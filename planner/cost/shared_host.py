"""Ranks that share one host's cores (a gloo cluster such as the ``cpu`` preset, priced from a profile).

Why: the profiler times every block with all N ranks of a host computing at once (profile concurrency N,
issue #5), which is what a data-parallel step does. A plan whose ranks idle part of the step (pipeline
fill and drain, a stage waiting on a slower one) leaves cores to the ranks still working, and those run
faster than the N-concurrency numbers say. Measured on a 2-core host with 4 ranks: the blocks of a
4-stage pipeline ran at about 0.7x their 4-concurrency time, a pure data-parallel step at 1.0x.

Model: a fixed point on k, the average number of a host's ranks busy during the step (Little's law over
one step: k = devices_per_node x sum over pipeline ranks of busy_r / (pp x step)).

1. Price the step with the profile read at concurrency k (start: k = N). The profile blends its measured
   levels linearly between them (``Profile._level_weights``: processor sharing, a rank's share of the
   cores falls as 1 / k);
2. busy_r = m x (forward + backward + recompute + TP work per micro-batch of pipeline rank r) + its
   optimizer step + the DP gradient sync (gloo's collectives copy and reduce on the same cores); the
   bubble and pipeline send/recv waits are idle;
3. k <- k from the new estimate; stop when it moves less than ``TOLERANCE`` (k is rounded to
   ``GRID`` so configurations share the per-concurrency models and their caches).

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


def busy_fraction(cm: Any, config: Any, est: Any) -> float:
    """Average share of the step a rank is busy (module docstring, step 2), under ``cm``'s durations."""
    dur = cm._durations(config)
    m = config.num_micro_batches
    b = est.breakdown
    tail = b.get("optimizer", 0.0) + b.get("dp_sync_exposed", 0.0) + b.get("zero3_gather", 0.0)
    busy = [m * x.work_s + tail for x in dur.rank_sums]
    return min(1.0, sum(busy) / (len(busy) * est.step_time_s)) if est.step_time_s > 0 else 1.0


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
        target = _snap(n * busy_fraction(cm.at_concurrency(k), config, est), lo, hi)
        if abs(target - k) < TOLERANCE:
            break
        # halfway: the busy share itself moves with k (faster blocks shrink the bubble less than the work)
        k = _snap((k + target) / 2, lo, hi) if abs(target - k) > 2 * GRID else target
        est = estimate_at(k)
    return k, est
