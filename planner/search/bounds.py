"""Lower bounds that prune before any estimate or solve, and why each never drops the optimum.

* ``compute_lower_bound_s``: the cost model's step time is the simulated pipeline makespan plus terms
  that are >= 0 (exposed DP sync, ZeRO-3 gathers, optimizer). A simulation runs every action of a rank
  one after the other, so the makespan is at least the busiest rank's work, m x (its chunks' forward +
  backward + recompute per micro-batch), which is at least the average over the pp ranks of the whole
  model's work. The per-layer times come from ``CostModel.partition_inputs`` (the very numbers the
  estimate adds up), so the bound holds for every layer split, schedule and sync option of a compute
  group: they change how the work is arranged, never how much of it there is.
* ``relaxed_bottleneck_lower_bound_s`` (memory-aware, the one that prunes): the inner partition problem
  with fractional layer counts. Rank r may hold N_r layers (any real >= 0), of which R_r <= N_r fully
  recomputed, with time t N_r + x R_r + (embedding / head time on their ranks) and memory
  s N_r + i_r (a N_r - d R_r) + (fixed bytes) <= capacity, where t, x, s, a are the smallest per-layer
  time, recompute extra, static and activation bytes, d the largest saving of full recomputation and
  i_r the fewest micro-batches any chunk of rank r holds in flight. Every integer split is one of these
  fractional ones, so m x (smallest bottleneck B with sum_r N_r(B) >= L) is a lower bound on the
  busiest rank's work. It charges a configuration for the recomputation it *must* do to fit, which the
  compute-only bound cannot see; when even full recomputation cannot fit the layers it is infinite, and
  so it is when the ranks' room together cannot hold every layer's static bytes plus one checkpoint each
  (in the chunk with the fewest micro-batches in flight). With mixed layers (MoE after dense layers) the
  cheapest layer prices all of them, so the result is also raised to the compute bound.
* ``memory_floor_bytes``: average static bytes per rank plus overheads, reported when a group cannot fit.
* fill and drain, in the relaxed bound (gpipe, 1f1b, interleaved; not zbv, whose trailing weight-gradient
  actions break the argument): on every rank r the last backward is B(chunk r, micro-batch m - 1) (checked
  for every schedule in tests), which cannot start before micro-batch 0 went forward through chunks
  0..r-1 and must be followed by the backward of chunks r-1..0, so the makespan is at least
  m W_r + sum_{c < r} t_c >= m W_r + r t + embedding time (each chunk holds at least one layer);
* ``fill_drain_lower_bound_s`` (one chunk per rank: gpipe, 1f1b): rank r cannot start before micro-batch 0
  has gone forward through ranks 0..r-1, and after its last backward micro-batch m-1 still goes backward
  through them, so makespan >= m W_r + sum_{r' < r} W_r' for every r (W: one micro-batch's forward +
  backward on a rank). Over all real splits of the total work, the smallest max is reached when every
  one of these is tight: W_r = W_0 q^r with q = 1 - 1/m, giving total / (1 - q^pp).
* ``sync_variant_lower_bound_s``: a grad-sync mode or a compression method changes only the DP-sync
  term (compression also adds codec time, >= 0), so a variant cannot beat the plain all-reduce
  estimate of the same configuration by more than that estimate's exposed DP sync.
* ``LOSSY_PENALTY``: ``planner.compression.LOSSY_MIN_STEP_GAIN`` says a lossy method is worth it only
  when it shortens the step by >= 5 %; ranking keys of lossy candidates are divided by 0.95, and so are
  their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.compression import LOSSY_MIN_STEP_GAIN
from planner.cost.pipeline import inflight_per_chunk
from planner.parallel_config import ParallelConfig
from planner.search.space import ComputeGroup, SearchSpace

LOSSY_PENALTY = 1.0 / (1.0 - LOSSY_MIN_STEP_GAIN)


def work_per_microbatch_s(pin: Any) -> float:
    """Forward + backward (with the configuration's recompute) of one micro-batch through the whole model."""
    return float(sum(pin.layer_time_s)) + float(pin.embed_time_s) + float(pin.head_time_s)


def compute_lower_bound_s(pin: Any, micro_batches: int, pp: int) -> float:
    """m x (whole-model work per micro-batch) / pp: no split or schedule does better (see module doc)."""
    return micro_batches * work_per_microbatch_s(pin) / pp


def memory_floor_bytes(pin: Any, pp: int) -> float:
    """Average static bytes per pipeline rank + the rank's fixed overhead: no split puts less on its
    fullest rank (activations left out)."""
    static = float(sum(pin.layer_static_bytes)) + float(pin.embed_static_bytes) + float(pin.head_static_bytes)
    return static / pp + float(pin.rank_other_bytes)


@dataclass(frozen=True)
class RelaxedRows:
    """K candidate rows of one compute group for the vectorised relaxed bound (arrays are K x pp)."""

    inflight: np.ndarray
    """Fewest micro-batches in flight over the chunks of each rank."""
    fixed_time_s: np.ndarray
    """Embedding / head time on the rank that holds them."""
    fixed_bytes: np.ndarray
    """Embedding / head static + activations, and the rank's other bytes."""
    layer_static_bytes: np.ndarray
    """K: smallest per-layer static bytes (depends on the ZeRO stage)."""
    total_static_bytes: np.ndarray
    """K: static bytes of all transformer layers together (mixed layers: the per-layer minimum undercounts)."""


def relaxed_rows(pins: list[Any], inflight: list[tuple[int, ...]], chunk_ranks: list[list[int]],
                 pp: int, fill_drain: list[bool] | None = None, micro_batches: int = 1) -> RelaxedRows:
    """Build the rows from one PartitionInputs per candidate (its static bytes) and its schedule's
    per-chunk in-flight counts and chunk -> rank map; ``fill_drain[k]`` adds the fill/drain offset of
    rank r (r t + embedding time, spread over the m micro-batches) to row k."""
    K = len(pins)
    inf_min = np.full((K, pp), np.inf)
    ftime = np.zeros((K, pp))
    fbytes = np.zeros((K, pp))
    static = np.zeros(K)
    total_static = np.zeros(K)
    per_pin: dict[int, tuple[float, ...]] = {}
    ranks_ = np.arange(pp)
    for k, (pin, infl, ranks) in enumerate(zip(pins, inflight, chunk_ranks)):
        np.minimum.at(inf_min[k], np.asarray(ranks), np.asarray(infl, dtype=float))
        got = per_pin.get(id(pin))
        if got is None:
            got = per_pin[id(pin)] = (float(pin.embed_time_s), float(pin.head_time_s), float(pin.rank_other_bytes),
                                      float(pin.embed_static_bytes), float(pin.embed_activation_bytes),
                                      float(pin.head_static_bytes), float(pin.head_activation_bytes),
                                      float(min(pin.layer_static_bytes)), float(min(pin.layer_time_s)),
                                      float(sum(pin.layer_static_bytes)))
        e_t, h_t, other, e_s, e_a, h_s, h_a, s_min, t_min, s_total = got
        first, last = ranks[0], ranks[-1]
        ftime[k, first] += e_t
        ftime[k, last] += h_t
        fbytes[k, :] += other
        fbytes[k, first] += e_s + infl[0] * e_a
        fbytes[k, last] += h_s + infl[-1] * h_a
        static[k] = s_min
        total_static[k] = s_total
        if fill_drain and fill_drain[k] and pp > 1:
            ftime[k, :] += (ranks_ * t_min + np.where(ranks_ > 0, e_t, 0.0)) / micro_batches
    return RelaxedRows(inf_min, ftime, fbytes, static, total_static)


def relaxed_bottleneck_lower_bound_s(pin: Any, rows: RelaxedRows, micro_batches: int, capacity_bytes: float,
                                     allow_recompute: bool, iterations: int = 22) -> np.ndarray:
    """Per row: m x the fractional-split bottleneck (see module doc); inf where nothing can fit."""
    L = len(pin.layer_time_s)
    t = float(min(pin.layer_time_s))
    x = float(min(pin.layer_full_recompute_extra_s)) if allow_recompute else 0.0
    a = float(min(pin.layer_activation_bytes))
    d = max(float(u) - float(v) for u, v in zip(pin.layer_activation_bytes, pin.layer_activation_full_recompute_bytes))
    d = max(d, 0.0) if allow_recompute else 0.0
    i, s = rows.inflight, rows.layer_static_bytes[:, None]
    room = capacity_bytes - rows.fixed_bytes  # bytes left for layers on each rank
    per_plain = s + i * a  # bytes per layer without recompute
    per_full = np.maximum(s + i * (a - d), 1e-9)  # bytes per layer when all are recomputed
    n0 = np.where(room >= 0, room / per_plain, -1.0)  # layers that fit without recompute
    nmax = np.where(room >= 0, room / per_full, -1.0)  # layers that fit at all
    feasible = (room >= 0).all(axis=1) & (np.where(room >= 0, nmax, 0).sum(axis=1) >= L - 1e-9)
    # all layers must be placed somewhere: their static bytes plus at least one checkpoint each, held by the
    # chunk that keeps the fewest micro-batches in flight
    floor_act = float(sum(pin.layer_activation_full_recompute_bytes if allow_recompute else pin.layer_activation_bytes))
    feasible &= np.clip(room, 0, None).sum(axis=1) >= rows.total_static_bytes + i.min(axis=1) * floor_act
    # extra recompute time per layer beyond n0: x * R'(N) with R(N) = (N per_plain - room) / (i d)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((i * d) > 0, x * per_plain / (i * d), np.inf)

    def layers_within(B: np.ndarray) -> np.ndarray:
        budget = B[:, None] - rows.fixed_time_s
        plain = budget / t
        with np.errstate(invalid="ignore"):
            extra = n0 + (budget - t * n0) / (t + slope)
        n = np.where(plain <= n0, plain, np.minimum(extra, nmax))
        return np.clip(np.where(room >= 0, n, 0.0), 0.0, None).sum(axis=1)

    K = rows.inflight.shape[0]
    lo = np.zeros(K)
    hi = np.full(K, (t + x) * L + rows.fixed_time_s.sum(axis=1).max() + 1e-12)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = layers_within(mid) >= L - 1e-9
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return np.where(feasible, micro_batches * lo, np.inf)


def fill_drain_lower_bound_s(work_s: float, micro_batches: int, pp: int) -> float:
    """Bound for one-chunk-per-rank schedules (see module doc); ``work_s``: one micro-batch through the model."""
    if pp <= 1:
        return micro_batches * work_s
    q = 1.0 - 1.0 / micro_batches
    return work_s / (1.0 - q ** pp)


def rank_key(step_time_s: float, compression: str) -> float:
    """What the ranking sorts by: the step time, with the lossy-compression hurdle applied."""
    return step_time_s * (LOSSY_PENALTY if compression != "none" else 1.0)


def sync_variant_lower_bound_s(base_step_time_s: float, base_breakdown: dict[str, float]) -> float:
    """Bound on any grad-sync / compression variant of an all-reduce, uncompressed estimate."""
    return max(0.0, base_step_time_s - float(base_breakdown.get("dp_sync_exposed", 0.0)))


def rows_bound(space: SearchSpace, capacity_bytes: float, g: ComputeGroup, pins: dict[int, Any],
               members: list[tuple[str, int, int]], collapse: bool) -> np.ndarray:
    """Lower bounds (s) for (schedule, v, zero) members of a group (``pins``: PartitionInputs per ZeRO stage);
    with ``collapse``, one row per ZeRO stage taking the element-wise minimum over schedules: a bound for
    the whole group. Members with one chunk per rank also get the fill/drain bound."""
    m = g.micro_batches(space.global_batch)
    plist, infl, ranks = [], [], []
    for sched, v, z in members:
        plist.append(pins[z])
        infl.append(inflight_per_chunk(sched, g.pp, v, m))
        ranks.append([ParallelConfig.chunk_to_pp_rank(c, g.pp, sched) for c in range(g.pp * v)])
    rows = relaxed_rows(plist, infl, ranks, g.pp, [sched != "zbv" for sched, _, _ in members], m)
    any_pin = next(iter(pins.values()))
    if collapse:
        zs = sorted(pins)
        idx = [[k for k, mem in enumerate(members) if mem[2] == z] for z in zs]
        rows = RelaxedRows(
            inflight=np.stack([rows.inflight[i].min(axis=0) for i in idx]),
            fixed_time_s=np.stack([rows.fixed_time_s[i].min(axis=0) for i in idx]),
            fixed_bytes=np.stack([rows.fixed_bytes[i].min(axis=0) for i in idx]),
            layer_static_bytes=np.array([rows.layer_static_bytes[i].min() for i in idx]),
            total_static_bytes=np.array([rows.total_static_bytes[i].min() for i in idx]))
        out = relaxed_bottleneck_lower_bound_s(any_pin, rows, m, capacity_bytes, g.recompute != "full")
        return np.maximum(out, compute_lower_bound_s(any_pin, m, g.pp))
    lbs = relaxed_bottleneck_lower_bound_s(any_pin, rows, m, capacity_bytes, g.recompute != "full")
    work = work_per_microbatch_s(any_pin)
    # the relaxation prices every layer at the cheapest layer's time; with mixed layers the plain compute bound
    # (the true total) can be higher
    lbs = np.maximum(lbs, compute_lower_bound_s(any_pin, m, g.pp))
    for k, (sched, v, z) in enumerate(members):
        if v == 1:
            lbs[k] = max(lbs[k], fill_drain_lower_bound_s(work, m, g.pp))
    return lbs
