"""How the chosen plan and the runner-up respond to the inputs a reader is least sure of.

Each point re-prices a fixed configuration with the same cost model on a scaled copy of the inputs
(``dataclasses.replace`` of ClusterSpec / ModelSpec / ParallelConfig); nothing is searched again, so a
reader sees whether the ranking is robust (the lines do not cross) or fragile (they do). Inputs:

* link bandwidth: every link level's ``bandwidth_bytes_per_s`` x k (a slower or faster fabric);
* FLOP/s: every dtype's peak FLOP/s of the device x k (a different GPU generation, or a mis-rated one);
* sequence length: ``seq_len`` x k with the global batch in sequences unchanged (more tokens per step);
* GPU count: ``dp`` x k with the global batch unchanged (strong scaling: fewer micro-batches per replica).

A point where the configuration becomes invalid (a degree no longer divides, too few micro-batches)
is ``None``; a point that prices but no longer fits in memory is kept and flagged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from planner.cluster_spec import ClusterSpec
from planner.errors import PlannerError
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig

FACTORS = (0.5, 1.0, 2.0)
"""Scale factors: a halving and a doubling of each input brackets most real uncertainty."""


@dataclass(frozen=True)
class Point:
    step_time_s: float
    fits: bool


@dataclass(frozen=True)
class Dimension:
    """One input swept over FACTORS: per plan name, one Point (or None where invalid) per factor."""

    title: str
    factors: tuple[float, ...]
    points: dict[str, tuple[Point | None, ...]]


Scaler = Callable[[ModelSpec, ClusterSpec, ParallelConfig, float], tuple[ModelSpec, ClusterSpec, ParallelConfig]]


def _links(m: ModelSpec, c: ClusterSpec, cfg: ParallelConfig, k: float):
    links = tuple(dataclasses.replace(l, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * k) for l in c.links)
    return m, dataclasses.replace(c, links=links), cfg


def _flops(m: ModelSpec, c: ClusterSpec, cfg: ParallelConfig, k: float):
    dev = dataclasses.replace(c.device, peak_flops={d: f * k for d, f in c.device.peak_flops.items()})
    return m, dataclasses.replace(c, device=dev), cfg


def _seq(m: ModelSpec, c: ClusterSpec, cfg: ParallelConfig, k: float):
    s = max(1, int(round(cfg.seq_len * k)))
    return m.replace(seq_len=s), c, cfg.replace(seq_len=s)


def _gpus(m: ModelSpec, c: ClusterSpec, cfg: ParallelConfig, k: float):
    dp = cfg.dp * k
    if dp != int(dp) or dp < 1:
        raise PlannerError(f"dp {cfg.dp} x {k} is not a whole number")
    new_cfg = cfg.replace(dp=int(dp))
    return m, c.with_world(gpus=new_cfg.world_size), new_cfg


DIMENSIONS: tuple[tuple[str, Scaler], ...] = (
    ("link bandwidth", _links), ("device FLOP/s", _flops), ("sequence length", _seq), ("GPU count (dp)", _gpus))


def sweep(model: ModelSpec, cluster: ClusterSpec, configs: Sequence[tuple[str, ParallelConfig]],
          make_cost_model: Callable[[ModelSpec, ClusterSpec], Any],
          factors: Sequence[float] = FACTORS) -> list[Dimension]:
    """Re-estimate each named configuration at every factor of every dimension.

    ``make_cost_model(model, cluster)`` returns an object with ``estimate(config)`` (planner.cost.CostModel
    with the run's profile bound); one cost model is built per scaled input and shared by the plans.
    """
    out = []
    for title, scale in DIMENSIONS:
        pts: dict[str, list[Point | None]] = {name: [] for name, _ in configs}
        for k in factors:
            models: dict[int, Any] = {}
            for name, cfg in configs:
                pts[name].append(_price(scale, model, cluster, cfg, k, make_cost_model, models))
        out.append(Dimension(title, tuple(factors), {n: tuple(v) for n, v in pts.items()}))
    return out


def _price(scale: Scaler, model: ModelSpec, cluster: ClusterSpec, cfg: ParallelConfig, k: float,
           make_cost_model: Callable[[ModelSpec, ClusterSpec], Any], cache: dict[int, Any]) -> Point | None:
    try:
        m2, c2, cfg2 = scale(model, cluster, cfg, k)
        cfg2.validate_for(m2, c2.world_size)
        key = hash((m2, c2.name, c2.world_size, tuple(l.bandwidth_bytes_per_s for l in c2.links),
                    tuple(sorted(c2.device.peak_flops.items()))))
        if key not in cache:
            cache[key] = make_cost_model(m2, c2)
        est = cache[key].estimate(cfg2)
    except PlannerError:
        return None
    return Point(float(est.step_time_s), bool(est.fits))
