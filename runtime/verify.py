"""``python -m runtime verify``: run a plan on local processes and its single-process twin, compare.

The reference (runtime.reference) runs first, in this process; its final parameters go to a
temporary file (``torch.save`` of plain tensors, read back with ``weights_only=True``: no pickled
objects). Then the plan runs on ``world_size`` forked gloo processes (runtime.local_launch); every
rank gathers its parameters at full shape and compares them with the reference's by global name.
Reported: the largest |loss difference| over the steps and the largest |parameter difference|
after the last optimizer step, plus coverage (every reference parameter compared on some rank).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.plan import Plan
from runtime.data_parallel import check_supported
from runtime.engine import Engine, RunOptions
from runtime.local_launch import run_ranks
from runtime.reference import run_reference
from runtime.state import full_params

TOLERANCES = {
    # float64: only summation order differs between layouts (TP all-reduce, micro-batch accumulation):
    # ~1e-15 relative per op; 1e-9 leaves six orders of margin after a few AdamW steps.
    "fp64": (1e-9, 1e-9),
    # float32: the same reordering at 6e-8 relative; AdamW divides by sqrt(v), which can amplify a
    # gradient's last-bit difference into an update difference of up to ~lr on near-zero gradients.
    "fp32": (1e-4, 1e-3),
}
"""dtype -> (loss tolerance, parameter tolerance), absolute."""


@dataclass(frozen=True)
class VerifyResult:
    plan_name: str
    world_size: int
    steps: int
    losses: list[float]
    reference_losses: list[float]
    max_loss_diff: float
    max_param_diff: float
    worst_param: str
    grad_norm_diff: float
    wall_s: float
    missing: list[str]
    """Reference parameters no rank compared (must be empty)."""

    def passed(self, loss_tol: float, param_tol: float) -> bool:
        return not self.missing and self.max_loss_diff <= loss_tol and self.max_param_diff <= param_tol


def _rank_worker(plan: Plan, options: RunOptions, steps: int, ref_path: str) -> dict:
    engine = Engine(plan, options)
    results = [engine.train_step() for _ in range(steps)]
    mine = full_params(engine.chunks)
    ref = torch.load(ref_path, weights_only=True)
    worst, worst_name = 0.0, ""
    for name, t in mine.items():
        d = (t.double().cpu() - ref[name].double()).abs().max().item()
        if d > worst or not worst_name:
            worst, worst_name = d, name
    return {"losses": [r.loss for r in results], "grad_norms": [r.grad_norm for r in results],
            "param_diff": worst, "worst": worst_name, "names": sorted(mine)}


def verify_plan(plan: Plan, steps: int, options: RunOptions | None = None, *, timeout_s: float = 300.0) -> VerifyResult:
    # Local gloo processes share this machine's CPU (one GPU cannot host several NCCL ranks).
    options = dataclasses.replace(options or RunOptions(), device="cpu")
    check_supported(plan.config, plan.model.is_moe)  # one line now, not one per rank later
    t0 = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: intra-op threads only spin against the ranks (and other jobs)
    try:
        ref = run_reference(plan, options, steps)
    finally:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="hp-verify-") as tmp:
        ref_path = str(Path(tmp) / "reference.pt")
        torch.save(ref.params, ref_path)
        res = run_ranks(_rank_worker, plan.config.world_size, plan, options, steps, ref_path, timeout_s=timeout_s)
    per_rank = res.values
    losses = per_rank[0]["losses"]
    loss_diff = max(abs(a - b) for r in per_rank for a, b in zip(r["losses"], ref.losses))
    norm_diff = max(abs(a - b) for r in per_rank for a, b in zip(r["grad_norms"], ref.grad_norms))
    worst = max(per_rank, key=lambda r: r["param_diff"])
    covered = set().union(*(set(r["names"]) for r in per_rank))
    return VerifyResult(plan.config.name, plan.config.world_size, steps, losses, ref.losses, loss_diff,
                        worst["param_diff"], worst["worst"], norm_diff, time.monotonic() - t0,
                        sorted(set(ref.params) - covered))
