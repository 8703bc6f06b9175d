"""Dynamic load balancing: re-split the layers from measured per-stage compute times.

Model of a measurement (why per-rank speed factors): a pipeline rank that measures slower than predicted
is slower *as a device* (a shared core, thermal throttling, a noisy neighbour, ``--slow-stage``), so the
slowdown stays with the rank when layers move. With ``P_r`` the cost model's predicted forward+backward
time of one micro-batch on pipeline rank r under the running split and ``M_r`` its measured time,
``speed_r = M_r / P_r``, and a candidate split costs ``speed_r x predicted(layers on r)`` on rank r.

Solver: one exact solve of the search's CP-SAT partitioner (planner/search/partition.py) with the speeds
as ``PartitionProblem.rank_speed``: every chunk's time is its rank's speed times its predicted time, the
same model ``objective_with_speeds`` prices in seconds. "Exact" up to the partitioner's integer scale (layer
times to 1e-6 of a step, speeds to 5e-5 relative; partition_problem.py), far below the noise of the
measured speeds. Memory does not depend on speed and is checked as in the search. The new split replaces
the measured one only when it is better under ``objective_with_speeds`` (float seconds), so quantisation
can never trade a split for a worse one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from planner.errors import ConfigError
from planner.parallel_config import ParallelConfig


@dataclass(frozen=True)
class RebalanceResult:
    stage_layers: tuple[int, ...]
    stage_recompute_layers: tuple[int, ...]
    speeds: tuple[float, ...]
    """Measured / predicted compute time per pipeline rank under the original split."""
    objective_before_s: float
    """Makespan proxy (partition_problem objective) of the original split, with the measured speeds."""
    objective_after_s: float
    solver_status: str


def rank_speeds(pin: Any, config: ParallelConfig, layers: Sequence[int],
                measured_chunk_s: Sequence[float]) -> tuple[float, ...]:
    """speed_r = measured / predicted forward+backward of one micro-batch on pipeline rank r."""
    predicted = chunk_times_s(pin, layers, [0] * len(layers))
    pp = config.pp
    pred_r, meas_r = [0.0] * pp, [0.0] * pp
    for c, (p, m) in enumerate(zip(predicted, measured_chunk_s)):
        r = ParallelConfig.chunk_to_pp_rank(c, pp, config.schedule)
        pred_r[r] += p
        meas_r[r] += m
    if any(m <= 0 for m in meas_r):
        raise ConfigError("measured trace has no compute time for some pipeline stage")
    return tuple(m / p if p > 0 else 1.0 for m, p in zip(meas_r, pred_r))


def chunk_times_s(pin: Any, layers: Sequence[int], recompute: Sequence[int]) -> list[float]:
    """Predicted forward+backward seconds of one micro-batch per chunk (PartitionInputs semantics)."""
    lt, extra = list(_get(pin, "layer_time_s")), list(_get(pin, "layer_full_recompute_extra_s"))
    out, start = [], 0
    for c, (n, r) in enumerate(zip(layers, recompute)):
        t = sum(lt[start:start + n]) + sum(extra[start:start + r])
        if c == 0:
            t += float(_get(pin, "embed_time_s"))
        if c == len(layers) - 1:
            t += float(_get(pin, "head_time_s"))
        out.append(t)
        start += n
    return out


def objective_with_speeds(pin: Any, config: ParallelConfig, speeds: Sequence[float], layers: Sequence[int],
                          recompute: Sequence[int]) -> float:
    """The partitioner's makespan proxy (partition_problem.evaluate) with each chunk at its rank's speed."""
    chunk = chunk_times_s(pin, layers, recompute)
    ranks = [ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule) for c in range(len(layers))]
    chunk = [t * speeds[r] for t, r in zip(chunk, ranks)]
    rank_t = [0.0] * config.pp
    for t, r in zip(chunk, ranks):
        rank_t[r] += t
    m = config.num_micro_batches
    if config.virtual_stages == 1:
        return sum(chunk) + (m - 1) * max(rank_t)
    return m * max(rank_t) + (config.pp - 1) * max(chunk)


def _proven_capacity(pin: Any, config: ParallelConfig, layers: tuple[int, ...], recompute: tuple[int, ...]) -> float:
    """The memory limit splits are held to: the cost model's capacity, or, when the split that *ran* exceeds
    it (the memory model is conservative for this device), that split's own peak: the run proved it fits,
    and a new split may not need more."""
    from planner.search.partition_problem import evaluate, problem_from_inputs

    chunk_rank = [ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule) for c in range(len(layers))]
    problem = problem_from_inputs(pin, chunk_rank=chunk_rank, micro_batches=config.num_micro_batches)
    ev = evaluate(problem, layers, recompute)
    return max(float(_get(pin, "capacity_bytes")), float(max(ev.rank_bytes)))


def rebalance_split(pin: Any, config: ParallelConfig, layers: Sequence[int], measured_chunk_s: Sequence[float], *,
                    time_limit_s: float = 5.0) -> RebalanceResult:
    """Best split for the measured speeds (see module docstring); ``layers`` is the split that was measured."""
    from planner.search.partition import solve_cpsat
    from planner.search.partition_problem import problem_from_inputs

    if config.pp == 1:
        raise ConfigError("rebalance needs a pipeline (pp > 1): with one stage there is no split to change")
    layers = tuple(layers)
    recompute = tuple(config.stage_recompute_layers) or (0,) * len(layers)
    speeds = rank_speeds(pin, config, layers, measured_chunk_s)
    chunk_rank = [ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule) for c in range(len(layers))]
    before = objective_with_speeds(pin, config, speeds, layers, recompute)
    pin_capped = {k: _get(pin, k) for k in _PIN_FIELDS}
    pin_capped["capacity_bytes"] = _proven_capacity(pin, config, layers, recompute)
    problem = problem_from_inputs(pin_capped, chunk_rank=chunk_rank, micro_batches=config.num_micro_batches,
                                  allow_recompute=config.recompute != "full", rank_speed=speeds)
    res = solve_cpsat(problem, time_limit_s=time_limit_s)
    best, status = (before, layers, recompute), "unchanged"
    if res.feasible:
        after = objective_with_speeds(pin, config, speeds, res.stage_layers, res.stage_recompute_layers)
        if after < before * (1 - 1e-9):
            best, status = (after, res.stage_layers, res.stage_recompute_layers), res.status
    else:
        status = res.status
    return RebalanceResult(stage_layers=tuple(best[1]), stage_recompute_layers=tuple(best[2]), speeds=speeds,
                           objective_before_s=before, objective_after_s=best[0], solver_status=status)


_PIN_FIELDS = ("layer_time_s", "layer_full_recompute_extra_s", "layer_static_bytes", "layer_activation_bytes",
               "layer_activation_full_recompute_bytes", "embed_time_s", "embed_static_bytes", "embed_activation_bytes",
               "head_time_s", "head_static_bytes", "head_activation_bytes", "inflight_microbatches",
               "rank_other_bytes", "capacity_bytes")
"""The PartitionInputs fields problem_from_inputs reads (copied to override the capacity)."""


def _get(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)
