"""Twin tests: every tensor-parallel layer against the full layer it was sliced from (picotron-style).

For each layer: same keyed initialisation, same input; compare the output, the input gradient and
every weight-gradient slice (the sharded layer's local gradient vs the matching slice of the full
layer's gradient). float64 throughout, so the only differences are summation order in the
all-reduces: tolerance 1e-12.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, distribute_tensor

from planner.model_presets import PRESETS
from runtime.local_launch import launch
from runtime.model import ChunkSpec, build_chunk
from runtime.tensor_parallel import parallelize_chunk, reduce_partial_grads, vocab_parallel_cross_entropy

TOL = 1e-12  # float64; only the reduction order differs


def _grad_slice_diff(full: torch.nn.Module, par: torch.nn.Module) -> float:
    reduce_partial_grads(par)  # sequence-parallel norm grads arrive as Partial(sum)
    worst = 0.0
    full_params = dict(full.named_parameters())
    for name, p in par.named_parameters():
        g_full = full_params[name].grad
        if isinstance(p, DTensor):
            want = distribute_tensor(g_full, p.device_mesh, p.placements).to_local()
            got = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
        else:
            want, got = g_full, p.grad
        assert got.shape == want.shape, name
        worst = max(worst, (got - want).abs().max().item())
    return worst


def _block_twin(model: str, sequence_parallel: bool) -> dict[str, float]:
    torch.manual_seed(0)
    spec = PRESETS[model]
    full = build_chunk(spec, ChunkSpec(1, 2, False, False), seed=3, dtype=torch.float64)
    par = copy.deepcopy(full)
    mesh = DeviceMesh("cpu", list(range(dist.get_world_size())), mesh_dim_names=("tp",))
    parallelize_chunk(par, mesh, sequence_parallel)
    x = torch.randn(2, 16, spec.hidden_size, dtype=torch.float64)
    dy = torch.randn(2, 16, spec.hidden_size, dtype=torch.float64)
    xf = x.clone().requires_grad_()
    yf = full(xf)
    yf.backward(dy)
    tp, r = dist.get_world_size(), dist.get_rank()
    if sequence_parallel:
        sl = slice(r * 16 // tp, (r + 1) * 16 // tp)
        xp = x[:, sl].clone().requires_grad_()
        yp = par(xp)
        yp.backward(dy[:, sl])
        out = (yp - yf[:, sl]).abs().max().item()
        gin = (xp.grad - xf.grad[:, sl]).abs().max().item()
    else:
        xp = x.clone().requires_grad_()
        yp = par(xp)
        yp.backward(dy)
        out = (yp - yf).abs().max().item()
        gin = (xp.grad - xf.grad).abs().max().item()
    return {"out": out, "in_grad": gin, "w_grad": _grad_slice_diff(full, par)}


def _embed_head_twin(model: str, sequence_parallel: bool) -> dict[str, float]:
    """Vocab-parallel embedding + head + vocab-parallel loss (a chunk with no layers)."""
    spec = PRESETS[model]
    full = build_chunk(spec, ChunkSpec(0, 0, True, True), seed=5, dtype=torch.float64)
    par = copy.deepcopy(full)
    mesh = DeviceMesh("cpu", list(range(dist.get_world_size())), mesh_dim_names=("tp",))
    parallelize_chunk(par, mesh, sequence_parallel)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, spec.vocab_size, (2, 16), generator=g)
    tgt = torch.randint(0, spec.vocab_size, (2, 16), generator=g)
    loss_f = torch.nn.functional.cross_entropy(full(ids).flatten(0, 1), tgt.flatten())
    loss_f.backward()
    logits = par(ids)
    tp, r = dist.get_world_size(), dist.get_rank()
    v = spec.vocab_size // tp
    loss_p = vocab_parallel_cross_entropy(logits, tgt, mesh.get_group())
    loss_p.backward()
    out = (logits - full(ids).detach()[..., r * v:(r + 1) * v]).abs().max().item()
    return {"out": out, "loss": abs(loss_p.item() - loss_f.item()), "w_grad": _grad_slice_diff(full, par)}


@pytest.mark.parametrize("model, sp", [("tiny-llama", False), ("tiny-llama", True), ("tiny-gpt", False),
                                       ("tiny-gpt", True)])
def test_block_twin(model: str, sp: bool) -> None:
    for diffs in launch(_block_twin, 2, model, sp):
        assert max(diffs.values()) < TOL, diffs


@pytest.mark.parametrize("model, sp", [("tiny-llama", False), ("tiny-gpt", True)])
def test_vocab_parallel_embedding_head_and_loss_twin(model: str, sp: bool) -> None:
    # tiny-gpt has tied embeddings and learned positions: exercises re-tying and the SP split
    for diffs in launch(_embed_head_twin, 2, model, sp):
        assert max(diffs.values()) < TOL, diffs


def _ce_only() -> float:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 8, dtype=torch.float64, generator=g)
    tgt = torch.randint(0, 8, (6,), generator=g)
    full = logits.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(full, tgt)
    ref.backward()
    r, tp = dist.get_rank(), dist.get_world_size()
    part = logits[:, r * 8 // tp:(r + 1) * 8 // tp].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(part[None], tgt[None], dist.group.WORLD)
    loss.backward()
    return max(abs(loss.item() - ref.item()), (part.grad - full.grad[:, r * 8 // tp:(r + 1) * 8 // tp]).abs().max().item())


def test_vocab_parallel_cross_entropy_four_ranks() -> None:
    assert max(launch(_ce_only, 4)) < TOL
