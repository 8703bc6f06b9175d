"""Tensor (and sequence) parallelism with torch's tensor-parallel styles, plus the vocab-parallel loss.

Megatron-LM's layout (Shoeybi et al. 2019 Sec. 3; Korthikanti et al. 2022 for sequence parallel),
expressed as torch ``parallelize_module`` plans as in torchtitan:

* attention: wq / wk / wv column-parallel (each rank holds heads/tp query heads and kv_heads/tp key /
  value heads, so GQA groups stay whole), wo row-parallel; MLP: w1 / w3 (fc1) column-parallel,
  w2 (fc2) row-parallel: one all-reduce per sub-block in forward and one in backward;
* embedding: vocab-parallel (``RowwiseParallel`` on nn.Embedding: rows = vocabulary, masked lookup,
  all-reduce); the head: column-parallel over the vocabulary, leaving each rank its logits slice
  [B, S, V/tp], consumed by ``vocab_parallel_cross_entropy`` without ever gathering the logits;
* sequence parallel: norms run on the rank's sequence slice (``SequenceParallel``), attention / MLP
  inputs are all-gathered along the sequence (``PrepareModuleInput``) and the row-parallel outputs
  are reduce-scattered (``output_layouts=Shard(1)``): the residual stream between blocks (and
  between pipeline stages) is the local [B, S/tp, D] slice as a plain tensor.

MoE FFNs (``runtime.moe``) are left alone: they handle TP themselves (replicated experts).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from planner.errors import ConfigError
from runtime.model import MLP, ModelChunk


def block_plan(block: nn.Module, sequence_parallel: bool) -> dict[str, object]:
    """The parallelize_module plan of one transformer block (keys relative to the block)."""
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, object] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=seq),
    }
    if isinstance(block.feed_forward, MLP):
        if block.feed_forward.swiglu:
            plan.update({"feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
                         "feed_forward.w2": RowwiseParallel(output_layouts=seq)})
        else:
            plan.update({"feed_forward.fc1": ColwiseParallel(),
                         "feed_forward.fc2": RowwiseParallel(output_layouts=seq)})
    if sequence_parallel:
        plan.update({
            "attention_norm": SequenceParallel(),
            "ffn_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        })
        if isinstance(block.feed_forward, MLP):
            plan["feed_forward"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return plan


def parallelize_chunk(chunk: ModelChunk, tp_mesh: DeviceMesh, sequence_parallel: bool) -> ModelChunk:
    """Shard ``chunk`` in place over ``tp_mesh``; the full (keyed) initialisation is sliced, not redrawn."""
    tp = tp_mesh.size()
    spec = chunk.spec
    if spec.vocab_size % tp:
        raise ConfigError(f"tensor parallel degree {tp} does not divide the vocabulary ({spec.vocab_size}); the "
                          "vocab-parallel embedding and loss need equal slices")
    seq = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, object] = {}
    if chunk.embed is not None:
        plan["embed.tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        if sequence_parallel:
            # Positions are added on the full sequence, then each rank keeps its slice (backward: all-gather).
            plan["embed"] = PrepareModuleOutput(output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),))
    if chunk.head is not None:
        if sequence_parallel:
            plan["head.norm"] = SequenceParallel()
        plan["head.output"] = ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1), use_local_output=True)
    for name, block in chunk.layers.items():
        for key, style in block_plan(block, sequence_parallel).items():
            plan[f"layers.{name}.{key}"] = style
    tied = chunk.embed is not None and chunk.head is not None and chunk.head.output.weight is chunk.embed.tok_embeddings.weight
    parallelize_module(chunk, tp_mesh, plan)
    if tied:
        # Both styles shard the (V, D) weight by vocabulary rows (Shard(0)): re-tie the two DTensors.
        chunk.head.output.weight = chunk.embed.tok_embeddings.weight
    return chunk


class _VocabParallelCE(torch.autograd.Function):
    """Cross-entropy over logits split by vocabulary across the TP group (Megatron-LM
    ``vocab_parallel_cross_entropy``): max, sum-exp and the target logit are all-reduced, the
    gradient softmax - onehot is formed locally. Returns per-token losses (identical on every rank)."""

    @staticmethod
    def forward(ctx, logits_NV: torch.Tensor, target_N: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        v_local = logits_NV.shape[-1]
        start = dist.get_rank(group) * v_local
        logits = logits_NV.float() if logits_NV.dtype in (torch.float16, torch.bfloat16) else logits_NV
        m = logits.max(dim=-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - m[:, None]
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        local_t = target_N - start
        mine = (local_t >= 0) & (local_t < v_local)
        idx = local_t.clamp(0, v_local - 1)
        tgt = torch.where(mine, shifted.gather(1, idx[:, None]).squeeze(1), torch.zeros_like(m))
        dist.all_reduce(tgt, group=group)
        loss = sum_exp.log() - tgt
        ctx.save_for_backward(exp / sum_exp[:, None], idx, mine)
        ctx.in_dtype = logits_NV.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_N: torch.Tensor):
        softmax, idx, mine = ctx.saved_tensors
        grad = softmax.clone()
        grad[torch.arange(grad.shape[0], device=grad.device), idx] -= mine.to(grad.dtype)
        return (grad * grad_N[:, None]).to(ctx.in_dtype), None, None


def vocab_parallel_cross_entropy(logits_BSV: torch.Tensor, target_BS: torch.Tensor,
                                 tp_group: dist.ProcessGroup | None) -> torch.Tensor:
    """Mean token cross-entropy; ``logits_BSV`` is this rank's vocabulary slice (the full logits when
    ``tp_group`` is None). Every TP rank returns the same value."""
    logits = logits_BSV.reshape(-1, logits_BSV.shape[-1])
    target = target_BS.reshape(-1)
    if tp_group is None or dist.get_world_size(tp_group) == 1:
        return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, target)
    return _VocabParallelCE.apply(logits, target, tp_group).mean()


@torch.no_grad()
def reduce_partial_grads(module: nn.Module) -> None:
    """Turn pending-sum gradients into the parameter's placement.

    A sequence-parallel norm weight is a Replicate DTensor whose gradient autograd leaves as
    ``Partial(sum)`` (each rank saw its sequence slice); the optimizer would reduce it lazily, but the
    gradient norm, clipping and checkpoints must see the reduced value, so it is all-reduced here.
    Pending sums over the same mesh are reduced in one all-reduce of their concatenation: one per norm
    weight cost 17 collectives per step on an 8-layer tp4 model, ~100 ms of gloo latency on the 2-core
    host (bench/measured_loop.py), where the sum itself is a few kilobytes.
    """
    batches: dict[int, list[nn.Parameter]] = {}
    for p in module.parameters():
        g = p.grad
        if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
            if _is_pending_sum(g, p):
                batches.setdefault(id(g.device_mesh), []).append(p)
            else:
                p.grad = g.redistribute(p.device_mesh, p.placements)
    for params in batches.values():
        locals_ = [p.grad.to_local() for p in params]
        if len(params) == 1:
            params[0].grad = params[0].grad.redistribute(params[0].device_mesh, params[0].placements)
            continue
        flat = torch.cat([t.reshape(-1) for t in locals_])
        dist.all_reduce(flat, group=params[0].grad.device_mesh.get_group())
        offset = 0
        for p, t in zip(params, locals_):
            n = t.numel()
            p.grad = DTensor.from_local(flat[offset:offset + n].view_as(t), p.device_mesh, p.placements,
                                        run_check=False)
            offset += n


def _is_pending_sum(g: DTensor, p: nn.Parameter) -> bool:
    """A 1-D mesh gradient that is Partial(sum) where its parameter is Replicate (the SP norm case)."""
    return (g.device_mesh.ndim == 1 and len(g.placements) == 1 and isinstance(g.placements[0], Partial)
            and g.placements[0].reduce_op == "sum" and isinstance(p.placements[0], Replicate)
            and g.device_mesh == p.device_mesh and g.dtype == p.dtype)


TP_SPEC_ATTR = "_hp_tp_spec"
"""On a localised parameter: the DTensorSpec (mesh, placements, global shape) it was sliced with."""


def _install_views(module: nn.Module, _args) -> None:
    for name, p in module._parameters.items():
        spec = getattr(p, TP_SPEC_ATTR, None) if p is not None else None
        if spec is not None:
            module.__dict__[name] = DTensor.from_local(p, spec.mesh, spec.placements, run_check=False,
                                                       shape=spec.shape, stride=spec.stride)


def localize_for_ddp(module: nn.Module) -> nn.Module:
    """Let DDP (and its communication hooks) see tensor-parallel parameters as plain local shards.

    DDP does not accept DTensor parameters. Each DTensor parameter is replaced by a Parameter over its
    local shard (registered, so DDP, the optimizer and ``named_parameters`` see it), and a forward
    pre-hook on the owning module places a fresh ``DTensor.from_local`` view of it in the module's
    ``__dict__``, which attribute lookup prefers over ``_parameters``: the TP styles compute with the
    DTensor, autograd routes its gradient (Partial sums reduced by from_local's backward) to the
    local Parameter. Unlike ``torch.distributed.tensor.parallel.ddp._pre_dp_module_transform``
    (which unregisters the parameters after the first forward and breaks the second step), the
    parameters stay registered and the hook also runs inside activation recomputation.
    Tied parameters stay tied (one local Parameter for one DTensor).
    """
    local_of: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        touched = False
        for name, p in list(sub._parameters.items()):
            if not isinstance(p, DTensor):
                continue
            lp = local_of.get(id(p))
            if lp is None:
                lp = nn.Parameter(p.to_local().detach().clone(), requires_grad=p.requires_grad)
                setattr(lp, TP_SPEC_ATTR, p._spec)
                local_of[id(p)] = lp
            sub._parameters[name] = lp
            touched = True
        if touched:
            sub.register_forward_pre_hook(_install_views)
    return module
