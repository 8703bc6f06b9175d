"""`python -m planner compare --plan plan.json --measured trace.json`: per-stage predicted vs measured.

The predicted side is the cost model's own timeline of the plan (planner/report/trace.py, from the same
schedule simulation that priced it; ``--profile`` when the plan was made with one), or a predicted trace
file (``--predicted``, e.g. ``reports/<run>/predicted_trace.json``). Both traces are cut into compute,
exposed communication, bubble and optimizer per pipeline stage by planner/measured.py, the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from planner.errors import SpecError
from planner.measured import stage_times, step_time_s
from planner.plan import Plan

TERMS = ("compute_s", "comm_s", "bubble_s", "optimizer_s", "step_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="plan.json the run executed")
    p.add_argument("--measured", required=True, help="the runtime's measured trace (Chrome trace JSON)")
    p.add_argument("--predicted", help="a predicted trace file (default: built from the plan by the cost model)")
    p.add_argument("--profile", help="profile to price the plan with (default: the one recorded in the plan)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", help="directory to write compare.json and compare.txt into")


def predicted_trace_for(plan: Plan, profile: Any = None) -> dict[str, Any]:
    """The cost model's predicted timeline of ``plan`` as a trace object in the shared schema."""
    from planner.cost import CostModel
    from planner.report.timeline import step_timeline
    from planner.report.trace import predicted_trace

    cm = CostModel(plan.model, plan.cluster, profile=profile)
    est = cm.estimate(plan.config)
    st = step_timeline(cm, plan.config, est.breakdown)
    return predicted_trace(st, plan_name=plan.config.name, step_time_s=est.step_time_s)


def profile_for(plan: Plan, path: str | None) -> Any:
    """The profile to price ``plan`` with: ``--profile``, else the one the plan was made with
    (``provenance.profile``) when that file is still there, else none (spec-sheet numbers)."""
    from planner.profile import Profile

    if path:
        return Profile.load(path)
    recorded = plan.provenance.get("profile")
    if isinstance(recorded, str) and recorded:
        if Path(recorded).is_file():
            return Profile.load(recorded)
        print(f"warning: the plan was priced with profile {recorded}, which is gone; pricing from the spec "
              "sheet (pass --profile)", file=sys.stderr)
    return None


def comparison(plan: Plan, predicted: dict[str, Any], measured: dict[str, Any], measured_name: str) -> dict[str, Any]:
    d = plan.config.degrees
    pred = stage_times(predicted, d, "predicted trace")
    meas = stage_times(measured, d, measured_name)
    stages = []
    for p, m in zip(pred, meas):
        row: dict[str, Any] = {"pp_rank": p.pp_rank, "layers": _layers_of(plan, p.pp_rank)}
        for t in TERMS:
            row[t] = {"predicted": getattr(p, t), "measured": getattr(m, t)}
        stages.append(row)
    ps, ms = step_time_s(pred), step_time_s(meas)
    return {"plan": plan.config.name, "measured_trace": measured_name, "steps_measured": min(m.steps for m in meas),
            "step_time_s": {"predicted": ps, "measured": ms, "error": (ps - ms) / ms if ms > 0 else None},
            "stages": stages}


def _layers_of(plan: Plan, pp_rank: int) -> int:
    return sum(s.last_layer - s.first_layer for s in plan.stages if s.pp_rank == pp_rank)


def format_table(result: dict[str, Any]) -> str:
    def ms(x: float) -> str:
        return f"{x * 1e3:9.2f}"

    lines = [f"plan {result['plan']}: predicted vs measured per pipeline stage, ms per step "
             f"(median of {result['steps_measured']} measured steps)",
             f"{'stage':>5} {'layers':>6} " + " ".join(f"{t[:-2] + ' pred':>11}{'meas':>9}" for t in TERMS)]
    for row in result["stages"]:
        cells = " ".join(f"{ms(row[t]['predicted']):>11}{ms(row[t]['measured'])}" for t in TERMS)
        lines.append(f"{row['pp_rank']:>5} {row['layers']:>6} {cells}")
    st = result["step_time_s"]
    err = f"{st['error']:+.1%}" if st["error"] is not None else "-"
    lines.append(f"step time: predicted {st['predicted'] * 1e3:.2f} ms, measured {st['measured'] * 1e3:.2f} ms, "
                 f"error {err}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from planner.io import atomic_write_json, atomic_write_text
    from planner.trace_schema import load as load_trace

    plan = Plan.load(args.plan)
    measured = load_trace(args.measured)
    if args.predicted:
        predicted = load_trace(args.predicted)
    else:
        predicted = predicted_trace_for(plan, profile_for(plan, args.profile))
    result = comparison(plan, predicted, measured, str(args.measured))
    table = format_table(result)
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out {out} exists and is not a directory")
        atomic_write_json(out / "compare.json", result)
        atomic_write_text(out / "compare.txt", table + "\n")
    print(json.dumps(result, indent=2) if args.json else table)
    return 0
