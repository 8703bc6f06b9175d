"""Layout-independent views of a rank's parameters and optimizer state.

Every parameter is named by its global name (``runtime.model.canonical_name``) and presented as a
DTensor carrying its TP / FSDP placement (or a plain tensor when replicated), so a checkpoint
written under one plan loads under another (DCP reshards DTensors), and a parallel run's parameters
can be compared with the single-process model's element by element.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from runtime.grads import unwrap
from runtime.model import canonical_name, registered
from runtime.optim import inner_optimizer
from runtime.tensor_parallel import TP_SPEC_ATTR


def named_params(chunks: list[nn.Module], *, include_tied_copy: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
    """(global name, parameter) of this rank; the tied head copy (another stage's embedding) is
    skipped unless asked for, so each logical parameter appears once per holder."""
    seen: set[int] = set()
    for c in chunks:
        m = unwrap(c)
        for name, p in m.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if m.holds_tied_copy and name == "head.output.weight" and not include_tied_copy:
                continue
            yield canonical_name(m, name), p


def as_global(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` (the parameter ``like`` or a tensor shaped like its local data) with ``like``'s placement."""
    if isinstance(like, DTensor):
        if isinstance(t, DTensor):
            return t
        return DTensor.from_local(t, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                                  stride=like.stride())
    spec = getattr(like, TP_SPEC_ATTR, None)  # TP shard localised for DDP
    if spec is not None:
        return DTensor.from_local(t, spec.mesh, spec.placements, run_check=False, shape=spec.shape, stride=spec.stride)
    return t


def local_of(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def full_params(chunks: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter of this rank at full (unsharded) shape; collective over TP / FSDP groups."""
    out = {}
    for name, p in named_params(chunks):
        g = as_global(p.data if not isinstance(p, DTensor) else p, p)
        out[name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().clone()
    return out


def model_state(chunks: list[nn.Module], *, for_load: bool = False) -> dict[str, torch.Tensor]:
    """{'model.<name>': tensor} views sharing storage with the parameters (DCP loads in place)."""
    out = {}
    for name, p in named_params(chunks, include_tied_copy=for_load):
        key = f"model.{name}"
        if key in out:  # the tied copy on a rank that also holds the embedding: loaded once, copied later
            continue
        out[key] = as_global(p.data if not isinstance(p, DTensor) else p, p)
    return out


def tied_copies(chunks: list[nn.Module]) -> list[tuple[nn.Parameter, nn.Parameter | None]]:
    """(copy, source on this rank or None) for tied head copies, to refresh after a load."""
    models = [unwrap(c) for c in chunks]
    emb = next((registered(m.embed.tok_embeddings) for m in models if m.embed is not None), None)
    return [(registered(m.head.output), emb) for m in models if m.holds_tied_copy]


def optimizer_state(chunks: list[nn.Module], opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """{'optim.<name>.<key>': tensor} for the parameters whose state lives on this rank."""
    inner = inner_optimizer(opt)
    out = {}
    for name, p in named_params(chunks):
        st = inner.state.get(p)
        if not st:
            continue
        for k, v in st.items():
            if not torch.is_tensor(v):
                continue
            out[f"optim.{name}.{k}"] = as_global(v, p) if v.shape == local_of(p).shape and v.dim() > 0 else v
    return out
