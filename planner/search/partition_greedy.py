"""Fast heuristic partitions: the warm start of the CP-SAT model and the solver's quick path.

Two steps, both exact in what they claim:

* ``bottleneck_split`` (one chunk per rank): binary search on the bottleneck B; for a given B a greedy
  that gives each chunk as many layers as fit (time <= B with the fewest recomputed layers that make it
  fit in memory) decides whether the layers can be covered. A chunk that is feasible stays feasible when
  layers are taken from its front, so the greedy covers the most layers possible and the smallest B it
  accepts is the optimal bottleneck (Alpa, Zheng et al. 2022 Sec 5.2, uses the same early-exit idea).
* ``local_search``: move one layer across one chunk boundary while the objective improves, with the
  recompute counts refilled greedily (most bytes saved per tick first) after every move.
"""

from __future__ import annotations

import time
from typing import Sequence

from planner.parallel_config import even_split
from planner.search.partition_problem import Evaluation, PartitionProblem, evaluate
from planner.search.partition_result import PartitionResult

MAX_LOCAL_MOVES = 48
"""Local-search moves at most (each tries every boundary both ways): a warm start, not the answer."""
_KEYS = ("layer_time", "layer_extra", "layer_static", "layer_act", "layer_act_full")


def prefixes(p: PartitionProblem) -> dict[str, list[int]]:
    return {k: p.prefix(k) for k in _KEYS}


def _chunk_memory(p: PartitionProblem, pre: dict[str, list[int]], c: int, b: int, e: int, r: int) -> int:
    S, A, AF = pre["layer_static"], pre["layer_act"], pre["layer_act_full"]
    mid = b + r
    mem = S[e] - S[b] + p.inflight[c] * (A[e] - A[mid] + AF[mid] - AF[b])
    if c == 0:
        mem += p.embed_static + p.inflight[c] * p.embed_act
    if c == p.num_chunks - 1:
        mem += p.head_static + p.inflight[c] * p.head_act
    return mem


def _chunk_time(p: PartitionProblem, pre: dict[str, list[int]], c: int, b: int, e: int, r: int) -> int:
    T, X = pre["layer_time"], pre["layer_extra"]
    t = T[e] - T[b] + X[b + r] - X[b]
    if c == 0:
        t += p.embed_time
    if c == p.num_chunks - 1:
        t += p.head_time
    weights = p.speed_weights
    return t if weights is None else t * weights[p.chunk_rank[c]]


def fill_recompute(p: PartitionProblem, layers: Sequence[int], pre: dict[str, list[int]]) -> tuple[int, ...]:
    """Fewest-ticks recompute counts that make every rank fit, greedily (largest bytes saved per tick first).
    Where even full recomputation of every layer does not fit, every layer of that rank is recomputed.
    (Ranks are filled one at a time and all chunks of a rank share its speed, so ``rank_speed`` does not
    change the order.)"""
    C = p.num_chunks
    starts = [0] * C
    for c in range(1, C):
        starts[c] = starts[c - 1] + layers[c - 1]
    rec = [0] * C
    if not p.allow_recompute:
        return tuple(rec)
    homogeneous = p.homogeneous
    A, AF, X = p.layer_act, p.layer_act_full, p.layer_extra
    for chunks in p.ranks_chunks():
        mem = p.rank_other_bytes[p.chunk_rank[chunks[0]]] + sum(
            _chunk_memory(p, pre, c, starts[c], starts[c] + layers[c], 0) for c in chunks)
        if mem <= p.capacity_bytes:
            continue
        if homogeneous:  # every layer saves i_c (a - af) for the same time: take the fullest chunks first
            saving = A[0] - AF[0]
            for c in sorted(chunks, key=lambda c: -p.inflight[c]):
                per = p.inflight[c] * saving
                if per <= 0 or mem <= p.capacity_bytes:
                    continue
                k = min(layers[c], -(-(mem - p.capacity_bytes) // per))
                rec[c] = k
                mem -= k * per
            continue
        while mem > p.capacity_bytes:
            best, best_key = -1, None
            for c in chunks:
                if rec[c] < layers[c]:
                    i = starts[c] + rec[c]
                    saving = p.inflight[c] * (A[i] - AF[i])
                    if saving > 0:
                        key = saving / (X[i] + 1)
                        if best_key is None or key > best_key:
                            best, best_key = c, key
            if best < 0:
                break
            i = starts[best] + rec[best]
            mem -= p.inflight[best] * (A[i] - AF[i])
            rec[best] += 1
    return tuple(rec)


def _score(p: PartitionProblem, ev: Evaluation) -> tuple[int, int, int]:
    overflow = sum(max(0, b - p.capacity_bytes) for b in ev.rank_bytes)
    return overflow, ev.objective, ev.secondary


def bottleneck_split(p: PartitionProblem, pre: dict[str, list[int]]) -> tuple[int, ...] | None:
    """Optimal-bottleneck split for one chunk per rank (None when no split fits, or v > 1)."""
    if p.chunks_per_rank != 1:
        return None
    L, C = p.num_layers, p.num_chunks

    def min_recompute(c: int, b: int, e: int, r: int) -> int | None:
        """Smallest r' >= r making [b, e) fit on chunk c's rank (two-pointer: r only grows with e)."""
        other = p.rank_other_bytes[p.chunk_rank[c]]
        hi = (e - b) if p.allow_recompute else 0
        r = min(r, hi)
        while _chunk_memory(p, pre, c, b, e, r) + other > p.capacity_bytes:
            if r >= hi:
                return None
            r += 1
        return r

    def cover(B: int) -> list[int] | None:
        layers, b = [], 0
        for c in range(C):
            left = C - c - 1
            e_max = L - left
            if c == C - 1:
                r = min_recompute(c, b, L, 0)
                if r is None or _chunk_time(p, pre, c, b, L, r) > B:
                    return None
                layers.append(L - b)
                return layers
            e, r, best = b + 1, 0, None
            while e <= e_max:
                r2 = min_recompute(c, b, e, r)
                if r2 is None or _chunk_time(p, pre, c, b, e, r2) > B:
                    break
                best, r = e, r2
                e += 1
            if best is None:
                return None
            layers.append(best - b)
            b = best
        return None

    T = pre["layer_time"][-1] + pre["layer_extra"][-1] + p.embed_time + p.head_time
    if p.speed_weights is not None:
        T *= max(p.speed_weights)
    lo, hi = 0, T
    if cover(hi) is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if cover(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    found = cover(lo)
    return tuple(found) if found else None


def local_search(p: PartitionProblem, layers: Sequence[int], pre: dict[str, list[int]],
                 max_moves: int = 200) -> tuple[tuple[int, ...], tuple[int, ...], Evaluation]:
    layers = list(layers)
    rec = fill_recompute(p, layers, pre)
    ev = evaluate(p, layers, rec, pre)
    score = _score(p, ev)
    for _ in range(max_moves):
        best = None
        for c in range(p.num_chunks - 1):
            for d in (1, -1):
                if layers[c] + d < 1 or layers[c + 1] - d < 1:
                    continue
                trial = list(layers)
                trial[c] += d
                trial[c + 1] -= d
                trec = fill_recompute(p, trial, pre)
                tev = evaluate(p, trial, trec, pre)
                tscore = _score(p, tev)
                if tscore < score and (best is None or tscore < best[0]):
                    best = (tscore, trial, trec, tev)
        if best is None:
            break
        score, layers, rec, ev = best
    return tuple(layers), rec, ev


def solve_greedy(p: PartitionProblem, quick: bool = False) -> PartitionResult:
    """Bottleneck split (v = 1) or the even split (v > 1), then local search.

    ``quick`` (the solver's fast path, where any split that fits will do): the even split with recompute filled
    in, else the bottleneck split (v = 1; exact about feasibility for identical layers), and no local search;
    CP-SAT settles the rest and polishes the leading candidates later."""
    t0 = time.perf_counter()
    pre = prefixes(p)
    if quick:
        even = p.even_layers
        rec = fill_recompute(p, even, pre)
        ev = evaluate(p, even, rec, pre)
        if not ev.feasible:
            start = bottleneck_split(p, pre)
            if start is not None:
                even, rec = start, fill_recompute(p, start, pre)
                ev = evaluate(p, even, rec, pre)
        return PartitionResult.from_evaluation(p, even, rec, ev, solver="greedy",
                                               status="feasible" if ev.feasible else "infeasible",
                                               wall_s=time.perf_counter() - t0)
    start = bottleneck_split(p, pre)
    # the bottleneck split is already optimal in its bottleneck: a few moves settle the fill/drain term
    layers, rec, ev = local_search(p, start or even_split(p.num_layers, p.num_chunks), pre,
                                   max_moves=8 if start else min(4 * p.num_chunks, MAX_LOCAL_MOVES))
    return PartitionResult.from_evaluation(p, layers, rec, ev, solver="greedy", status="feasible" if ev.feasible
                                           else "infeasible", wall_s=time.perf_counter() - t0)
