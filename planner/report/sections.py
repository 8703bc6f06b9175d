"""The report's sections, in reading order: answer, why, candidates, plots, partition, inputs (+ compare).

Each builder takes the ReportContext (and, for figures, already-drawn PNGs) and returns escaped HTML.
The words for each step-time term come from planner.cost (``BREAKDOWN_WORDS``), so the report and the
``estimate`` command name things the same way.
"""

from __future__ import annotations

import math
import platform
import sys
from typing import Any, Sequence

from planner import __version__
from planner.cost.types import BREAKDOWN_WORDS
from planner.parallel_config import ParallelConfig
from planner.report import html as h
from planner.report.context import ReportContext, reason_groups, training_time
from planner.report.sensitivity import Dimension

MEMORY_BINDING_FRACTION = 0.9
"""Peak memory above this share of capacity is called the binding constraint: 10% is about the allocator
fragmentation and the run-to-run spread of activation memory, so there is no room for a bigger micro-batch."""


def describe(cfg: ParallelConfig, counts: Sequence[int]) -> str:
    """The plan in one sentence a person can check against their launcher."""
    parts = [f"{cfg.tp}-way tensor parallel" + (" with sequence parallelism" if cfg.sequence_parallel else "")]
    if cfg.pp > 1:
        sched = {"1f1b": "1F1B", "gpipe": "GPipe", "zbv": "zero-bubble V",
                 "interleaved": f"interleaved 1F1B, {cfg.virtual_stages} chunks per rank"}[cfg.schedule]
        split = "/".join(map(str, counts))
        parts.append(f"{cfg.pp} pipeline stages ({sched}; layers per chunk {split})")
    parts.append(f"{cfg.dp} data-parallel replicas" + (f" (ZeRO-{cfg.zero_stage})" if cfg.zero_stage else "")
                 + ("" if cfg.grad_sync == "allreduce" else f", {cfg.grad_sync} gradient sync")
                 + ("" if cfg.compression == "none" else f", {cfg.compression} gradient compression"))
    if cfg.ep > 1:
        parts.append(f"{cfg.ep}-way expert parallel")
    tail = (f"; {cfg.num_micro_batches} micro-batches of {cfg.micro_batch_size} x {cfg.seq_len} tokens per replica"
            f"; recompute {cfg.recompute}")
    if any(cfg.stage_recompute_layers):
        tail += f" (+ full recompute of {'/'.join(map(str, cfg.stage_recompute_layers))} layers per chunk)"
    return " x ".join(parts) + tail + "."


def answer(ctx: ReportContext, exports: str = "") -> h.Raw:
    e, cfg = ctx.chosen, ctx.config
    wall_s, gpu_h = training_time(e.step_time_s, cfg.tokens_per_step, ctx.train_tokens, cfg.world_size)
    rows = []
    for s in e.memory_by_stage:
        head = e.capacity_bytes - s.total_bytes
        status = h.Raw('<span class="ok">fits</span>') if head >= 0 else h.Raw('<span class="warn">over</span>')
        rows.append((f"pp rank {s.pp_rank}", h.gib(s.total_bytes), h.gib(e.capacity_bytes), h.gib(head),
                     h.pct(s.total_bytes / e.capacity_bytes), status))
    return h.section("answer", "1. The answer", [
        h.Raw(f'<div class="plan">{h.esc(cfg.name)}</div>'),
        h.para(describe(cfg, cfg.layers_per_chunk(ctx.plan.model))),
        h.kpis([(h.seconds(e.step_time_s), "predicted step time"),
                (f"{e.tokens_per_s_per_gpu:,.0f}", "tokens / s / GPU"),
                (f"{e.tflops_per_gpu:,.0f} TFLOP/s", f"per GPU, MFU {h.pct(e.mfu)} (HFU {h.pct(e.hfu)})"),
                (h.duration(wall_s), f"to train {h.count(ctx.train_tokens)} tokens"),
                (h.count(gpu_h), f"GPU-hours on {cfg.world_size} GPUs")]),
        h.para(f"Tokens to train: {h.count(ctx.train_tokens)} ({ctx.tokens_source}); "
               f"{cfg.tokens_per_step:,} tokens per step, "
               f"{math.ceil(ctx.train_tokens / cfg.tokens_per_step):,} steps."),
        h.heading("Peak memory per rank against device capacity"),
        h.table(["rank", "peak", "capacity", "headroom", "used", "status"], rows),
        h.heading("Launch"),
        h.pre(ctx.launch_command or "(no launch command given)"),
        exports,
    ])


def largest_term(breakdown: dict[str, float]) -> str:
    return max(breakdown, key=lambda k: breakdown[k]) if breakdown else "-"


def _share(e: Any, term: str) -> float:
    return e.breakdown.get(term, 0.0) / e.step_time_s if e.step_time_s > 0 else 0.0


def why(ctx: ReportContext) -> h.Raw:
    e, r = ctx.chosen, ctx.runner_up
    ranked_terms = sorted(e.breakdown, key=lambda k: -e.breakdown[k])
    shares = ", ".join(f"{t} {h.pct(_share(e, t))}" for t in ranked_terms if e.breakdown[t] > 0)
    parts: list[str] = [h.heading("Bottleneck"), h.para(
        f"The bottleneck is {e.bottleneck}: {h.seconds(e.breakdown.get(ranked_terms[0], 0.0)) if ranked_terms else '-'}"
        f" of the {h.seconds(e.step_time_s)} step. Shares of the step: {shares}.")]
    if e.notes:
        parts.append(h.para("Cost model notes: " + "; ".join(e.notes) + "."))
    parts += [h.heading("Binding constraint"), h.para(binding_constraint(ctx))]
    if r is not None:
        parts.append(h.heading(f"Margin over the runner-up ({r.config.name})"))
        terms = [t for t in _ordered_terms(e.breakdown, r.breakdown)]
        rows = [(t, BREAKDOWN_WORDS.get(t, t), h.seconds(e.breakdown.get(t, 0.0)), h.seconds(r.breakdown.get(t, 0.0)),
                 h.seconds(r.breakdown.get(t, 0.0) - e.breakdown.get(t, 0.0))) for t in terms]
        rows.append(("step time", "sum of the terms", h.seconds(e.step_time_s), h.seconds(r.step_time_s),
                     h.seconds(r.step_time_s - e.step_time_s)))
        rows.append(("peak memory", "fullest rank", h.gib(e.peak_memory_bytes), h.gib(r.peak_memory_bytes),
                     h.gib(r.peak_memory_bytes - e.peak_memory_bytes)))
        parts.append(h.table(["term", "meaning", "chosen", "runner-up", "runner-up - chosen"], rows, left_cols=2))
        gap = (r.step_time_s - e.step_time_s) / e.step_time_s if e.step_time_s > 0 else 0.0
        parts.append(h.para(f"The chosen plan is {h.pct(gap)} faster per step than the runner-up."))
    else:
        parts.append(h.para("No other feasible candidate was found: there is no runner-up to compare with."))
    return h.section("why", "2. Why this plan", parts)


def _delta(a: float, b: float) -> float:
    """a - b, with float dust (|d| < 1 ns) shown as 0 rather than '-0 us'."""
    d = a - b
    return 0.0 if abs(d) < 1e-9 else d


def _ordered_terms(a: dict[str, float], b: dict[str, float]) -> list[str]:
    from planner.report.plots import term_order

    return term_order({k for k in (*a, *b) if a.get(k, 0.0) or b.get(k, 0.0)})


def binding_constraint(ctx: ReportContext) -> str:
    """What stops a faster plan: the fastest rejected candidate's reason, else memory headroom, else none."""
    e = ctx.chosen
    used = e.peak_memory_bytes / e.capacity_bytes if e.capacity_bytes else 0.0
    faster = sorted((x for x in ctx.rejected if x.step_time_s is not None and x.step_time_s < e.step_time_s),
                    key=lambda x: x.step_time_s)
    text = []
    if faster:
        f = faster[0]
        text.append(f"{len(faster)} rejected candidate(s) would be faster; the fastest, {f.name} "
                    f"({h.seconds(f.step_time_s)} per step), was rejected because: {f.reason}.")
    if used >= MEMORY_BINDING_FRACTION:
        text.append(f"Memory binds: the fullest rank uses {h.pct(used)} of the device "
                    f"({h.gib(e.peak_memory_bytes)} of {h.gib(e.capacity_bytes)}).")
    if not text:
        text.append(f"No constraint binds: no priced candidate that is faster was rejected, and the fullest rank "
                    f"uses {h.pct(used)} of the device.")
        unpriced = [r for r in ctx.infeasible if r.step_time_s is None]
        if unpriced:
            pattern, n, _ = reason_groups(tuple(unpriced))[0]
            text.append(f"{sum(r.count for r in unpriced):,} configurations were ruled out before pricing, most often "
                        f"because: {pattern} ({n:,}).")
    return " ".join(text)


def candidates(ctx: ReportContext) -> h.Raw:
    rows = [(i + 1, e.config.name, h.seconds(e.step_time_s), f"{e.tokens_per_s_per_gpu:,.0f}", h.pct(e.mfu),
             h.gib(e.peak_memory_bytes), h.gib(e.capacity_bytes - e.peak_memory_bytes), largest_term(e.breakdown))
            for i, e in enumerate(ctx.ranked[:ctx.top_n])]
    parts: list[str] = [h.table(["#", "candidate", "step time", "tokens/s/GPU", "MFU", "peak memory", "headroom",
                                 "largest term"], rows, left_cols=2, text_cols=(-1,), highlight_row=0)]
    stats = ctx.search_stats
    if stats:
        parts.append(h.para("Search: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items()) + "."))
    infeasible, pruned = ctx.infeasible, ctx.pruned
    parts.append(h.heading(f"Infeasible candidates ({sum(r.count for r in infeasible):,} configurations)"))
    if infeasible:
        parts.append(h.table(["reason (numbers vary)", "configurations", "example"],
                             reason_groups(infeasible)[:ctx.top_n], text_cols=(-1,)))
        shown = sorted(infeasible, key=lambda x: (x.step_time_s is None, x.step_time_s or 0.0))[:ctx.top_n]
        parts.append(h.table(["candidate", "would-be step time", "reason"],
                             [(x.name, h.seconds(x.step_time_s) if x.step_time_s is not None else "not priced",
                               x.reason) for x in shown], text_cols=(-1,)))
    else:
        parts.append(h.para("None: every enumerated candidate can run."))
    if pruned:
        parts.append(h.heading(f"Pruned without pricing ({sum(r.count for r in pruned):,} configurations)"))
        parts.append(h.para("A lower bound (compute alone, or an equivalent candidate already priced) showed these "
                            "cannot beat the ranked ones; they can run, they are just not faster."))
        parts.append(h.table(["reason (numbers vary)", "configurations", "example"],
                             reason_groups(pruned)[:ctx.top_n], text_cols=(-1,)))
    return h.section("candidates", "3. Ranked candidates", parts)


def plots(figures: Sequence[tuple[bytes, str, str]], extra: Sequence[str] = ()) -> h.Raw:
    """``figures``: (png, alt text, caption); ``extra``: fragments after them (the sensitivity table)."""
    return h.section("plots", "4. Plots", [*(h.figure(png, alt, cap) for png, alt, cap in figures), *extra])


def sensitivity_table(dims: Sequence[Dimension]) -> h.Raw:
    rows = []
    for d in dims:
        for name, pts in d.points.items():
            cells = []
            for p in pts:
                cells.append("invalid" if p is None else h.seconds(p.step_time_s) + ("" if p.fits else " (no fit)"))
            rows.append((d.title, name, *cells))
    return h.table(["input", "plan", *[f"x{f:g}" for f in dims[0].factors]] if dims else ["input"], rows, left_cols=2)


def partition(ctx: ReportContext, png: bytes | None) -> h.Raw:
    e = ctx.chosen
    mem = {s.pp_rank: s for s in e.memory_by_stage}
    rows = []
    for st in ctx.plan.stages:
        m = mem.get(st.pp_rank)
        t = e.chunk_times_s[st.chunk] if st.chunk < len(e.chunk_times_s) else st.predicted_time_s
        extra = ", ".join(x for x, on in (("embedding", st.has_embedding), ("head + loss", st.has_head)) if on)
        rows.append((st.chunk, st.pp_rank, f"{st.first_layer}-{st.last_layer - 1}" if st.last_layer > st.first_layer
                     else "none", st.last_layer - st.first_layer, extra or "-",
                     st.recompute + (f" + {st.full_recompute_layers} full" if st.full_recompute_layers else ""),
                     h.seconds(t), h.gib(m.total_bytes) if m else "-"))
    parts: list[str] = [h.para("Which transformer layers each model chunk holds and where it runs; compute is forward "
                               "+ backward of one micro-batch, memory is the peak of the pipeline rank."),
                        h.table(["chunk", "pp rank", "layers", "count", "also holds", "recompute",
                                 "compute / micro-batch", "rank peak memory"], rows, left_cols=0)]
    if png:
        parts.append(h.figure(png, "layers and compute per model chunk", "Layers (left) and forward + backward "
                              "time per micro-batch (right) of each model chunk, coloured by pipeline rank."))
    return h.section("partition", "5. Layer partition", parts)


def inputs(ctx: ReportContext, versions: dict[str, str]) -> h.Raw:
    m, c = ctx.plan.model, ctx.plan.cluster
    model_rows = [("name", m.name), ("parameters", f"{m.total_params():,} ({h.count(m.total_params())})"),
                  ("layers x hidden", f"{m.num_layers} x {m.hidden_size}"), ("FFN", m.ffn_hidden_size),
                  ("heads / kv heads", f"{m.num_heads} / {m.kv_heads}"), ("vocabulary", m.vocab_size),
                  ("sequence", ctx.config.seq_len), ("norm / activation", f"{m.norm} / {m.activation}"),
                  ("dtype", m.dtype)]
    if m.is_moe:
        model_rows.append(("experts", f"{m.num_experts} routed, top-{m.moe_top_k}, {m.num_shared_experts} shared"))
    if m.notes:
        model_rows.append(("source", m.notes))
    d = c.device
    cluster_rows = [("name", c.name), ("devices", f"{c.world_size} = {c.num_nodes} nodes x {c.devices_per_node}"),
                    ("device", d.name),
                    ("peak FLOP/s", ", ".join(f"{k} {v / 1e12:g} T" for k, v in d.peak_flops.items())),
                    ("memory", h.gib(d.memory_bytes)), ("HBM", f"{d.hbm_bandwidth_bytes_per_s / 1e9:,.0f} GB/s")]
    cluster_rows += [(f"link {l.name}", f"{l.bandwidth_bytes_per_s / 1e9:g} GB/s per device, {l.latency_s * 1e6:g} us"
                      + (f" ({l.source})" if l.source else "")) for l in c.links]
    if d.source:
        cluster_rows.append(("source", d.source))
    return h.section("inputs", "6. Inputs", [
        h.heading("Model"), h.table(["field", "value"], model_rows, left_cols=2),
        h.heading("Cluster"), h.table(["field", "value"], cluster_rows, left_cols=2),
        h.heading("Profile"), h.para(ctx.profile_desc or "none: spec-sheet numbers and documented efficiencies"),
        h.heading("Versions"), h.table(["component", "version"], sorted(versions.items()), left_cols=2),
        h.heading("Command"), h.pre(ctx.command or "(not recorded)"),
    ])


def versions() -> dict[str, str]:
    out = {"hybridplan": __version__, "python": platform.python_version(), "platform": sys.platform}
    for mod in ("numpy", "pandas", "matplotlib", "ortools", "networkx"):
        m = sys.modules.get(mod)
        if m is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                out[mod] = version(mod)
            except PackageNotFoundError:  # say so rather than fail the report
                out[mod] = "not installed"
        else:
            out[mod] = getattr(m, "__version__", "?")
    return out
