"""Search orchestration: enumerate, bound, estimate, partition, rank; count everything.

1. Every compute group of the space (``space.compute_groups``) gets a lower bound (``bounds.rows_bound``:
   the relaxed, memory-aware bottleneck) from ``CostModel.partition_inputs``; a group whose layers cannot
   fit even with full recomputation is infeasible as a whole, and a group with the same time and memory as
   another (selective recompute under FlashAttention) is recorded as equivalent.
2. Groups are explored best bound first (branch and bound). Once ``top_k`` candidates are known, a group
   whose bound is not below the k-th best ranking key is pruned with every group after it: the bound
   holds for any split, schedule and sync option, so the optimum (and the top k) are never dropped.
3. Inside a group each schedule x ZeRO stage gets its own bound (with the fill/drain terms) and is estimated
   unless that bound cannot beat the k-th best; grad-sync and compression variants only when
   their bound (``sync_variant_lower_bound_s``) can beat the k-th best. A candidate whose even split does
   not fit gets a layer split with full-recompute layers per chunk: the greedy first, CP-SAT to settle it
   when the greedy finds none.
4. The leading candidates get the CP-SAT partition (``partition.solve_cpsat``, greedy warm start, time
   limit) and are re-estimated with their uneven split; the better split is kept.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from planner.errors import ConfigError, InfeasibleError
from planner.parallel_config import ParallelConfig
from planner.search import bounds
from planner.search.partition import find_feasible, solve_cpsat
from planner.search.partition_greedy import solve_greedy
from planner.search.partition_problem import problem_from_inputs
from planner.search.records import CandidateRecord, SearchResult, SearchStats, ranking_tiebreak
from planner.search.space import (ComputeGroup, SearchSpace, SyncOption, compute_groups, explain_empty, make_config,
                                  schedule_options, sync_options)

GiB = 2**30
BOUNDING_SHARE = 0.5
"""Share of the time limit the bounding pass may use before the best-bounded groups are explored."""


@dataclass(frozen=True)
class SearchOptions:
    top_k: int = 5
    """Candidates that must come out exactly right (pruning keeps the k best)."""
    time_limit_s: float = 60.0
    """Wall budget of the whole search; past it, unexplored groups are reported and the gap is bounded."""
    partition_time_limit_s: float = 1.0
    """Per CP-SAT solve of a leading candidate's split."""
    feasibility_time_limit_s: float = 0.25
    """Per CP-SAT solve that only asks whether a non-fitting candidate has any split that fits."""
    max_refine: int = 12
    """Leading candidates that get the CP-SAT split."""
    prune: bool = True
    """False: evaluate every configuration (the reference the pruning is tested against)."""


def _group_dims(g: ComputeGroup) -> dict[str, Any]:
    return {"tp": g.tp, "pp": g.pp, "dp": g.dp, "ep": g.ep, "micro_batch": g.micro_batch,
            "sequence_parallel": g.sequence_parallel, "recompute": g.recompute}


def _members(space: SearchSpace, g: ComputeGroup, schedules: list, syncs: list[SyncOption]):
    return lambda: (make_config(space, g, sched, v, s) for sched, v in schedules for s in syncs)


def _group_name(g: ComputeGroup) -> str:
    parts = [f"tp{g.tp}", f"pp{g.pp}", f"dp{g.dp}"] + ([f"ep{g.ep}"] if g.ep > 1 else []) + [f"mbs{g.micro_batch}"]
    if g.recompute != "none":
        parts.append("ac-" + {"selective": "sel", "full": "full"}[g.recompute])
    if g.sequence_parallel:
        parts.append("sp")
    return "_".join(parts) + "_*"


class _Search:
    def __init__(self, space: SearchSpace, cm: Any, options: SearchOptions,
                 progress: Callable[[str, int, int, SearchStats], None] | None):
        self.space, self.cm, self.opt, self.progress = space, cm, options, progress
        self.cap = float(cm.capacity_bytes)
        self.stats = SearchStats()
        self.records: list[CandidateRecord] = []
        self.best_keys: list[float] = []  # max-heap (negated) of the k best keys
        self.floors: list[tuple[float, ComputeGroup]] = []
        self.min_peak: tuple[float, str] = (float("inf"), "")
        """Smallest peak memory of an even split seen (for the message when nothing fits)."""
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ helpers
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def threshold(self) -> float:
        if not self.opt.prune or len(self.best_keys) < self.opt.top_k:
            return float("inf")
        return -self.best_keys[0]

    def _offer(self, key: float) -> None:
        heapq.heappush(self.best_keys, -key)
        if len(self.best_keys) > self.opt.top_k:
            heapq.heappop(self.best_keys)

    def add(self, rec: CandidateRecord) -> CandidateRecord:
        self.records.append(rec)
        if rec.status == "ok":
            self.stats.feasible += 1
            self._offer(rec.key)
        elif rec.status == "infeasible":
            self.stats.infeasible += rec.count
        else:
            self.stats.pruned += rec.count
        if rec.status != "ok":
            self.stats.reasons[rec.reason.split(":")[0]] += rec.count
        return rec

    def estimate(self, config: ParallelConfig) -> Any:
        self.stats.evaluated += 1
        return self.cm.estimate(config)

    def _problem(self, config: ParallelConfig, pin: Any = None):
        pin = pin if pin is not None else self.cm.partition_inputs(config)
        chunk_rank = [ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule) for c in range(config.num_chunks)]
        return problem_from_inputs(pin, chunk_rank=chunk_rank, micro_batches=config.num_micro_batches,
                                   allow_recompute=config.recompute != "full")

    # ------------------------------------------------------------------ one candidate
    def _with_split(self, config: ParallelConfig, part) -> ParallelConfig:
        rec = part.stage_recompute_layers if any(part.stage_recompute_layers) else ()
        return config.replace(stage_layers=part.stage_layers, stage_recompute_layers=rec)

    def _does_not_fit(self, est: Any) -> str:
        worst = max(est.memory_by_stage, key=lambda s: s.total_bytes)
        return (f"does not fit: {est.peak_memory_bytes / GiB:.1f} GiB on pipeline rank {worst.pp_rank} > "
                f"{self.cap / GiB:.1f} GiB capacity")

    def evaluate(self, config: ParallelConfig, lb_s: float) -> CandidateRecord:
        """Estimate the even split; if it does not fit (the cheap memory half says so, no estimate made), look
        for a split with full-recompute layers that does and estimate that."""
        est = self.cm.memory(config)
        if est.peak_memory_bytes < self.min_peak[0]:
            self.min_peak = (est.peak_memory_bytes, config.name)
        if est.fits:
            est = self.estimate(config)
            return self.add(CandidateRecord(config.name, "ok" if est.fits else "infeasible", config, est,
                                            lower_bound_s=lb_s, reason="" if est.fits else self._does_not_fit(est)))
        problem = self._problem(config)
        part = solve_greedy(problem, quick=True)
        self.stats.partitions_greedy += 1
        if not part.feasible:
            exact = problem.chunks_per_rank == 1 and problem.homogeneous  # the greedy decides feasibility exactly
            if not exact and bounds.rank_key(lb_s, config.compression) < self.threshold():
                part = find_feasible(problem, time_limit_s=self.opt.feasibility_time_limit_s)
                self.stats.partitions_cpsat += 1
                exact = part.status == "infeasible"
            if not part.feasible:
                if not exact:
                    return self.add(CandidateRecord(config.name, "pruned", config, lower_bound_s=lb_s, reason=(
                        f"bound: even split does not fit and lower bound {lb_s:.3f} s cannot beat the top "
                        f"{self.opt.top_k}")))
                return self.add(CandidateRecord(config.name, "infeasible", config, lower_bound_s=lb_s,
                                                reason=f"{self._does_not_fit(est)}; no layer split with full-"
                                                       "recompute layers fits"))
        split = self._with_split(config, part)
        est2 = self.estimate(split)
        if not est2.fits:
            return self.add(CandidateRecord(split.name, "infeasible", split, est2, lower_bound_s=lb_s,
                                            partition=part, reason=self._does_not_fit(est2)))
        return self.add(CandidateRecord(split.name, "ok", split, est2, lower_bound_s=lb_s, partition=part))

    # ------------------------------------------------------------------ one group
    def explore(self, g: ComputeGroup, pins: dict[int, Any], schedules: list, syncs: list[SyncOption]) -> None:
        by_zero: dict[int, list[SyncOption]] = {}
        for s in syncs:
            by_zero.setdefault(s.zero, []).append(s)
        members = [(sched, v, z) for sched, v in schedules for z in by_zero]
        pins = {z: pins[z] if z in pins else self.cm.partition_inputs(
            make_config(self.space, g, *schedules[0], SyncOption(zero=z))) for z in by_zero}
        lbs = bounds.rows_bound(self.space, self.cap, g, pins, members, collapse=False)
        order = sorted(range(len(members)), key=lambda k: (lbs[k], k))
        for k in order:
            sched, v, zero = members[k]
            lb_s = float(lbs[k])
            opts = by_zero[zero]
            if lb_s >= self.threshold() or not math.isfinite(lb_s):
                for s in opts:
                    config = make_config(self.space, g, sched, v, s)
                    if math.isfinite(lb_s):
                        self.add(CandidateRecord(config.name, "pruned", config, lower_bound_s=lb_s, reason=(
                            f"bound: lower bound {lb_s:.3f} s >= the {self.opt.top_k}th best {self.threshold():.3f} s")))
                    else:
                        self.add(CandidateRecord(config.name, "infeasible", config, reason=(
                            "memory floor: the layers do not fit on the pipeline ranks even with full recomputation")))
                continue
            base = next((s for s in opts if s.grad_sync == "allreduce" and s.compression == "none"), None)
            base_rec = self.evaluate(make_config(self.space, g, sched, v, base), lb_s) if base else None
            for s in opts:
                if s is base:
                    continue
                config = make_config(self.space, g, sched, v, s)
                vlb = lb_s
                if base_rec is not None and base_rec.status == "ok":
                    vlb = max(lb_s, bounds.sync_variant_lower_bound_s(base_rec.estimate.step_time_s,
                                                                      base_rec.estimate.breakdown))
                if bounds.rank_key(vlb, s.compression) >= self.threshold():
                    self.add(CandidateRecord(config.name, "pruned", config, lower_bound_s=vlb, reason=(
                        f"bound: sync variant lower bound {vlb:.3f} s cannot beat the {self.opt.top_k}th best")))
                    continue
                self.evaluate(config, lb_s)

    # ------------------------------------------------------------------ refinement
    def refine(self, lb_of: dict[str, float]) -> None:
        """CP-SAT splits for the leading candidates, while one could still change the answer."""
        done = 0
        ranked = self.rank()
        best_key = ranked[0].key
        for rec in ranked:
            if done >= self.opt.max_refine or self.elapsed() > self.opt.time_limit_s:
                break
            lb = lb_of.get(rec.base_name, 0.0)
            if done >= self.opt.top_k and bounds.rank_key(lb, rec.config.compression) >= best_key:
                continue
            base = rec.config.replace(stage_layers=(), stage_recompute_layers=())
            problem = self._problem(base)
            hint = rec.partition if rec.partition is not None and rec.partition.feasible else solve_greedy(problem)
            part = solve_cpsat(problem, time_limit_s=self.opt.partition_time_limit_s, hint=hint)
            self.stats.partitions_cpsat += 1
            self.stats.cpsat_optimal += part.status == "optimal"
            done += 1
            if not part.feasible:
                continue
            split = self._with_split(base, part)
            if split == rec.config or split == base:
                continue
            est = self.estimate(split)
            status = "ok" if est.fits else "infeasible"
            new = self.add(CandidateRecord(split.name, status, split, est, lower_bound_s=lb, partition=part,
                                           reason="" if est.fits else self._does_not_fit(est)))
            if new.status == "ok" and new.key < rec.key:
                best_key = min(best_key, new.key)
                if part.gap != float("inf"):
                    self.stats.max_gap = max(self.stats.max_gap, part.gap)

    def rank(self) -> list[CandidateRecord]:
        best: dict[str, CandidateRecord] = {}
        for r in self.records:
            if r.status == "ok":
                cur = best.get(r.base_name)
                if cur is None or (r.key, ranking_tiebreak(r.config), r.name) < (cur.key, ranking_tiebreak(cur.config), cur.name):
                    best[r.base_name] = r
        return sorted(best.values(), key=lambda r: (r.key, ranking_tiebreak(r.config), r.name))

    # ------------------------------------------------------------------ driver
    def _group_pins(self, g: ComputeGroup, schedules: list, syncs: list[SyncOption]) -> dict[int, Any]:
        """PartitionInputs at the ZeRO stages that bound the group's memory from below: the highest (least
        static bytes) and, when that is 3, the highest below 3 (no ZeRO-3 gather buffers)."""
        zeros = sorted({s.zero for s in syncs})
        keep = {zeros[-1]}
        if zeros[-1] == 3 and len(zeros) > 1:
            keep.add(zeros[-2])
        rep = make_config(self.space, g, *schedules[0], SyncOption())
        return {z: self.cm.partition_inputs(rep.replace(zero_stage=z)) for z in sorted(keep)}

    @staticmethod
    def _same_work(a: Any, b: Any) -> bool:
        keys = ("layer_time_s", "layer_full_recompute_extra_s", "layer_activation_bytes", "layer_static_bytes",
                "embed_time_s", "head_time_s", "rank_other_bytes")
        return all(getattr(a, k) == getattr(b, k) for k in keys)

    def _group_rows(self, groups: list) -> list:
        """(bound, index, group, schedules, syncs, pins) for every group whose layers can fit at all."""
        bounded = []
        plain: dict[tuple, tuple[ComputeGroup, dict]] = {}
        for i, (g, schedules, syncs) in enumerate(groups):
            if self.progress and i % 16 == 0:
                self.progress("bounding", i, len(groups), self.stats)
            if self.elapsed() > BOUNDING_SHARE * self.opt.time_limit_s:  # leave time to explore what is bounded
                rest = groups[i:]
                self.stats.timed_out = True
                self.stats.search_gap = float("inf")  # the groups left have no bound: no gap can be claimed
                for g2, s2, y2 in rest:
                    n2 = len(s2) * len(y2)
                    self.stats.enumerated += n2
                    self.stats.unexplored += n2
                    self.add(CandidateRecord(_group_name(g2), "pruned", None, count=n2, group=_group_dims(g2),
                                             members=_members(self.space, g2, s2, y2),
                                             reason="not explored: time limit (not bounded)"))
                break
            n = len(schedules) * len(syncs)
            self.stats.enumerated += n
            pins = self._group_pins(g, schedules, syncs)
            key = (g.tp, g.pp, g.dp, g.ep, g.micro_batch, g.sequence_parallel)
            if g.recompute == "none":
                plain[key] = (g, pins)
            elif g.recompute == "selective" and key in plain and all(
                    z in plain[key][1] and self._same_work(p, plain[key][1][z]) for z, p in pins.items()):
                # e.g. FlashAttention: selective recompute has nothing left to recompute or to save
                self.add(CandidateRecord(_group_name(g), "pruned", None, count=n, group=_group_dims(g),
                                         members=_members(self.space, g, schedules, syncs), reason=(
                    f"equivalent: same time and memory as {_group_name(plain[key][0])} (recompute none)")))
                continue
            members = [(sched, v, z) for sched, v in schedules for z in pins]
            lb = float(bounds.rows_bound(self.space, self.cap, g, pins, members, collapse=True).min())
            if not math.isfinite(lb):
                floor = min(bounds.memory_floor_bytes(p, g.pp) for p in pins.values())
                self.floors.append((floor, g))
                self.add(CandidateRecord(_group_name(g), "infeasible", None, count=n, group=_group_dims(g),
                                         members=_members(self.space, g, schedules, syncs), reason=(
                    f"memory floor: layers do not fit on {g.pp} pipeline ranks even with full recomputation "
                    f"(static bytes and overheads alone {floor / GiB:.1f} GiB per rank; capacity "
                    f"{self.cap / GiB:.1f} GiB)")))
                continue
            bounded.append((lb, len(bounded), g, schedules, syncs, pins))
        bounded.sort(key=lambda t: (t[0], t[1]))
        return bounded

    def run(self) -> SearchResult:
        groups = []
        for g in compute_groups(self.space):
            schedules = list(schedule_options(self.space, g))
            syncs = list(sync_options(self.space, g))
            if schedules and syncs:
                groups.append((g, schedules, syncs))
        self.stats.groups = len(groups)
        if not groups:
            raise explain_empty(self.space)
        bounded = self._group_rows(groups)
        lb_of: dict[str, float] = {}
        for i, (lb, _, g, schedules, syncs, pins) in enumerate(bounded):
            if self.progress:
                self.progress("exploring", i, len(bounded), self.stats)
            if lb >= self.threshold() or self.elapsed() > self.opt.time_limit_s:
                self._stop(bounded[i:], timed_out=lb < self.threshold())
                break
            self.stats.groups_explored += 1
            before = len(self.records)
            self.explore(g, pins, schedules, syncs)
            for r in self.records[before:]:
                lb_of[r.base_name] = r.lower_bound_s or lb
        if self.progress:
            self.progress("exploring", len(bounded), len(bounded), self.stats)
        if self.rank():
            self.refine(lb_of)
        ranked = self.rank()
        self.stats.wall_s = self.elapsed()
        if not ranked:
            raise self._explain_nothing_fits()
        return SearchResult(ranked=ranked, records=self.records, stats=self.stats)

    def _stop(self, rest: list, timed_out: bool) -> None:
        """Record the groups left: pruned by the bound, or (time limit) unexplored with the gap they leave."""
        if timed_out:
            self.stats.timed_out = True
            self.stats.unexplored += sum(len(s) * len(y) for _, _, _, s, y, _ in rest)
            ranked = self.rank()
            gap = max(0.0, (ranked[0].key - rest[0][0]) / ranked[0].key) if ranked else float("inf")
            self.stats.search_gap = max(self.stats.search_gap, gap)
        for lb, _, g, schedules, syncs, _ in rest:
            self.add(CandidateRecord(_group_name(g), "pruned", None, count=len(schedules) * len(syncs), lower_bound_s=lb,
                                     group=_group_dims(g), members=_members(self.space, g, schedules, syncs), reason=(
                "not explored: time limit" if timed_out else
                f"bound: lower bound {lb:.3f} s >= the {self.opt.top_k}th best {self.threshold():.3f} s")))

    def _explain_nothing_fits(self) -> InfeasibleError:
        m, c = self.space.model, self.space.cluster
        if self.stats.timed_out:
            return InfeasibleError(
                f"no configuration that fits was found within the time limit of {self.opt.time_limit_s:g} s "
                f"({self.stats.unexplored} of {self.stats.enumerated} configurations unexplored); raise --time-limit "
                "or pin dimensions with --fix")
        if self.min_peak[1]:
            peak, name = self.min_peak
            return InfeasibleError(
                f"{m.name} does not fit on {c.world_size} x {c.device.name} at any degree: the smallest peak memory "
                f"is {peak / GiB:.1f} GiB per device ({name}, and no layer split with full-recompute layers fits) "
                f"> {self.cap / GiB:.1f} GiB")
        floor, g = min(self.floors, key=lambda t: t[0])
        return InfeasibleError(
            f"{m.name} does not fit on {c.world_size} x {c.device.name} at any degree: even {_group_name(g)[:-2]} "
            f"with ZeRO and full recomputation needs more than {self.cap / GiB:.1f} GiB per device "
            f"(weights, gradients, optimizer states and fixed overheads alone {floor / GiB:.1f} GiB, plus "
            "activations)")


def search(space: SearchSpace, cost_model: Any, options: SearchOptions | None = None,
           progress: Callable[[str, int, int, SearchStats], None] | None = None) -> SearchResult:
    """Find the fastest configurations that fit. InfeasibleError (one line) when nothing can.

    ``progress(phase, done, total, stats)`` is called as groups are bounded ('bounding') and explored
    ('exploring'), for a progress bar."""
    try:
        return _Search(space, cost_model, options or SearchOptions(), progress).run()
    except ConfigError as exc:  # a generator bug would surface here; never a traceback for users
        raise InfeasibleError(f"search space error: {exc}") from None
