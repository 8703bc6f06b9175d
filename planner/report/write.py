"""write_report: report.html, predicted_trace.json and the runtime exports, into one (staged) directory.

One call from the search's output writer (``write_search_report``) or from any command holding a plan
and its estimates (``write_report``). Writes go through planner.io atomic helpers; the caller's staged
directory makes the whole set appear at once.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from planner import trace_schema
from planner.io import atomic_write_text
from planner.plan import Plan
from planner.report import compare, plots, sections
from planner.report import html as h
from planner.report.context import Rejected, ReportContext
from planner.report.exports import export_files, megatron_export, torchtitan_export
from planner.report.sensitivity import sweep
from planner.report.timeline import step_timeline
from planner.report.trace import predicted_trace

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TRACE_FILE = "predicted_trace.json"


def write_report(out_dir: str | Path, *, plan: Plan, ranked: Sequence[Any], cost_model: Any,
                 rejected: Sequence[Rejected] = (), command: str = "", launch_command: str = "",
                 tokens: float = 0.0, profile_desc: str = "", search_stats: dict[str, Any] | None = None,
                 pareto_points: Sequence[tuple[str, float, float, bool]] = (), top_n: int = 10,
                 measured_trace: str | Path | None = None) -> dict[str, Path]:
    """Write the report files for ``plan`` into ``out_dir``; returns file name -> path.

    ``ranked``: planner.cost Estimates of the feasible candidates, best first, ranked[0] pricing plan.config.
    ``cost_model``: the CostModel that priced them (sensitivity re-estimates and the timeline use it).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if not ranked:
        ranked = [cost_model.estimate(plan.config)]
    ctx = ReportContext(plan=plan, ranked=tuple(ranked), rejected=tuple(rejected), command=command,
                        launch_command=launch_command, tokens=tokens,
                        profile_desc=_profile_text(profile_desc, getattr(cost_model, "profile", None)),
                        search_stats=dict(search_stats or {}), pareto_points=tuple(pareto_points), top_n=top_n)
    e = ctx.chosen
    st = step_timeline(cost_model, plan.config, e.breakdown)
    trace = predicted_trace(st, plan_name=plan.config.name, step_time_s=e.step_time_s)
    trace_schema.validate(trace, TRACE_FILE)  # compact JSON: a trace is read by tools, not people
    written = {TRACE_FILE: atomic_write_text(out / TRACE_FILE, json.dumps(trace, separators=(",", ":")))}
    for name, text in export_files(plan).items():
        written[name] = atomic_write_text(out / name, text)
    parts = [("answer", "Answer", sections.answer(ctx, _exports_html(plan))), ("why", "Why", sections.why(ctx)),
             ("candidates", "Candidates", sections.candidates(ctx)),
             ("plots", "Plots", _plots_section(ctx, st, cost_model)),
             ("partition", "Partition", sections.partition(ctx, _partition_png(ctx))),
             ("inputs", "Inputs", sections.inputs(ctx, sections.versions()))]
    if measured_trace is not None:
        measured = trace_schema.load(measured_trace)
        parts.append(("compare", "Compare", compare.compare_section(trace, measured, plan.config.degrees,
                                                                     str(measured_trace))))
    title = f"hybridplan: {plan.model.name} on {plan.cluster.world_size} x {plan.cluster.device.name}"
    subtitle = f"plan {plan.config.name}; report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    written[REPORT_FILE] = atomic_write_text(out / REPORT_FILE, h.page(title, subtitle, parts))
    log.info("report written to %s in %.2f s", out, time.perf_counter() - t0)
    return written


def _plots_section(ctx: ReportContext, st, cost_model: Any) -> h.Raw:
    e, r = ctx.chosen, ctx.runner_up
    top = ctx.ranked[:ctx.top_n]
    figs = [(plots.breakdown_figure([(x.config.name, x.breakdown) for x in top]), "step-time breakdown per candidate",
             "Where each ranked candidate's predicted step time goes (seconds per step, best on top).")]
    figs.append((plots.memory_figure([s.to_dict() for s in e.memory_by_stage], e.capacity_bytes),
                 "memory per pipeline rank", "Peak memory of each pipeline rank of the chosen plan by kind, against "
                 "the usable device capacity (device memory minus the cost model's safety margin)."))
    figs.append((plots.gantt_figure(st.gantt_rows(), st.pipeline_s, st.bubble_fraction(), ctx.config.name),
                 "pipeline timeline of the chosen plan",
                 f"The chosen plan's schedule ({ctx.config.schedule}, {ctx.config.num_micro_batches} micro-batches): "
                 "the "
                 "action lists the runtime executes, with the cost model's per-chunk durations, through its event "
                 "simulator over every micro-batch. Numbers are micro-batches; lighter boxes are a rank's later "
                 "model chunks."))
    figs.append((plots.pareto_figure(ctx.points(), e.config.name, r.config.name if r else None, e.capacity_bytes),
                 "throughput against peak memory", "Every priced candidate: tokens/s/GPU against peak memory per "
                 "device; the frontier holds the candidates nothing beats on both."))
    named = [(e.config.name, e.config)] + ([(r.config.name, r.config)] if r else [])
    model, cluster, profile = ctx.plan.model, ctx.plan.cluster, getattr(cost_model, "profile", None)
    options = getattr(cost_model, "options", None)
    dims = sweep(model, cluster, named, lambda m, c: type(cost_model)(m, c, profile, options))
    panels = [(d.title, d.factors, {n: [(p.step_time_s, p.fits) if p else None for p in pts]
                                     for n, pts in d.points.items()}) for d in dims]
    measured = " With a profile, measured block and collective times do not scale with the spec-sheet " \
        "FLOP/s and bandwidth: those lines move only where the profile does not cover." if profile is not None else ""
    figs.append((plots.sensitivity_figure(panels), "sensitivity of the chosen plan and the runner-up",
                 "Predicted step time when one input is halved or doubled (the configuration kept fixed); "
                 "lines that cross mean the ranking depends on that input; hollow points no longer fit." + measured))
    return sections.plots(figs, [h.heading("Sensitivity (predicted step time)"), sections.sensitivity_table(dims)])


def _profile_text(desc: str, profile: Any) -> str:
    """The profile's path (as given) and, when the cost model holds one, where it was measured."""
    header = getattr(profile, "header", None)
    if header is None:
        return desc
    where = (f"measured on {header.device} ({header.backend}, {header.world_size} ranks on {header.nodes} node(s), "
             f"torch {header.torch_version or '?'}, {header.date or 'undated'})")
    return f"{desc}: {where}" if desc else where


def _partition_png(ctx: ReportContext) -> bytes:
    e = ctx.chosen
    return plots.partition_figure([(s.chunk, s.pp_rank, s.last_layer - s.first_layer,
                                    e.chunk_times_s[s.chunk] if s.chunk < len(e.chunk_times_s) else 0.0)
                                   for s in ctx.plan.stages])


def _exports_html(plan: Plan) -> h.Raw:
    """torchtitan and Megatron-LM arguments, folded under the launch line of section 1."""
    parts: list[str] = [h.para("The same plan for existing runtimes; the files beside this report hold them "
                               "(torchtitan_args.sh, torchtitan.toml, megatron_args.sh).")]
    for ex in (torchtitan_export(plan), megatron_export(plan)):
        parts.append(h.heading(ex.runtime, 4))
        parts.append(h.pre(" \\\n  ".join(ex.args)))
        parts += [h.para("note: " + n) for n in ex.notes]
        if ex.config_text:
            parts.append(h.pre(ex.config_text))
    return h.details("torchtitan and Megatron-LM arguments", parts)


SEARCH_STATS_SHOWN = ("enumerated", "evaluated", "feasible", "infeasible", "pruned", "partitions_cpsat",
                      "cpsat_optimal", "max_gap", "timed_out", "wall_s")


def write_search_report(out_dir: str | Path, result: Any, plan: Plan, cost_model: Any, *, command: str = "",
                        launch_command: str = "", tokens: float = 0.0, profile_desc: str = "",
                        measured_trace: str | Path | None = None, top_n: int = 10) -> dict[str, Path]:
    """The report of a search (planner.search.records.SearchResult): the hook for planner/search/outputs.py.

    Rejected rows are every record whose status is not 'ok' (infeasible with its reason, pruned with the
    bound that pruned it); every priced record is a point of the Pareto plot. ``cost_model`` None: a
    CostModel without profile (what ``search`` builds when no ``--profile`` is given).
    """
    if cost_model is None:
        from planner.cost import CostModel

        cost_model = CostModel(plan.model, plan.cluster)
    ranked = [rec.estimate for rec in result.ranked if rec.estimate is not None]
    rejected = [Rejected(rec.name + (f" (x{rec.count})" if rec.count > 1 else ""), rec.reason or rec.status,
                         rec.step_time_s, "pruned" if rec.status == "pruned" else "infeasible", rec.count)
                for rec in result.records if rec.status != "ok"]
    points = [(rec.name, rec.estimate.tokens_per_s_per_gpu, rec.estimate.peak_memory_bytes, rec.estimate.fits)
              for rec in result.records if rec.estimate is not None]
    stats = result.stats.to_dict()
    shown = {k: (f"{stats[k]:.3g}" if isinstance(stats[k], float) else stats[k]) for k in SEARCH_STATS_SHOWN
             if k in stats}
    return write_report(out_dir, plan=plan, ranked=ranked, cost_model=cost_model, rejected=rejected, command=command,
                        launch_command=launch_command, tokens=tokens, profile_desc=profile_desc,
                        search_stats=shown, pareto_points=points, top_n=top_n, measured_trace=measured_trace)
