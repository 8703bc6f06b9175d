"""`python -m planner rebalance --plan plan.json --measured trace.json --out new_plan.json`.

Reads the measured per-stage compute of a run (planner/measured.py), turns it into per-rank speeds against
the cost model's prediction and re-solves the layer split with the search's CP-SAT partitioner
(planner/rebalance.py). The new plan keeps every other decision; the runtime resumes from its DCP
checkpoint under it (parameter names are global, so a checkpoint does not depend on the split).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from planner.commands.common import positive_float
from planner.errors import SpecError
from planner.measured import stage_times
from planner.plan import Plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="plan.json the run executed")
    p.add_argument("--measured", required=True, help="the runtime's measured trace of that run")
    p.add_argument("--out", required=True, help="where to write the rebalanced plan.json")
    p.add_argument("--profile", help="profile to price the plan with (default: the one recorded in the plan)")
    p.add_argument("--time-limit", type=positive_float, default=5.0, help="CP-SAT seconds in all")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def measured_chunk_times_s(plan: Plan, trace: dict[str, Any], source: str) -> list[float]:
    """One micro-batch's measured forward + backward per model chunk (chunk order)."""
    stages = stage_times(trace, plan.config.degrees, source)
    out = []
    for s in plan.stages:
        got = stages[s.pp_rank].chunk_compute_s.get(s.chunk)
        if got is None:
            raise SpecError(f"{source}: no forward/backward slices of model chunk {s.chunk} (pipeline rank "
                            f"{s.pp_rank}); was it recorded with this plan?")
        out.append(got)
    return out


def rebalanced_plan(plan: Plan, trace: dict[str, Any], source: str, profile: Any = None,
                    time_limit_s: float = 5.0) -> tuple[Plan, Any]:
    from planner.cost import CostModel
    from planner.rebalance import rebalance_split

    cm = CostModel(plan.model, plan.cluster, profile=profile)
    cfg = plan.config
    pin = cm.partition_inputs(cfg)
    measured = measured_chunk_times_s(plan, trace, source)
    res = rebalance_split(pin, cfg, cfg.layers_per_chunk(plan.model), measured, time_limit_s=time_limit_s)
    new_cfg = cfg.replace(stage_layers=tuple(res.stage_layers),
                          stage_recompute_layers=tuple(res.stage_recompute_layers) if any(res.stage_recompute_layers)
                          else ())
    est = cm.estimate(new_cfg)
    provenance = dict(plan.provenance)
    provenance["rebalance"] = {
        "from_plan": cfg.name, "from_digest": plan.digest, "measured_trace": source,
        "previous_stage_layers": list(cfg.layers_per_chunk(plan.model)),
        "measured_chunk_s": measured, "rank_speeds": list(res.speeds),
        "objective_before_s": res.objective_before_s, "objective_after_s": res.objective_after_s,
        "solver": "planner.search.partition.solve_cpsat", "solver_status": res.solver_status}
    rank_mem = [int(s.total_bytes) for s in est.memory_by_stage]
    new = Plan.build(plan.model, plan.cluster, new_cfg, predicted=est.to_dict(), provenance=provenance,
                     chunk_times_s=list(est.chunk_times_s), rank_memory_bytes=rank_mem,
                     expert_placement=[list(p) for p in plan.expert_placement])
    return new, res


def run(args: argparse.Namespace) -> int:
    from planner.trace_schema import load as load_trace

    plan = Plan.load(args.plan)
    trace = load_trace(args.measured)
    from planner.commands.compare import profile_for

    profile = profile_for(plan, args.profile)
    new, res = rebalanced_plan(plan, trace, str(args.measured), profile, args.time_limit)
    new.save(args.out)
    summary = {"plan": new.config.name, "out": str(args.out),
               "stage_layers_before": list(plan.config.layers_per_chunk(plan.model)),
               "stage_layers_after": list(new.config.layers_per_chunk(new.model)),
               "rank_speeds": list(res.speeds), "objective_before_s": res.objective_before_s,
               "objective_after_s": res.objective_after_s, "solver_status": res.solver_status}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        speeds = ", ".join(f"{s:.2f}" for s in res.speeds)
        gain = 1 - res.objective_after_s / res.objective_before_s if res.objective_before_s > 0 else 0.0
        print(f"measured speed per pipeline rank (measured / predicted): {speeds}")
        print(f"layers per stage {summary['stage_layers_before']} -> {summary['stage_layers_after']} "
              f"({res.solver_status}); predicted pipeline time {gain:.1%} lower; wrote {args.out}")
    return 0
