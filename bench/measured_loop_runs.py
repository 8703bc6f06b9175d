"""Running plans for bench/measured_loop.py: timed launches, an artificially slow stage, the rebalance demo.

Plans run on forked gloo ranks (runtime.local_launch) through the runtime's own ``Engine`` (what
``python -m runtime train`` runs), one intra-op thread per rank as the profiler measured them.

Slow stage: the runtime's ``--slow-stage`` (runtime/slowdown.py): every transformer block on the slowed pipeline
rank sleeps ``factor - 1`` times its own forward time after its forward, and twice that when its backward
starts, so the rank behaves like a device ``factor`` times slower (sleeping, not spinning: the slow rank does
not steal the other ranks' cores on this 2-core machine).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train_worker(plan_path: str, steps: int, kw: dict) -> dict:
    """One rank: build the engine, optionally resume, run ``steps`` steps; returns the step times and, with
    ``trace``, writes the measured timeline with the runtime's own recorder (runtime/trace.py).
    ``kw``: slow_stage, slow_factor, ckpt_dir, resume, save, trace."""
    slow_stage, slow_factor = kw.get("slow_stage"), kw.get("slow_factor", 1.0)
    ckpt_dir, resume, save, trace = kw.get("ckpt_dir"), kw.get("resume", False), kw.get("save", False), kw.get("trace")
    import torch.distributed as dist

    from planner.plan import Plan
    from runtime import checkpoint
    from runtime.engine import Engine
    from runtime.slowdown import SlowStage
    from runtime.trace import TimelineRecorder, write_trace

    plan = Plan.load(plan_path)
    eng = Engine(plan)
    if resume:
        checkpoint.load(eng, checkpoint.latest(ckpt_dir))
    if slow_stage is not None:
        SlowStage(slow_stage, slow_factor).install(eng)
    dist.barrier()
    recorder = TimelineRecorder(dist.get_rank(), time.perf_counter())
    times = []
    for step in range(steps):
        res = eng.train_step()
        times.append(res.step_time_s)
        if trace and eng.timer is not None:
            recorder.add_step(step, list(eng.timer.records), getattr(eng, "last_sync_span", None),
                              getattr(eng, "last_opt_span", None))
    if trace:
        write_trace(trace, recorder, plan=plan.config.name)
    if save:
        checkpoint.save(eng, ckpt_dir)
    dist.barrier()
    return {"rank": dist.get_rank(), "times": times}


def launch(plan_path: str, world: int, steps: int, **kw) -> list[dict]:
    from profiler.launch import run_local

    return run_local(_train_worker, world, plan_path, steps, kw,
                     timeout_s=float(os.environ.get("HP_LAUNCH_TIMEOUT", 900)))


def step_time(per_rank: list[dict], warmup: int) -> float:
    """Median over the steps after warm-up of the slowest rank's step time."""
    steps = list(zip(*(r["times"] for r in per_rank)))
    kept = steps[warmup:] or steps
    return statistics.median(max(s) for s in kept)


def rebalance_demo(model_path: Path, profile: Path, out: Path, steps: int, warmup: int, repeats: int,
                   factor: float, global_batch: int) -> None:
    """Slow pipeline stage 0, measure, rebalance from the measured trace, resume under the new plan."""
    d = out / "rebalance"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    py = sys.executable
    cmd = [py, "-m", "planner", "search", "--model", str(model_path), "--cluster", "cpu", "--gpus", "2",
           "--global-batch", str(global_batch), "--profile", str(profile), "--out", str(d / "plan"), "--json",
           "--fix", "dp=1", "--fix", "tp=1", "--fix", "pp=2", "--fix", "schedule=1f1b", "--time-limit", "20"]
    _run(cmd)
    plan_path, ckpt, new_path = str(d / "plan" / "plan.json"), str(d / "ckpt"), str(d / "rebalanced_plan.json")
    first = launch(plan_path, 2, steps, slow_stage=0, slow_factor=factor, ckpt_dir=ckpt, save=True,
                   trace=str(d / "measured_trace.json"))
    _run([py, "-m", "planner", "rebalance", "--plan", plan_path, "--measured", str(d / "measured_trace.json"),
          "--profile", str(profile), "--out", new_path])
    before, after = [step_time(first, warmup)], []
    for _ in range(repeats):  # alternate, so load drift hits both alike; each resume reads the same checkpoint
        after.append(step_time(launch(new_path, 2, steps, slow_stage=0, slow_factor=factor, ckpt_dir=ckpt,
                                      resume=True), warmup))
        if len(before) < repeats:
            before.append(step_time(launch(plan_path, 2, steps, slow_stage=0, slow_factor=factor), warmup))
    before, after = statistics.median(before), statistics.median(after)
    old_layers = json.loads(Path(plan_path).read_text())["config"]["stage_layers"] or "even"
    new_layers = json.loads(Path(new_path).read_text())["config"]["stage_layers"]
    print(f"rebalance: stage 0 slowed x{factor:g}; layers {old_layers} -> {new_layers}; measured step "
          f"{before:.3f} s -> {after:.3f} s ({(before - after) / before:+.1%} faster, resumed from the DCP checkpoint)",
          flush=True)


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout
