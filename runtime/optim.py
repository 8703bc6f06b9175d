"""Optimizers (AdamW, SGD) over this rank's parameters, ZeRO-1 state sharding, and the optimizer state
in layout-independent form for checkpoints.

ZeRO-1 (Rajbhandari et al. 2020, P_os) is ``torch.distributed.optim.ZeroRedundancyOptimizer`` over
the 'dp' group: gradients are still all-reduced by DDP, each rank keeps the optimizer state of the
parameters it owns, updates them, and broadcasts them. ZeRO-2/3 need nothing here: FSDP2 parameters
are dp-sharded DTensors, so a plain optimizer already holds only this rank's shard of the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from planner.errors import ConfigError
from runtime.mesh import Topology

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class OptimConfig:
    """Hyper-parameters; defaults are nanoGPT-style small-model values."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.0
    """SGD only."""
    max_grad_norm: float | None = 1.0
    """Global-norm clipping threshold; None or 0 disables it."""

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr!r}")


def _cls_kwargs(cfg: OptimConfig) -> tuple[type, dict]:
    if cfg.name == "adamw":
        # foreach=False: the per-parameter loop handles DTensor and plain tensors alike, and its
        # arithmetic is the reference's (same kernel order), which keeps twin comparisons tight.
        return torch.optim.AdamW, {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay,
                                   "foreach": False}
    return torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay,
                             "foreach": False}


def build_optimizer(modules: list[nn.Module], cfg: OptimConfig, topo: Topology | None = None,
                    zero1: bool = False) -> torch.optim.Optimizer:
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    cls, kwargs = _cls_kwargs(cfg)
    if zero1 and topo is not None and topo.dp_group is not None:
        return ZeroRedundancyOptimizer(params, optimizer_class=cls, process_group=topo.dp_group, **kwargs)
    return cls(params, **kwargs)


def inner_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (ZeRO-1 wraps a local one)."""
    return opt.optim if isinstance(opt, ZeroRedundancyOptimizer) else opt


def owned_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters whose optimizer state lives on this rank."""
    return [p for g in inner_optimizer(opt).param_groups for p in g["params"]]


def ensure_state(opt: torch.optim.Optimizer) -> None:
    """Create zero optimizer state for owned parameters that have none yet (before a checkpoint load
    fills it in): a step with all-zero gradients and lr 0 would also move AdamW's step count, so the
    state is made directly in the optimizer's own layout."""
    inner = inner_optimizer(opt)
    for g in inner.param_groups:
        for p in g["params"]:
            st = inner.state[p]
            if st:
                continue
            if isinstance(inner, torch.optim.AdamW):
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif isinstance(inner, torch.optim.SGD) and g.get("momentum", 0):
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
