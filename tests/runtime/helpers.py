"""Plans for runtime tests, built with Plan.build on the `cpu` cluster (no search needed)."""

from __future__ import annotations

from planner.cluster_spec import resolve_cluster
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan

SEQ = 16
"""Short sequences keep the 8-process cases inside the CPU budget; every code path is the same."""


def make_plan(model: str = "tiny-llama", **config) -> Plan:
    base = dict(dp=1, tp=1, pp=1, micro_batch_size=2, global_batch_size=8, seq_len=SEQ)
    base.update(config)
    cfg = ParallelConfig(**base)
    return Plan.build(PRESETS[model], resolve_cluster("cpu", gpus=cfg.world_size), cfg)
