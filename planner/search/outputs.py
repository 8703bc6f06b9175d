"""What a search writes: plan.json, candidates.csv, the launch files (torchrun line, sbatch script), stats.

``write_search_outputs(final_dir, ...)`` makes the whole set appear at once (``planner.io.staged_directory``:
a failure half-way leaves nothing partial and keeps an earlier run's directory intact); inside it,
``write_run_files(directory, ...)`` writes every file. **Adding a writer** (the report, a trace): add one
call at the end of ``write_run_files``; it receives the staged directory, the model, the cluster, the
chosen Plan, the ranked candidates (``CandidateRecord`` with ``.estimate``, a planner.cost Estimate), every
record, and the search stats, and must write through ``planner.io`` helpers.

Launch files: the runtime entry point is ``torchrun --nnodes N --nproc-per-node G ... -m runtime train
--plan plan.json --steps K``; multi-node launches rendezvous with c10d at ``$MASTER_ADDR:$MASTER_PORT``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from planner import __version__
from planner.cluster_spec import ClusterSpec
from planner.io import atomic_write_json, atomic_write_text, staged_directory
from planner.model_spec import ModelSpec
from planner.plan import Plan
from planner.report import write_search_report
from planner.search.records import CandidateRecord, SearchResult

PLAN_FILE = "plan.json"
CANDIDATES_FILE = "candidates.csv"
TORCHRUN_FILE = "launch_torchrun.sh"
SBATCH_FILE = "launch.sbatch"
STATS_FILE = "search.json"
DEFAULT_STEPS = 100

# stage_layers / stage_recompute_layers: '-'-joined per model chunk; empty means the even split / none.
CSV_COLUMNS = (
    "rank", "name", "status", "reason", "count", "step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu",
    "peak_memory_bytes", "headroom_bytes", "lower_bound_s", "dp", "tp", "pp", "ep", "micro_batch", "num_micro_batches",
    "schedule", "virtual_stages", "recompute", "sequence_parallel", "zero", "grad_sync", "compression",
    "stage_layers", "stage_recompute_layers", "partition_solver", "partition_status", "partition_gap", "bottleneck")


@dataclass(frozen=True)
class RunInfo:
    """How the plan was asked for and how to run it."""

    command: str
    """The exact command line that produced the plan."""
    steps: int = DEFAULT_STEPS
    tokens: float = 0.0
    """Tokens to train for (``--tokens``); 0: not given."""
    profile: str = ""


def _num(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def _csv_row(rank: int | None, rec: CandidateRecord, capacity_bytes: float, model: ModelSpec) -> dict[str, Any]:
    c, e, p = rec.config, rec.estimate, rec.partition
    row: dict[str, Any] = {k: "" for k in CSV_COLUMNS}
    row.update(rank="" if rank is None else rank, name=rec.name, status=rec.status, reason=rec.reason, count=rec.count,
               lower_bound_s=_num(rec.lower_bound_s))
    if c is not None:
        row.update(dp=c.dp, tp=c.tp, pp=c.pp, ep=c.ep, micro_batch=c.micro_batch_size,
                   num_micro_batches=c.num_micro_batches, schedule=c.schedule, virtual_stages=c.virtual_stages,
                   recompute=c.recompute, sequence_parallel=c.sequence_parallel, zero=c.zero_stage,
                   grad_sync=c.grad_sync, compression=c.compression,
                   stage_layers="-".join(map(str, c.stage_layers)),
                   stage_recompute_layers="-".join(map(str, c.stage_recompute_layers)))
    else:
        g = rec.group
        row.update(dp=g.get("dp", ""), tp=g.get("tp", ""), pp=g.get("pp", ""), ep=g.get("ep", ""),
                   micro_batch=g.get("micro_batch", ""), recompute=g.get("recompute", ""),
                   sequence_parallel=g.get("sequence_parallel", ""))
    if e is not None:
        row.update(step_time_s=_num(e.step_time_s), tokens_per_s_per_gpu=_num(e.tokens_per_s_per_gpu),
                   tflops_per_gpu=_num(e.tflops_per_gpu), mfu=_num(e.mfu), peak_memory_bytes=int(e.peak_memory_bytes),
                   headroom_bytes=int(capacity_bytes - e.peak_memory_bytes), bottleneck=e.bottleneck)
    if p is not None:
        row.update(partition_solver=p.solver, partition_status=p.status,
                   partition_gap=_num(p.gap if math.isfinite(p.gap) else None))
    return row


MAX_EXPANDED_ROWS = 250_000
"""Groups decided wholesale are written one row per configuration up to this many rows in all, then as one row
per group (``count`` says how many configurations it stands for, ``name`` ends in ``_*``)."""


def _expanded(rec: CandidateRecord) -> list[CandidateRecord]:
    return [CandidateRecord(c.name, rec.status, c, reason=rec.reason, lower_bound_s=rec.lower_bound_s)
            for c in rec.members()]


def candidates_csv(result: SearchResult, capacity_bytes: float, model: ModelSpec) -> str:
    """Every candidate, one row each: the ranked ones first (with their rank), then the rest in the order they were
    decided; rows for groups decided wholesale are expanded into their configurations (``MAX_EXPANDED_ROWS``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    ranked_ids = {id(r): i + 1 for i, r in enumerate(result.ranked)}
    for rec in result.ranked:
        w.writerow(_csv_row(ranked_ids[id(rec)], rec, capacity_bytes, model))
    budget = MAX_EXPANDED_ROWS - len(result.records)
    for rec in result.records:
        if id(rec) in ranked_ids:
            continue
        if rec.members is not None and rec.count <= budget:
            budget -= rec.count
            for sub in _expanded(rec):
                w.writerow(_csv_row(None, sub, capacity_bytes, model))
        else:
            w.writerow(_csv_row(None, rec, capacity_bytes, model))
    return buf.getvalue()


def torchrun_command(cluster: ClusterSpec, plan_path: str = PLAN_FILE, steps: int = DEFAULT_STEPS) -> list[str]:
    """The runtime launch line for the plan's world: one process per device."""
    cmd = ["torchrun", "--nnodes", str(cluster.num_nodes), "--nproc-per-node", str(cluster.devices_per_node)]
    if cluster.num_nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "${MASTER_ADDR}:${MASTER_PORT:-29500}",
                "--rdzv-id", "${RDZV_ID:-hybridplan}"]
    return cmd + ["-m", "runtime", "train", "--plan", plan_path, "--steps", str(steps)]


def _shell_join(cmd: Sequence[str]) -> str:
    """Quote for the shell, leaving ${VAR} expansions to the shell."""
    return " ".join(a if a.startswith("${") else shlex.quote(a) for a in cmd)


def torchrun_script(plan: Plan, steps: int) -> str:
    c = plan.cluster
    lines = ["#!/usr/bin/env bash", f"# Run plan {plan.config.name} ({c.world_size} processes) with the hybridplan "
             "runtime.", "# Written by `python -m planner search`; run from the directory holding plan.json.",
             "set -euo pipefail"]
    if c.num_nodes > 1:
        lines += [f"# Run this on each of the {c.num_nodes} nodes; MASTER_ADDR names the first one.",
                  ': "${MASTER_ADDR:?set MASTER_ADDR to the first node\'s address}"']
    lines.append(_shell_join(torchrun_command(c, PLAN_FILE, steps)))
    return "\n".join(lines) + "\n"


def sbatch_script(plan: Plan, steps: int) -> str:
    c = plan.cluster
    gpu = c.backend == "nccl"
    job = "hp-" + plan.config.name[:40]
    head = ["#!/usr/bin/env bash", f"#SBATCH --job-name={job}", f"#SBATCH --nodes={c.num_nodes}",
            "#SBATCH --ntasks-per-node=1", "#SBATCH --exclusive"]
    head += [f"#SBATCH --gpus-per-node={c.devices_per_node}"] if gpu else [f"#SBATCH --cpus-per-task={c.devices_per_node}"]
    head += ["#SBATCH --output=%x-%j.out", f"# Plan {plan.config.name}: {c.world_size} x {c.device.name}, "
             f"rank order {plan.to_dict()['rank_order']} (tp fastest). Written by `python -m planner search`.",
             "# Submit from the directory holding plan.json: sbatch launch.sbatch", "set -euo pipefail",
             'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
             "export MASTER_PORT=29500", 'export RDZV_ID="$SLURM_JOB_ID"']
    cmd = torchrun_command(c, "plan.json", steps)
    if c.num_nodes == 1:
        return "\n".join(head + [_shell_join(cmd)]) + "\n"
    return "\n".join(head + ["srun " + _shell_join(cmd)]) + "\n"


def summary(plan: Plan, best: CandidateRecord) -> dict[str, Any]:
    """The chosen plan in one JSON object (what ``search --json`` prints)."""
    c, e = plan.config, best.estimate
    return {
        "name": c.name, "model": plan.model.name, "cluster": plan.cluster.name, "world_size": c.world_size,
        "global_batch": c.global_batch_size, "seq_len": c.seq_len,
        "step_time_s": e.step_time_s, "tflops_per_gpu": e.tflops_per_gpu, "mfu": e.mfu, "hfu": e.hfu,
        "tokens_per_s_per_gpu": e.tokens_per_s_per_gpu, "peak_memory_bytes": e.peak_memory_bytes,
        "capacity_bytes": e.capacity_bytes,
        "degrees": {"dp": c.dp, "tp": c.tp, "pp": c.pp, "ep": c.ep, "micro_batch": c.micro_batch_size,
                    "num_micro_batches": c.num_micro_batches, "schedule": c.schedule,
                    "virtual_stages": c.virtual_stages, "zero": c.zero_stage, "recompute": c.recompute,
                    "stage_recompute_layers": list(c.stage_recompute_layers or (0,) * c.num_chunks),
                    "sequence_parallel": c.sequence_parallel, "stage_layers": list(c.layers_per_chunk(plan.model)),
                    "grad_sync": c.grad_sync, "compression": c.compression},
        "memory_by_stage": [s.to_dict() for s in e.memory_by_stage],
        "breakdown": dict(e.breakdown), "bottleneck": e.bottleneck,
    }


def build_plan(model: ModelSpec, cluster: ClusterSpec, result: SearchResult, info: RunInfo) -> Plan:
    best = result.best
    e = best.estimate
    predicted = {k: v for k, v in e.to_dict().items() if k not in ("config", "name")}
    provenance = {"tool": f"hybridplan {__version__}", "command": info.command, "profile": info.profile or None,
                  "partition": best.partition.to_dict() if best.partition else {"solver": "even split"},
                  "search": result.stats.to_dict()}
    return Plan.build(model, cluster, best.config, predicted=_finite(predicted), provenance=_finite(provenance),
                      chunk_times_s=list(e.chunk_times_s),
                      rank_memory_bytes=[int(s.total_bytes) for s in e.memory_by_stage])


def _finite(obj: Any) -> Any:
    """JSON has no inf / nan (plan files are written with allow_nan=False): map them to None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_run_files(directory: Path, model: ModelSpec, cluster: ClusterSpec, plan: Plan, result: SearchResult,
                    info: RunInfo, cost_model: Any = None) -> dict[str, Path]:
    """Write every file of one search run into ``directory`` (already staged by the caller).

    Receives everything a writer needs: ``plan`` (chosen), ``result.ranked`` (feasible candidates, best first,
    each with its Estimate), ``result.records`` (every candidate row), ``result.stats`` (counts, timings,
    solver gap), the ``cost_model`` that priced them and ``info`` (command line, steps, tokens, profile).
    """
    directory = Path(directory)
    capacity = float(result.best.estimate.capacity_bytes)
    written = {PLAN_FILE: plan.save(directory / PLAN_FILE),
               CANDIDATES_FILE: atomic_write_text(directory / CANDIDATES_FILE, candidates_csv(result, capacity, model)),
               TORCHRUN_FILE: atomic_write_text(directory / TORCHRUN_FILE, torchrun_script(plan, info.steps)),
               SBATCH_FILE: atomic_write_text(directory / SBATCH_FILE, sbatch_script(plan, info.steps)),
               STATS_FILE: atomic_write_json(directory / STATS_FILE, _finite(
                   {"command": info.command, "summary": summary(plan, result.best), "stats": result.stats.to_dict(),
                    "top": [{"name": r.name, "step_time_s": r.step_time_s} for r in result.ranked[:20]]}))}
    # Further writers (report.html, predicted_trace.json) are called here, with the same arguments.
    written.update(write_search_report(directory, result, plan, cost_model, command=info.command, tokens=info.tokens,
                                       profile_desc=info.profile, launch_command=_shell_join(
                                           torchrun_command(cluster, PLAN_FILE, info.steps))))
    return written


def write_search_outputs(final_dir: str | Path, model: ModelSpec, cluster: ClusterSpec, result: SearchResult,
                         info: RunInfo, cost_model: Any = None) -> tuple[Plan, dict[str, Path]]:
    """Build the plan and write all files so that ``final_dir`` appears complete or not at all."""
    plan = build_plan(model, cluster, result, info)
    final_dir = Path(final_dir)
    with staged_directory(final_dir) as tmp:
        names = write_run_files(tmp, model, cluster, plan, result, info, cost_model)
    return plan, {k: final_dir / v.name for k, v in names.items()}


__all__ = ["write_search_outputs", "write_run_files", "build_plan", "summary", "candidates_csv", "torchrun_command",
           "sbatch_script", "RunInfo"]
