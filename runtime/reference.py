"""The single-process twin of a plan: the whole model in one process, no parallelism at all.

It sees the same samples in the same order as the parallel run: each global batch is cut into the
``dp x micro-batches`` pieces of ``micro_batch_size`` sequences that the data-parallel ranks and the
pipeline schedule process (data-parallel rank d, micro-batch j is piece d*m + j); gradients are
accumulated over the pieces and divided by their number, which is exactly what DP averaging and
``scale_grads`` do. For a dense model this equals one backward of the whole batch's mean loss; for
MoE it also matches the per-piece auxiliary losses. Clipping uses ``clip_grad_norm_``.

Written independently of ``runtime.engine`` (no mesh, no wrappers, its own loop), so a bug in the
parallel path cannot hide by being shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner.plan import Plan
from runtime.data import BatchLoader, make_source
from runtime.model import build_full_model, canonical_name, torch_dtype
from runtime.optim import build_optimizer


@dataclass
class ReferenceResult:
    losses: list[float]
    params: dict[str, torch.Tensor]
    """Global name -> parameter after the last optimizer step."""
    grad_norms: list[float]


def run_reference(plan: Plan, options, steps: int) -> ReferenceResult:
    """``options`` is a runtime.engine.RunOptions."""
    cfg, spec = plan.config, plan.model
    model = build_full_model(spec, seed=options.seed, dtype=torch_dtype(options.dtype),
                             expert_placement=[list(p) for p in plan.expert_placement] or None)
    opt = build_optimizer([model], options.optim)
    loader = BatchLoader(make_source(options.data, spec.vocab_size, cfg.seq_len, options.seed),
                         cfg.global_batch_size, dp=1, dp_rank=0)
    pieces = cfg.dp * cfg.num_micro_batches
    b = cfg.micro_batch_size
    losses, norms = [], []
    for _ in range(steps):
        inputs, labels = loader.next_batch()
        opt.zero_grad(set_to_none=True)
        piece_losses = []
        for i in range(pieces):
            logits = model(inputs[i * b:(i + 1) * b])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[i * b:(i + 1) * b].flatten())
            loss.backward()
            piece_losses.append(loss.detach())
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(pieces)
        max_norm = options.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
        norms.append(float(norm))
        opt.step()
        losses.append(torch.stack(piece_losses).double().mean().item())
    params = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params[canonical_name(model, name)] = p.detach().clone()
    return ReferenceResult(losses, params, norms)
