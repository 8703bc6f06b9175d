"""The whole MoE model through the runtime: EP2 with DP and PP (the issue's bar layout) and EP4 with DP
equal the single-process twin after several optimizer steps (runtime.verify: losses, gradient norms,
every parameter, expert weights included, compared by global name).

Tolerances are runtime.verify's for float64 (summation order only; comment there).
"""

from __future__ import annotations

import pytest

from planner.cluster_spec import resolve_cluster
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from runtime.engine import RunOptions
from runtime.verify import TOLERANCES, verify_plan


@pytest.mark.slow
@pytest.mark.parametrize("degrees", [dict(dp=2, tp=1, pp=2, ep=2), dict(dp=4, tp=1, pp=1, ep=4)],
                         ids=["dp2_pp2_ep2", "dp4_ep4"])
def test_moe_plan_equals_single_process(degrees: dict) -> None:
    spec = PRESETS["tiny-moe"]
    config = ParallelConfig(micro_batch_size=1, global_batch_size=4, seq_len=spec.seq_len, **degrees)
    plan = Plan.build(spec, resolve_cluster("cpu", gpus=config.world_size), config)
    r = verify_plan(plan, 3, RunOptions(dtype="fp64"), timeout_s=240)
    print(f"{r.plan_name}: max abs diff loss {r.max_loss_diff:.1e}, params {r.max_param_diff:.1e} "
          f"({r.worst_param}), grad norm {r.grad_norm_diff:.1e}")
    assert not r.missing
    assert r.passed(*TOLERANCES["fp64"])
    assert abs(r.losses[-1] - r.losses[0]) > 1e-4  # it trained
