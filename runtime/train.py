"""The training loop of one rank: steps, logging, checkpoints, resume, measured trace, metrics.

Faults (runtime.faults, issue 9): every step runs inside a ``CollectiveWatchdog`` operation
(``HYBRIDPLAN_COLLECTIVE_TIMEOUT_S``), so a rank that stops responding is named instead of hanging
the job; ``HYBRIDPLAN_FAULT`` injection points are ``step`` (before step index N, 0-based: N steps
completed) and ``checkpoint`` (after the data of the checkpoint after step N is written, before it
is committed).

``slow_stage`` (debugging, runtime/slowdown.py) is installed after the engine is built or resumed, so a
resumed run under a rebalanced plan is slowed the same way.

Logged on rank 0 every ``log_every`` steps: loss, gradient norm, step time, tokens/s and, per model
chunk, the forward / backward (/ weight-gradient) time summed over the step's micro-batches (the max
over the ranks that run that chunk). ``metrics_path`` receives every step's record as JSON.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from planner.io import atomic_write_json
from planner.plan import Plan
from runtime import checkpoint, faults
from runtime.engine import Engine, RunOptions, StepResult
from runtime.slowdown import SlowStage
from runtime.trace import TimelineRecorder, write_trace

log = logging.getLogger("runtime.train")


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    """Train until this many optimizer steps have been taken in total (a resumed run continues)."""
    log_every: int = 1
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    """Save every N steps (and after the last step); 0 saves only when checkpoint_dir is set, at the end."""
    resume: str | None = None
    """'auto' (the latest complete checkpoint in checkpoint_dir, if any) or a checkpoint directory."""
    trace_path: str | None = None
    trace_steps: int = 2
    """The last N steps go into the trace."""
    metrics_path: str | None = None
    slow_stage: SlowStage | None = None
    """Debugging: slow one pipeline stage down artificially (runtime.slowdown), to test load balancing."""


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def stage_times(engine: Engine, result: StepResult) -> dict[str, float]:
    """Per-chunk F / B / W seconds of the last step, from whichever ranks run each chunk (collective)."""
    n = engine.plan.config.num_chunks
    t = torch.zeros(n, 3, dtype=torch.float64, device=engine.topo.device)
    for key, secs in result.stage_times_s.items():
        c, kind = key[len("chunk"):].split(".")
        t[int(c), "FBW".index(kind)] = secs
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {f"chunk{c}.{k}": t[c, i].item() for c in range(n) for i, k in enumerate("FBW") if t[c, i] > 0}


def _format(r: StepResult, times: dict[str, float]) -> str:
    per_stage = " ".join(f"{k}={v * 1e3:.1f}ms" for k, v in times.items())
    return (f"step {r.step} | loss {r.loss:.6f} | grad norm {r.grad_norm:.4f} | {r.step_time_s * 1e3:.1f} ms | "
            f"{r.tokens / r.step_time_s:,.0f} tok/s | {per_stage}")


def train(plan: Plan, options: RunOptions, tc: TrainConfig) -> list[StepResult]:
    """Run on every rank (process group initialised, or a 1-process plan). Returns this rank's records."""
    engine = Engine(plan, options)
    if tc.resume:
        path = checkpoint.latest(tc.checkpoint_dir) if tc.resume == "auto" and tc.checkpoint_dir else (
            None if tc.resume == "auto" else Path(tc.resume))
        if path is not None:
            step = checkpoint.load(engine, path)
            if _rank0():
                log.info("resumed from %s (step %d, next sample %d)", path, step, engine.loader.position)
    if tc.slow_stage is not None:
        tc.slow_stage.install(engine)
        if _rank0():
            log.info("slow stage (debugging): pipeline stage %d runs %gx slower (--slow-stage %s)",
                     tc.slow_stage.pp_rank, tc.slow_stage.factor, tc.slow_stage)
    injector = faults.FaultInjector.from_env(engine.topo.rank)
    watchdog = (faults.CollectiveWatchdog.for_default_group()
                if dist.is_initialized() and dist.get_world_size() > 1 else None)
    recorder = None
    results: list[StepResult] = []
    records: list[dict] = []
    try:
        trace_from = max(engine.step_count, tc.steps - tc.trace_steps)
        while engine.step_count < tc.steps:
            if tc.trace_path and recorder is None and engine.step_count >= trace_from:
                if dist.is_initialized():
                    dist.barrier()
                recorder = TimelineRecorder(engine.topo.rank, time.perf_counter())
            injector.at("step", engine.step_count)
            if watchdog is not None:
                with watchdog.op(f"step {engine.step_count + 1}"):
                    r = engine.train_step()
            else:
                r = engine.train_step()
            results.append(r)
            if recorder is not None:
                recorder.add_step(r.step, engine.timer.records if engine.timer else [], engine.last_sync_span,
                                  engine.last_opt_span)
            if r.step % tc.log_every == 0 or r.step == tc.steps:
                times = stage_times(engine, r)
                records.append({**asdict(r), "stage_times_s": times, "tokens_per_s": r.tokens / r.step_time_s})
                if _rank0():
                    log.info(_format(r, times))
            due = tc.checkpoint_every and r.step % tc.checkpoint_every == 0
            if tc.checkpoint_dir and (due or r.step == tc.steps):
                path = checkpoint.save(engine, tc.checkpoint_dir,
                                       before_commit=lambda: injector.at("checkpoint", engine.step_count))
                if _rank0():
                    log.info("checkpoint %s", path)
        if tc.trace_path and recorder is not None:
            out = write_trace(tc.trace_path, recorder, plan=plan.config.name, world_size=plan.config.world_size)
            if out is not None:
                log.info("trace %s", out)
        if tc.metrics_path and _rank0():
            atomic_write_json(tc.metrics_path, {"plan": plan.config.name, "steps": records})
    finally:
        if watchdog is not None:
            watchdog.close()
    return results
