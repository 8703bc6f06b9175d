"""Dynamic expert balancing, planner side: measured tokens per expert -> a new expert placement.

The runtime (runtime/expert_balance.py) counts the tokens routed to each expert of each MoE layer
over some steps and writes an ``ExpertLoad`` record. Here we choose which EP rank holds which
experts so that the busiest rank's load drops, and write the choice into a new plan, applied at
a checkpoint boundary (DCP reload under the new plan, or runtime/expert_balance.py in memory).

Model of the load. One placement serves every MoE layer (``Plan.expert_placement``); each layer's
all-to-all waits for its busiest rank, so the step-time proxy is ``sum over layers of max over
ranks`` of the tokens a rank's experts process. A replicated expert (several holders) splits its
tokens evenly over its holders (what runtime/moe_dispatch.py does).

Algorithm (two steps, both cheap to explain):
1. Replicas (only when memory gives spare slots): an expert whose load alone exceeds the mean rank
   load cannot be balanced without splitting, so while spare slots remain, the expert with the
   largest per-replica load gets another replica if that load still exceeds the mean rank load
   (DeepSeek-V3 "redundant experts", Liu et al. 2024 Sec. 3.4, duplicate high-load experts); then,
   per layer, more copies while one lowers the greedy placement's step proxy by >= 1%.
2. Assignment of the replicas to ranks: greedy longest-processing-time first (Graham 1969, LPT)
   as the warm start, then OR-Tools CP-SAT minimising the step-time proxy under the slot limit,
   with a time limit; the result reports the solver status. Tested against brute force.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from planner.errors import InfeasibleError, SpecError

LOAD_KIND = "hybridplan.expert_load"
LOAD_SCHEMA_VERSION = 1
ADAM_MIXED_PRECISION_BYTES_PER_PARAM = 16
"""Weights 2 + gradients 2 + fp32 master, momentum, variance 12 (Rajbhandari et al. 2020, ZeRO, Sec. 3.1)."""

Placement = list[list[int]]


@dataclass(frozen=True)
class ExpertLoad:
    """Tokens routed to each expert, per MoE layer, summed over all ranks and the counted steps."""

    model: str
    """ModelSpec.name the counts come from (checked against the plan)."""
    num_experts: int
    steps: int
    """Optimizer steps counted."""
    per_layer: dict[int, tuple[int, ...]]
    """Global layer index -> tokens (routing pairs) per expert."""

    def __post_init__(self) -> None:
        if self.num_experts <= 0 or self.steps < 0:
            raise SpecError("expert load: num_experts must be positive and steps non-negative")
        for layer, counts in self.per_layer.items():
            if len(counts) != self.num_experts or any(c < 0 for c in counts):
                raise SpecError(f"expert load: layer {layer} needs {self.num_experts} non-negative counts")

    def total(self) -> list[int]:
        out = [0] * self.num_experts
        for counts in self.per_layer.values():
            out = [a + b for a, b in zip(out, counts)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": LOAD_KIND, "schema_version": LOAD_SCHEMA_VERSION, "model": self.model,
                "num_experts": self.num_experts, "steps": self.steps,
                "per_layer": {str(k): list(v) for k, v in sorted(self.per_layer.items())}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "expert load") -> "ExpertLoad":
        if not isinstance(data, dict) or data.get("kind") != LOAD_KIND:
            raise SpecError(f"{source}: not a hybridplan expert-load record")
        if data.get("schema_version") != LOAD_SCHEMA_VERSION:
            raise SpecError(f"{source}: expert-load schema version {data.get('schema_version')!r} is not supported")
        try:
            per_layer = {int(k): tuple(int(c) for c in v) for k, v in dict(data["per_layer"]).items()}
            return cls(model=str(data["model"]), num_experts=int(data["num_experts"]), steps=int(data["steps"]),
                       per_layer=per_layer)
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"{source}: malformed expert-load record ({exc})") from None

    def save(self, path) -> Any:
        from planner.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "ExpertLoad":
        from planner.io import read_json

        return cls.from_dict(read_json(path, "expert load file"), str(path))


# --- evaluation ------------------------------------------------------------------------------
def holders_of(placement: Sequence[Sequence[int]], num_experts: int) -> list[list[int]]:
    holders: list[list[int]] = [[] for _ in range(num_experts)]
    for r, experts in enumerate(placement):
        for e in experts:
            holders[e].append(r)
    return holders


def rank_loads(placement: Sequence[Sequence[int]], load: Sequence[float]) -> list[float]:
    """Tokens each rank's experts process; a replicated expert's load splits evenly over its holders."""
    holders = holders_of(placement, len(load))
    if any(not h for h in holders):
        raise SpecError("placement leaves an expert without a holder")
    return [sum(load[e] / len(holders[e]) for e in experts) for experts in placement]


def imbalance(placement: Sequence[Sequence[int]], load: Sequence[float]) -> float:
    """max / mean tokens per rank (1.0 is perfect balance)."""
    loads = rank_loads(placement, load)
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def step_proxy(placement: Sequence[Sequence[int]], per_layer: Sequence[Sequence[float]]) -> float:
    """Sum over layers of the busiest rank's tokens: what the all-to-all waits for."""
    return sum(max(rank_loads(placement, layer)) for layer in per_layer)


# --- step 1: replicas ------------------------------------------------------------------------
def replica_counts(load: Sequence[float], ep: int, slots_per_rank: int) -> list[int]:
    """How many copies of each expert (see module docstring, step 1)."""
    num_experts = len(load)
    spare = ep * slots_per_rank - num_experts
    if spare < 0:
        raise InfeasibleError(f"{num_experts} experts do not fit in {ep} ranks x {slots_per_rank} slots")
    counts = [1] * num_experts
    mean_rank = sum(load) / ep
    while spare > 0:
        e = max(range(num_experts), key=lambda i: (load[i] / counts[i], -i))
        if counts[e] >= ep or load[e] / counts[e] <= mean_rank:
            break
        counts[e] += 1
        spare -= 1
    return counts


def improve_replicas(per_layer: Sequence[Sequence[float]], ep: int, slots_per_rank: int, replicas: Sequence[int],
                     *, candidates: int = 8, min_gain: float = 0.01) -> list[int]:
    """Beyond the mean rule, per layer: while spare slots remain, try one more copy of each of the
    ``candidates`` experts with the largest per-copy load in some layer, keep the copy that lowers the
    step proxy of the greedy placement most, and stop when the best gain is under ``min_gain`` (a copy
    costs memory and a gradient all-reduce among the copies, so it must pay for itself)."""
    num_experts = len(replicas)
    total = [sum(layer[e] for layer in per_layer) for e in range(num_experts)]
    replicas = list(replicas)
    best = step_proxy(greedy_placement(total, ep, slots_per_rank, replicas), per_layer)
    while sum(replicas) < ep * slots_per_rank:
        pool = sorted((e for e in range(num_experts) if replicas[e] < ep),
                      key=lambda e: (-max(layer[e] for layer in per_layer) / replicas[e], e))[:candidates]
        trials = []
        for e in pool:
            trial = replicas.copy()
            trial[e] += 1
            try:
                trials.append((step_proxy(greedy_placement(total, ep, slots_per_rank, trial), per_layer), e))
            except InfeasibleError:
                continue
        if not trials:
            break
        proxy, e = min(trials)
        if proxy > best * (1 - min_gain):
            break
        replicas[e] += 1
        best = proxy
    return replicas


# --- step 2: assignment ----------------------------------------------------------------------
def greedy_placement(load: Sequence[float], ep: int, slots_per_rank: int,
                     replicas: Sequence[int] | None = None) -> Placement:
    """LPT: replicas in decreasing load, each to the least-loaded rank with a free slot that does not
    hold the expert yet; the first pass gives every rank one expert (no rank may be empty)."""
    replicas = list(replicas) if replicas is not None else [1] * len(load)
    pieces = sorted(((load[e] / replicas[e], e) for e in range(len(load)) for _ in range(replicas[e])),
                    key=lambda t: (-t[0], t[1]))
    if len(pieces) < ep:
        raise InfeasibleError(f"{len(pieces)} expert copies cannot give each of {ep} EP ranks one")
    placement: Placement = [[] for _ in range(ep)]
    rank_load = [0.0] * ep
    for w, e in pieces:
        empty = [r for r in range(ep) if not placement[r]]
        free = [r for r in range(ep) if len(placement[r]) < slots_per_rank and e not in placement[r]]
        # reserve one piece for each empty rank: once the pieces left equal the empty ranks, fill them
        left = len(pieces) - sum(len(p) for p in placement)
        candidates = [r for r in free if r in empty] if left <= len(empty) else free
        if not candidates:
            raise InfeasibleError("no EP rank has a free slot for an expert copy (slots too few)")
        r = min(candidates, key=lambda i: (rank_load[i], i))
        placement[r].append(e)
        rank_load[r] += w
    return [sorted(p) for p in placement]


MAX_CP_SAT_TERMS = 200_000
"""Above this many (layer, rank, expert) terms the per-layer CP-SAT model takes longer to build than to be
worth it (measured: ~10 s of model building in Python at 1e6 terms on a 2-core machine)."""


def _cp_sat_assign(per_layer: Sequence[Sequence[float]], replicas: Sequence[int], ep: int, slots_per_rank: int,
                   warm: Placement, time_limit_s: float) -> tuple[Placement | None, str]:
    """CP-SAT: x[e, r] = rank r holds a copy of e; each expert's copies on distinct ranks, at most
    ``slots_per_rank`` and at least one expert per rank; minimise the sum over layers of the peak rank
    load (integer-scaled). Hinted with ``warm``; deterministic (fixed seed), time-limited."""
    from ortools.sat.python import cp_model

    num_experts = len(replicas)
    scale = 1e6 / max(1.0, max(max(layer) for layer in per_layer))  # integer loads for CP-SAT
    m = cp_model.CpModel()
    x = [[m.NewBoolVar(f"x{e}_{r}") for r in range(ep)] for e in range(num_experts)]
    for e in range(num_experts):
        m.Add(cp_model.LinearExpr.Sum(x[e]) == replicas[e])
    for r in range(ep):
        held = [x[e][r] for e in range(num_experts)]
        m.Add(cp_model.LinearExpr.Sum(held) <= slots_per_rank)
        m.Add(cp_model.LinearExpr.Sum(held) >= 1)
    bound = int(sum(max(layer) for layer in per_layer) * scale * num_experts) + 1
    peaks = []
    for li, layer in enumerate(per_layer):
        w = [round(layer[e] * scale / replicas[e]) for e in range(num_experts)]
        peak = m.NewIntVar(0, bound, f"peak{li}")
        for r in range(ep):
            m.Add(cp_model.LinearExpr.WeightedSum([x[e][r] for e in range(num_experts)], w) <= peak)
        peaks.append(peak)
    m.Minimize(cp_model.LinearExpr.Sum(peaks))
    held_warm = {(e, r) for r, p in enumerate(warm) for e in p}
    for e in range(num_experts):
        for r in range(ep):
            m.AddHint(x[e][r], (e, r) in held_warm)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = 2
    solver.parameters.random_seed = 0
    code = solver.Solve(m)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, "no solution"
    found = [sorted(e for e in range(num_experts) if solver.Value(x[e][r])) for r in range(ep)]
    return found, "optimal" if code == cp_model.OPTIMAL else "feasible"


@dataclass(frozen=True)
class PlacementResult:
    placement: Placement
    replicas: list[int]
    status: str
    """'optimal' / 'feasible' (CP-SAT, time limit hit) / 'greedy' (solver skipped or found nothing better)."""
    proxy_before: float
    proxy_after: float


def solve_placement(per_layer: Sequence[Sequence[float]], ep: int, slots_per_rank: int, *,
                    time_limit_s: float = 5.0, current: Sequence[Sequence[int]] | None = None) -> PlacementResult:
    """Minimise sum over layers of the busiest rank's load (module docstring); never worse than
    ``current`` (returned unchanged when nothing beats it)."""
    if not per_layer:
        raise SpecError("no MoE layer load to balance")
    num_experts = len(per_layer[0])
    total = [sum(layer[e] for layer in per_layer) for e in range(num_experts)]
    if slots_per_rank * ep < num_experts:
        raise InfeasibleError(f"{num_experts} experts need {math.ceil(num_experts / ep)} slots per rank, "
                              f"got {slots_per_rank}")
    replicas = improve_replicas(per_layer, ep, slots_per_rank, replica_counts(total, ep, slots_per_rank))
    warm = greedy_placement(total, ep, slots_per_rank, replicas)
    before = step_proxy(current, per_layer) if current is not None else float("inf")
    greedy_proxy = step_proxy(warm, per_layer)

    # Large instances (DeepSeek-V3: 58 layers x 64 ranks x 256 experts ~ 1e6 terms) solve on the
    # layer-summed load, one bottleneck; every answer is still judged by the per-layer proxy.
    per_layer_model = len(per_layer) * ep * num_experts <= MAX_CP_SAT_TERMS
    found, code = _cp_sat_assign(per_layer if per_layer_model else [total], replicas, ep, slots_per_rank, warm,
                                 time_limit_s)
    best, status, best_proxy = warm, "greedy", greedy_proxy
    if found is not None:
        found_proxy = step_proxy(found, per_layer)
        if found_proxy <= greedy_proxy + 1e-9:
            best, best_proxy = found, found_proxy
            status = code if per_layer_model else f"{code} on layer-summed load"
    if current is not None and before <= best_proxy + 1e-9:
        best, best_proxy, status = [sorted(p) for p in current], before, status + "; kept current (no better)"
    return PlacementResult(placement=best, replicas=[len(h) for h in holders_of(best, num_experts)],
                           status=status, proxy_before=before, proxy_after=best_proxy)


# --- the plan ----------------------------------------------------------------------------------
def slots_from_memory(plan, bytes_per_param: int = ADAM_MIXED_PRECISION_BYTES_PER_PARAM) -> int:
    """Expert slots per EP rank: the plan's own count, plus as many extra copies as the memory headroom
    (device memory - predicted peak) holds, one copy costing every MoE layer of the fullest pipeline
    rank one expert's weights + gradients + optimizer states. No prediction in the plan: no extra slot."""
    model = plan.model
    base = max((len(p) for p in plan.expert_placement), default=0) or math.ceil(model.num_experts / plan.config.ep)
    peak = int(plan.predicted.get("peak_memory_bytes") or 0)
    if peak <= 0:
        return base
    layers_per_rank: dict[int, int] = {}
    for s in plan.stages:
        n = sum(model.is_moe_layer(i) for i in range(s.first_layer, s.last_layer))
        layers_per_rank[s.pp_rank] = layers_per_rank.get(s.pp_rank, 0) + n
    worst = max(layers_per_rank.values(), default=0)
    if worst == 0:
        return base
    per_slot_bytes = worst * model.expert_params() * bytes_per_param
    extra = max(0, (plan.cluster.device.memory_bytes - peak) // per_slot_bytes)
    return int(min(base + extra, model.num_experts))


def rebalance_plan(plan, load: ExpertLoad, *, slots_per_rank: int | None = None,
                   time_limit_s: float = 5.0):
    """A new plan whose only change is the expert placement chosen from ``load``; returns (plan, result).
    The predicted time and memory are carried over unchanged (replicas add the memory that
    ``slots_from_memory`` checked against the headroom)."""
    from planner.plan import Plan

    model = plan.model
    if not model.is_moe:
        raise SpecError(f"model {model.name} has no experts to rebalance")
    if load.model != model.name or load.num_experts != model.num_experts:
        raise SpecError(f"expert load is for {load.model} with {load.num_experts} experts, the plan's model is "
                        f"{model.name} with {model.num_experts}")
    layers = sorted(layer for layer in load.per_layer if model.is_moe_layer(layer))
    if not layers:
        raise SpecError("expert load names no MoE layer of the plan's model")
    slots = slots_per_rank if slots_per_rank is not None else slots_from_memory(plan)
    result = solve_placement([load.per_layer[layer] for layer in layers], plan.config.ep, slots,
                             time_limit_s=time_limit_s, current=[list(p) for p in plan.expert_placement])
    rank_mem: dict[int, int] = {s.pp_rank: s.predicted_memory_bytes for s in plan.stages}
    total = load.total()
    provenance = dict(plan.provenance)
    provenance["expert_rebalance"] = {
        "steps_counted": load.steps, "slots_per_rank": slots, "solver_status": result.status,
        "imbalance_before": imbalance([list(p) for p in plan.expert_placement], total),
        "imbalance_after": imbalance(result.placement, total),
        "step_proxy_before_tokens": result.proxy_before, "step_proxy_after_tokens": result.proxy_after,
        "previous_placement": [list(p) for p in plan.expert_placement]}
    new = Plan.build(model, plan.cluster, plan.config, predicted=plan.predicted, provenance=provenance,
                     chunk_times_s=[s.predicted_time_s for s in plan.stages],
                     rank_memory_bytes=[rank_mem.get(r, 0) for r in range(plan.config.pp)],
                     expert_placement=result.placement)
    return new, result
