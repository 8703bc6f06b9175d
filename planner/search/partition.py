"""The inner CP-SAT model (OR-Tools): uneven layer split + full-recompute layers per chunk.

Problem and objective: ``partition_problem.py``. Two encodings, chosen by the model's structure:

* repeated blocks (every layer identical, all dense models): the decision is a count per chunk,
  ``n_c`` layers of which ``r_c`` recompute; time and memory are linear in (n_c, r_c). The model has
  2C + 1 integer variables whatever the layer count, which is what keeps a 126-layer, 16-stage problem
  at a few milliseconds.
* mixed layers (MoE with dense first layers, interleaved MoE): chunk boundaries ``b_c`` index prefix-sum
  tables through element constraints (``AddElement``); the recomputed layers are the first ``r_c`` of
  the chunk. Tables have L + 1 entries, so the model still grows with the chunk count, not the layers.

Per-rank speeds (``PartitionProblem.rank_speed``, dynamic load balancing): each chunk's time expression is
multiplied by its rank's integer weight (``speed_weights``); the chunk-to-rank map is fixed, so the model
stays linear, and exactly what ``evaluate`` computes.

Warm start: the greedy split (``partition_greedy``) as a solution hint. Time limit per solve. The result
carries CP-SAT's proven bound; ``PartitionResult.gap`` is the relative optimality gap. The
brute-force reference (``partition_brute``) checks this model on small instances.
"""

from __future__ import annotations

import math
import time

from ortools.sat.python import cp_model

from planner.search.partition_greedy import solve_greedy
from planner.search.partition_problem import PartitionProblem, evaluate
from planner.search.partition_result import PartitionResult

DEFAULT_TIME_LIMIT_S = 2.0
PHASE2_SHARE = 0.25
"""Most of a solve's time limit the tie-break phase may use: it only makes the split neater."""


def _build(p: PartitionProblem) -> tuple:
    """Return (model, n vars, r vars, boundary vars or None, primary objective, secondary objective)."""
    m = cp_model.CpModel()
    L, C = p.num_layers, p.num_chunks
    n = [m.NewIntVar(1, L - C + 1, f"n{c}") for c in range(C)]
    r = [m.NewIntVar(0, (L - C + 1) if p.allow_recompute else 0, f"r{c}") for c in range(C)]
    m.Add(sum(n) == L)
    for c in range(C):
        m.Add(r[c] <= n[c])
    times, mems = [], []
    bounds = None
    if p.homogeneous:
        t, x, s, a, af = (p.layer_time[0], p.layer_extra[0], p.layer_static[0], p.layer_act[0], p.layer_act_full[0])
        for c in range(C):
            times.append(n[c] * t + r[c] * x)
            mems.append(n[c] * s + p.inflight[c] * (n[c] * a + r[c] * (af - a)))
    else:
        pre = {k: p.prefix(k) for k in ("layer_time", "layer_extra", "layer_static", "layer_act", "layer_act_full")}
        bounds = [m.NewConstant(0)] + [m.NewIntVar(1, L - 1, f"b{c}") for c in range(1, C)] + [m.NewConstant(L)]
        for c in range(C):
            m.Add(bounds[c + 1] == bounds[c] + n[c])

        def at(table: list[int], index, name: str):
            v = m.NewIntVar(min(table), max(table), name)
            m.AddElement(index, table, v)
            return v

        el = {k: [at(pre[k], bounds[c], f"{k}_b{c}") for c in range(C + 1)]
              for k in ("layer_time", "layer_extra", "layer_static", "layer_act", "layer_act_full")}
        for c in range(C):
            mid = m.NewIntVar(0, L, f"mid{c}")
            m.Add(mid == bounds[c] + r[c])
            xm, am, afm = (at(pre[k], mid, f"{k}_m{c}") for k in ("layer_extra", "layer_act", "layer_act_full"))
            times.append(el["layer_time"][c + 1] - el["layer_time"][c] + xm - el["layer_extra"][c])
            mems.append(el["layer_static"][c + 1] - el["layer_static"][c]
                        + p.inflight[c] * (el["layer_act"][c + 1] - am + afm - el["layer_act_full"][c]))
    times[0] += p.embed_time
    times[-1] += p.head_time
    mems[0] += p.embed_static + p.inflight[0] * p.embed_act
    mems[-1] += p.head_static + p.inflight[-1] * p.head_act
    total = sum(p.layer_time) + sum(p.layer_extra) + p.embed_time + p.head_time
    if p.speed_weights is not None:  # a rank's speed multiplies everything it holds (constants: still linear)
        times = [t * p.speed_weights[p.chunk_rank[c]] for c, t in enumerate(times)]
        total *= max(p.speed_weights)
    bottleneck = m.NewIntVar(0, max(1, total), "bottleneck")
    for rank, chunks in enumerate(p.ranks_chunks()):
        m.Add(sum(mems[c] for c in chunks) + p.rank_other_bytes[rank] <= p.capacity_bytes)
        m.Add(bottleneck >= sum(times[c] for c in chunks))
    if p.chunks_per_rank == 1:
        primary = sum(times) + (p.micro_batches - 1) * bottleneck
    else:
        longest = m.NewIntVar(0, max(1, total), "longest_chunk")
        for t in times:
            m.Add(longest >= t)
        primary = p.micro_batches * bottleneck + (p.num_ranks - 1) * longest
    deviation = []
    for c, e in enumerate(p.even_layers):
        d = m.NewIntVar(0, L, f"dev{c}")
        m.AddAbsEquality(d, n[c] - e)
        deviation.append(d)
    return m, n, r, bounds, primary, sum(deviation) + sum(r)


def _hint(model: cp_model.CpModel, p: PartitionProblem, n: list, r: list, bounds: list | None,
          layers: tuple[int, ...], rec: tuple[int, ...]) -> None:
    model.ClearHints()
    start = 0
    for c in range(p.num_chunks):
        model.AddHint(n[c], layers[c])
        model.AddHint(r[c], rec[c])
        if bounds is not None and 0 < c:
            model.AddHint(bounds[c], start)
        start += layers[c]


def _solver(time_limit_s: float, workers: int, seed: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, float(time_limit_s))
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    return solver


def find_feasible(p: PartitionProblem, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S, workers: int = 1,
                  seed: int = 0) -> PartitionResult:
    """Any split that fits, or a proof that none does (no objective: a satisfaction problem, far quicker than
    the optimisation; the solver optimises the leading candidates' splits later)."""
    t0 = time.perf_counter()
    model, n, r, _, _, _ = _build(p)
    solver = _solver(time_limit_s, workers, seed)
    status = solver.Solve(model)
    wall = time.perf_counter() - t0
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        layers = tuple(solver.Value(v) for v in n)
        rec = tuple(solver.Value(v) for v in r)
        return PartitionResult.from_evaluation(p, layers, rec, evaluate(p, layers, rec), solver="cp-sat",
                                               status="feasible", wall_s=wall)
    even = p.even_layers
    ev = evaluate(p, even, (0,) * p.num_chunks)
    return PartitionResult.from_evaluation(p, even, (0,) * p.num_chunks, ev, solver="cp-sat",
                                           status="infeasible" if status == cp_model.INFEASIBLE else "unknown",
                                           wall_s=wall)


def solve_cpsat(p: PartitionProblem, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                hint: PartitionResult | None = None, workers: int = 1, seed: int = 0) -> PartitionResult:
    """Best split under the per-rank memory limits, within ``time_limit_s`` (deterministic for a fixed seed).

    Two phases: minimise the makespan (its bound gives the reported gap), then, with the makespan held at
    the best found, minimise the tie-break (distance from the even split + recomputed layers).
    """
    t0 = time.perf_counter()
    if hint is None:
        hint = solve_greedy(p)
    model, n, r, bounds, primary, secondary = _build(p)
    if hint.feasible:
        _hint(model, p, n, r, bounds, hint.stage_layers, hint.stage_recompute_layers)
    model.Minimize(primary)
    solver = _solver(time_limit_s, workers, seed)
    status = solver.Solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        best = int(round(solver.ObjectiveValue()))
        bound = int(math.ceil(solver.BestObjectiveBound() - 1e-6))
        name = "optimal" if status == cp_model.OPTIMAL else "feasible"
        layers = tuple(solver.Value(v) for v in n)
        rec = tuple(solver.Value(v) for v in r)
        left = min(time_limit_s - (time.perf_counter() - t0), PHASE2_SHARE * time_limit_s)
        if left > 0.01:  # phase 2: same makespan, neatest split
            model.Add(primary <= best)
            _hint(model, p, n, r, bounds, layers, rec)
            model.Minimize(secondary)
            solver2 = _solver(left, workers, seed)
            if solver2.Solve(model) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                layers = tuple(solver2.Value(v) for v in n)
                rec = tuple(solver2.Value(v) for v in r)
        ev = evaluate(p, layers, rec)
        wall = time.perf_counter() - t0
        if hint.feasible and (hint.objective, hint.secondary) < ev.key:  # the hint beat what CP-SAT kept
            ev = evaluate(p, hint.stage_layers, hint.stage_recompute_layers)
            layers, rec = hint.stage_layers, hint.stage_recompute_layers
        return PartitionResult.from_evaluation(p, layers, rec, ev, solver="cp-sat", status=name,
                                               bound=min(bound, ev.objective), wall_s=wall)
    wall = time.perf_counter() - t0
    ev = evaluate(p, hint.stage_layers, hint.stage_recompute_layers)
    if status == cp_model.INFEASIBLE:
        return PartitionResult.from_evaluation(p, hint.stage_layers, hint.stage_recompute_layers, ev,
                                               solver="cp-sat", status="infeasible", wall_s=wall)
    # UNKNOWN (time limit before any solution) / MODEL_INVALID: keep the warm start, no bound proven
    return PartitionResult.from_evaluation(p, hint.stage_layers, hint.stage_recompute_layers, ev, solver="cp-sat",
                                           status="feasible" if ev.feasible else "unknown", wall_s=wall)
