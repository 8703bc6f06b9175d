"""Every parallel layout trains the same model as one process (STYLE.md point 12).

Each case runs ``runtime.verify.verify_plan``: the plan on forked gloo processes and the
single-process reference (runtime.reference, independent code) for 3 optimizer steps from the same
keyed initialisation on the same samples; compared: the loss of every step and every parameter after
the last step, gathered at full shape by global name (all parameters must be covered).

Tolerances: float64, so layouts differ only by the order of floating-point sums (TP all-reduces,
micro-batch accumulation, DP averaging): ~1e-16 relative per operation, 1e-13 .. 1e-15 measured after
three steps; the bound 1e-9 keeps four orders of margin while any real error (a wrong slice, a
missing reduction, a 1/dp scale) shows up at 1e-3 or above. AdamW for most cases (it exercises the
optimizer state under ZeRO), SGD for a few (its update is linear in the gradient, so the parameter
difference bounds the gradient difference directly). The float32 case uses the `verify` defaults.
"""

from __future__ import annotations

import pytest

from runtime.engine import RunOptions
from runtime.optim import OptimConfig
from runtime.verify import TOLERANCES, verify_plan
from tests.runtime.helpers import make_plan

LOSS_TOL, PARAM_TOL = TOLERANCES["fp64"]
ADAMW = OptimConfig("adamw", lr=1e-2)
SGD = OptimConfig("sgd", lr=0.5, momentum=0.9)

CASES = {
    # name: (model, config, optimizer)
    "dp2": ("tiny-llama", dict(dp=2), ADAMW),
    "tp2": ("tiny-llama", dict(tp=2), SGD),
    "tp2-sequence-parallel": ("tiny-gpt", dict(tp=2, sequence_parallel=True), ADAMW),
    "pp2-1f1b": ("tiny-llama", dict(pp=2, schedule="1f1b"), ADAMW),
    "pp2-uneven-1-3": ("tiny-llama", dict(pp=2, stage_layers=(1, 3)), SGD),
    "pp2-gpipe-tied": ("tiny-gpt", dict(pp=2, schedule="gpipe"), ADAMW),
    "pp2-interleaved-2chunks": ("tiny-llama", dict(pp=2, schedule="interleaved", virtual_stages=2), ADAMW),
    "pp2-zbv-tied": ("tiny-gpt", dict(pp=2, schedule="zbv", virtual_stages=2), ADAMW),
    "dp2xpp2-zbv-zero1": ("tiny-llama", dict(dp=2, pp=2, schedule="zbv", virtual_stages=2, micro_batch_size=1,
                                             zero_stage=1), ADAMW),  # DDP left out: all-reduce after the step
    "dp2xtp2": ("tiny-llama", dict(dp=2, tp=2), ADAMW),
    "tp2xpp2": ("tiny-llama", dict(tp=2, pp=2, recompute="selective"), ADAMW),
    "dp2xpp2": ("tiny-llama", dict(dp=2, pp=2, recompute="full"), SGD),
    # tiny-llama dp2 x tp2 x pp2 (8 processes, float64) is the `runtime verify` bar in test_cli.py
    "dp2xtp2xpp2-gpt-sp": ("tiny-gpt", dict(dp=2, tp=2, pp=2, micro_batch_size=1, sequence_parallel=True), ADAMW),
    "dp2-hierarchical-sync": ("tiny-llama", dict(dp=2, grad_sync="hierarchical"), SGD),  # lossless DDP hook
    "zero1-dp2": ("tiny-llama", dict(dp=2, zero_stage=1), ADAMW),
    "zero2-dp2": ("tiny-gpt", dict(dp=2, zero_stage=2), ADAMW),
    "zero3-dp2": ("tiny-llama", dict(dp=2, zero_stage=3), ADAMW),
    "zero3-dp2xtp2": ("tiny-llama", dict(dp=2, tp=2, zero_stage=3, sequence_parallel=True), ADAMW),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_parallel_equals_single_process(name: str) -> None:
    model, config, optim = CASES[name]
    plan = make_plan(model, **config)
    r = verify_plan(plan, 3, RunOptions(dtype="fp64", optim=optim), timeout_s=240)
    print(f"{name}: max |loss diff| {r.max_loss_diff:.2e}, max |param diff| {r.max_param_diff:.2e} "
          f"({r.worst_param}), grad-norm diff {r.grad_norm_diff:.2e}, {r.wall_s:.1f} s")
    assert not r.missing, f"parameters no rank compared: {r.missing}"
    assert r.max_loss_diff <= LOSS_TOL, r
    assert r.max_param_diff <= PARAM_TOL, r
    assert r.grad_norm_diff <= LOSS_TOL, r  # the global norm (clipping) counts every element once
    assert r.losses[-1] != r.losses[0]  # it trained


@pytest.mark.slow
def test_float32_eight_processes_within_verify_defaults() -> None:
    # float32: AdamW turns last-bit gradient differences into update differences (runtime.verify).
    plan = make_plan("tiny-llama", dp=2, tp=2, pp=2, micro_batch_size=1)
    r = verify_plan(plan, 3, RunOptions(dtype="fp32", optim=ADAMW), timeout_s=240)
    loss_tol, param_tol = TOLERANCES["fp32"]
    print(f"fp32 dp2xtp2xpp2: loss {r.max_loss_diff:.2e}, param {r.max_param_diff:.2e}")
    assert r.passed(loss_tol, param_tol), r


@pytest.mark.slow
def test_lossy_compression_hook_runs_inside_tp_and_pp() -> None:
    """The seam to runtime.compression: an int8 DDP hook on TP shards inside pipeline stages. Lossy, so
    only closeness is checked here (its accuracy is issue 7's tests): per-bucket int8 scales give ~1e-2
    relative gradient error, and three SGD steps move the loss by far less than 1e-2."""
    plan = make_plan("tiny-llama", dp=2, tp=2, pp=2, micro_batch_size=1, compression="int8")
    r = verify_plan(plan, 3, RunOptions(dtype="fp64", optim=SGD), timeout_s=240)
    print(f"int8 dp2xtp2xpp2: loss {r.max_loss_diff:.2e}, param {r.max_param_diff:.2e}")
    assert not r.missing and 0 < r.max_loss_diff < 1e-2
