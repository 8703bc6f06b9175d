"""Shared pieces of the training fault tests: a tiny deterministic plan, a worker that records the sample
indices its loader reads, offline checkpoint reading, and one uninterrupted reference run per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.cluster_spec import resolve_cluster
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan

STEPS, EVERY, GLOBAL_BATCH = 6, 2, 4
"""6 optimizer steps, a checkpoint every 2, 4 sequences per step (dp 2: 2 per rank, 1 per micro-batch)."""


def write_plan(path: Path, **config) -> Plan:
    """tiny-gpt on `cpu` processes, fp32: deterministic on CPU, seconds per run."""
    model = PRESETS["tiny-gpt"]
    base = dict(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=GLOBAL_BATCH, seq_len=model.seq_len)
    base.update(config)
    plan = Plan.build(model, resolve_cluster("cpu", gpus=base["dp"] * base["tp"] * base["pp"]), ParallelConfig(**base))
    plan.save(path)
    return plan


def checkpoint_tensors(path: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint at full shape (offline, one process), read back with weights_only."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = scratch / (path.parent.name + "-" + path.name + ".pt")
    dcp_to_torch_save(str(path), str(out))
    return torch.load(out, weights_only=True)


def train_recording(plan_path: str, ckpt_dir: str, log_dir: str, steps: int) -> int:
    """Rank body: train() with checkpoints every EVERY steps and resume=auto, logging every sample index read."""
    import torch.distributed as dist

    from runtime import data
    from runtime.engine import RunOptions
    from runtime.train import TrainConfig, train

    log = Path(log_dir) / f"rank{dist.get_rank()}.jsonl"
    original = data.SyntheticSource.sample

    def sample(self, index: int):
        with open(log, "a") as f:  # a test log, not a product file
            f.write(json.dumps(index) + "\n")
        return original(self, index)

    data.SyntheticSource.sample = sample
    train(Plan.load(plan_path), RunOptions(),
          TrainConfig(steps=steps, checkpoint_dir=ckpt_dir, checkpoint_every=EVERY, resume="auto"))
    return 0


def indices(log_dir: Path, rank: int) -> list[int]:
    p = Path(log_dir) / f"rank{rank}.jsonl"
    return [json.loads(l) for l in p.read_text().split()] if p.exists() else []


@dataclass(frozen=True)
class Reference:
    plan_path: Path
    checkpoints: Path
    sample_logs: Path
