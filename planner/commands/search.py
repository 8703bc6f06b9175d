"""`python -m planner search`: the fastest plan that fits, the alternatives, and the files to run it.

With no arguments it plans the built-in default, ``DEFAULT_REQUEST``: Llama 3.1 70B on 64 H100 GPUs
(8 DGX H100 nodes), global batch 512 sequences of 8,192 tokens (4M tokens per step, the Llama 3 paper's
batch at that length). Each of model, cluster, size and batch can be given alone; a ``--cluster``
without ``--gpus`` / ``--nodes`` keeps that cluster's own size. Without ``--global-batch``: 4 sequences
per process on a gloo (CPU) cluster, else about 4M tokens rounded up to a power-of-two number of
sequences.

Stdout: the ranked table (NeMo-style names), the chosen plan's memory per pipeline rank, the search
counts, and where the files went (``reports/<model>-<cluster>-<gpus>/`` unless ``--out``). ``--json``
prints only the chosen plan's summary as one JSON object. A request no configuration can satisfy is one
line on stderr and exit code 2, and leaves nothing in the output directory.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from pathlib import Path

from planner.commands.common import add_model_cluster_args, load_inputs, positive_float, positive_int
from planner.cost import CostModel
from planner.search.constraints import parse_fixes
from planner.search.outputs import DEFAULT_STEPS, RunInfo, summary, write_search_outputs
from planner.search.records import SearchResult, SearchStats
from planner.search.solver import SearchOptions, search
from planner.search.space import SearchSpace

DEFAULT_REQUEST = {"model": "llama3.1-70b", "cluster": "dgx-h100", "gpus": 64, "global_batch": 512, "seq": 8192}
DEFAULT_TOKENS_PER_STEP = 4 * 2**20
GiB = 2**30


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (f"With no arguments: --model {DEFAULT_REQUEST['model']} --cluster {DEFAULT_REQUEST['cluster']} --gpus "
                f"{DEFAULT_REQUEST['gpus']} --global-batch {DEFAULT_REQUEST['global_batch']} --seq {DEFAULT_REQUEST['seq']}. "
                "Exit codes: 0 plan written, 2 nothing satisfies the request (one line on stderr, nothing written).")
    add_model_cluster_args(p, model_default=None, cluster_default=None)
    g = p.add_argument_group("search")
    g.add_argument("--fix", action="append", default=[], metavar="K=V",
                   help="pin a dimension: tp, pp, dp, ep, micro_batch, schedule (gpipe|1f1b|interleaved:V|zbv), vp, "
                        "recompute, sp, zero, grad_sync, compression (repeatable)")
    g.add_argument("--time-limit", type=positive_float, default=60.0, help="wall budget of the search in seconds")
    g.add_argument("--top", type=positive_int, default=5, help="alternatives to show (and keep exact)")
    g.add_argument("--out", help="output directory (default reports/<model>-<cluster>-<gpus>/)")
    g.add_argument("--tokens", type=positive_float, help="tokens to train for: prints the time to train")
    g.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="steps in the launch files")
    g.add_argument("--json", action="store_true", help="print only the chosen plan's summary as JSON")


def _apply_defaults(args: argparse.Namespace) -> None:
    if args.cluster is None:
        args.cluster = DEFAULT_REQUEST["cluster"]
        if args.gpus is None and args.nodes is None:
            args.gpus = DEFAULT_REQUEST["gpus"]
    if args.model is None:
        args.model = DEFAULT_REQUEST["model"]
        if args.seq is None and args.global_batch is None:
            args.seq, args.global_batch = DEFAULT_REQUEST["seq"], DEFAULT_REQUEST["global_batch"]


def default_global_batch(world: int, seq_len: int, backend: str) -> int:
    if backend == "gloo":
        return 4 * world
    return 2 ** max(0, math.ceil(math.log2(max(1, DEFAULT_TOKENS_PER_STEP / seq_len))))


def run_name(model: str, cluster: str, world: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{cluster}-{world}")


def command_line(args: argparse.Namespace, world: int, global_batch: int, seq_len: int) -> str:
    """The command that reproduces this search, every default made explicit."""
    parts = ["python", "-m", "planner", "search", "--model", args.model, "--cluster", args.cluster]
    parts += ["--nodes", str(args.nodes)] if args.nodes else ["--gpus", str(world)]
    parts += ["--global-batch", str(global_batch), "--seq", str(seq_len)]
    for f in args.fix:
        parts += ["--fix", f]
    if args.profile:
        parts += ["--profile", args.profile]
    parts += ["--time-limit", f"{args.time_limit:g}", "--top", str(args.top)]
    if args.tokens:
        parts += ["--tokens", f"{args.tokens:g}"]
    if args.out:
        parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def _progress():
    """A rich progress bar with ETA on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("groups"),
                   TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("search", total=None, counts="")

    def update(phase: str, done: int, total: int, stats: SearchStats) -> None:
        bar.update(task, description=phase, completed=done, total=total, counts=(
            f"estimates {stats.evaluated}, pruned {stats.pruned}, infeasible {stats.infeasible}"))
    return bar, update


def render(result: SearchResult, top: int, out_files: dict[str, Path], tokens: float | None) -> str:
    best = result.best
    e, c = best.estimate, best.config
    cap = e.capacity_bytes
    lines = [f"{'#':>3}  {'plan':58s} {'step s':>9} {'tok/s/GPU':>10} {'MFU':>6} {'peak GiB':>9} {'headroom GiB':>12}"]
    for i, r in enumerate(result.ranked[:top], 1):
        x = r.estimate
        name = r.name if len(r.name) <= 58 else r.name[:55] + "..."
        lines.append(f"{i:3d}  {name:58s} {x.step_time_s:9.3f} {x.tokens_per_s_per_gpu:10.1f} {x.mfu * 100:5.1f}% "
                     f"{x.peak_memory_bytes / GiB:9.1f} {(cap - x.peak_memory_bytes) / GiB:12.1f}")
    lines.append("")
    lines.append(f"chosen: {best.name}")
    lines.append(f"  {c.world_size} GPUs = tp {c.tp} x pp {c.pp} x dp {c.dp}" + (f" (ep {c.ep})" if c.ep > 1 else "")
                 + f"; micro-batch {c.micro_batch_size} x {c.num_micro_batches} per step; schedule {c.schedule}"
                 + (f" (v={c.virtual_stages})" if c.virtual_stages > 1 else "")
                 + f"; recompute {c.recompute}; ZeRO {c.zero_stage}; grad sync {c.grad_sync}"
                 + (f" + {c.compression}" if c.compression != "none" else ""))
    lines.append(f"  step {e.step_time_s:.3f} s, {e.tflops_per_gpu:.0f} TFLOP/s/GPU, MFU {e.mfu * 100:.1f}%, "
                 f"bottleneck: {e.bottleneck}")
    lines.append("  memory per pipeline rank (GiB, peak / headroom): " + ", ".join(
        f"{s.pp_rank}: {s.total_bytes / GiB:.1f} / {(cap - s.total_bytes) / GiB:.1f}" for s in e.memory_by_stage[:16])
        + (" ..." if len(e.memory_by_stage) > 16 else ""))
    if best.partition is not None:
        p = best.partition
        gap = "n/a" if not math.isfinite(p.gap) else f"{p.gap * 100:.2f}%"
        lines.append(f"  layer split {list(p.stage_layers)} with full-recompute layers {list(p.stage_recompute_layers)} "
                     f"({p.solver}, {p.status}, gap {gap})")
    if tokens:
        steps = math.ceil(tokens / c.tokens_per_step)
        days = steps * e.step_time_s / 86400
        lines.append(f"  training {tokens:.3g} tokens: {steps} steps, {days:.1f} days, "
                     f"{days * 24 * c.world_size:,.0f} GPU-hours")
    s = result.stats
    lines.append("")
    lines.append(f"searched {s.enumerated} configurations in {s.wall_s:.1f} s: {s.evaluated} estimates, "
                 f"{s.feasible} feasible, {s.pruned} pruned, {s.infeasible} infeasible; "
                 f"{s.partitions_cpsat} CP-SAT splits ({s.cpsat_optimal} optimal)"
                 + (f"; TIME LIMIT: {s.unexplored} unexplored, " + (
                     f"gap <= {s.search_gap * 100:.1f}%" if math.isfinite(s.search_gap) else "gap unknown")
                    if s.timed_out else ""))
    if s.reasons:
        lines.append("  not kept: " + ", ".join(f"{k} {v}" for k, v in s.reasons.most_common()))
    lines.append("files:")
    lines.extend(f"  {p}" for p in out_files.values())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    _apply_defaults(args)
    constraints = parse_fixes(args.fix)
    probe = load_inputs(args, default_global_batch=1)
    gb = args.global_batch or default_global_batch(probe.cluster.world_size, probe.seq_len, probe.cluster.backend)
    inp = load_inputs(args, default_global_batch=gb)
    space = SearchSpace(inp.model, inp.cluster, inp.global_batch, constraints)
    cm = CostModel(inp.model, inp.cluster, profile=inp.profile)
    bar, update = (None, None) if args.json else _progress()
    options = SearchOptions(top_k=args.top, time_limit_s=args.time_limit)
    if bar is not None:
        with bar:
            result = search(space, cm, options, progress=update)
    else:
        result = search(space, cm, options)
    out = Path(args.out) if args.out else Path("reports") / run_name(inp.model.name, inp.cluster.name,
                                                                     inp.cluster.world_size)
    info = RunInfo(command=command_line(args, inp.cluster.world_size, inp.global_batch, inp.seq_len),
                   steps=args.steps, tokens=args.tokens or 0.0, profile=args.profile or "")
    plan, files = write_search_outputs(out, inp.model, inp.cluster, result, info, cm)
    if args.json:
        d = summary(plan, result.best)
        d["search"] = {k: v for k, v in result.stats.to_dict().items() if k != "reasons"}
        d["plan_file"] = str(files["plan.json"])
        print(json.dumps(d, indent=2, allow_nan=False))
    else:
        print(render(result, args.top, files, args.tokens))
    return 0
