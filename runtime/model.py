"""Reference decoder-only transformers built from ModelSpec: GPT (LayerNorm, GeLU, learned positions,
tied embeddings, biases) and Llama (RMSNorm, SwiGLU, GQA, RoPE); MoE FFNs through ``runtime.moe``.

A ``ModelChunk`` holds a contiguous range of layers and, optionally, the embedding and the head:
the whole model is the chunk with every layer, a pipeline stage is a chunk with its plan range.
Parameter names are global (``layers.<global index>.attention.wq.weight``), so a checkpoint and a
comparison with the single-process model never depend on the stage split (torchtitan does the same
with a ModuleDict keyed by layer id).

Initialisation is keyed, not sequential: every tensor is drawn from a generator seeded by
``(seed, parameter name)`` at its full (unsharded) shape, before any parallelism slices it. So the
shards of every layout are slices of one master initialisation and results do not depend on the
degrees. Init: N(0, 0.02) for matrices and embeddings; output projections (wo, w2 / fc2) use
0.02 / sqrt(2 L) (GPT-2, Radford et al. 2019 Sec. 2.3; Megatron-LM ``output_layer_init_method``);
biases 0, norm weights 1.

MoE seam: for ``spec.is_moe_layer(i)`` the block's FFN is
``runtime.moe.build_moe_ffn(spec, i, ep_group, expert_placement, tp_group, seed=seed)``, a module
mapping ``x_BSD -> y_BSD`` over the tokens this rank holds (with sequence parallelism: its sequence
slice). Its parameters flagged ``_hybridplan_expert`` are reduced over the 'edp' group by
``runtime.data_parallel``; its auxiliary loss gradient is attached inside the module (so it also
works on middle pipeline stages), and the runtime only logs ``aux_loss`` and ``tokens_per_expert``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from planner.errors import ConfigError
from planner.model_spec import ModelSpec

INIT_STD = 0.02
"""GPT-2 / Megatron-LM init_method_std."""
ROPE_THETA = 10000.0
"""RoPE base (Su et al. 2021); ModelSpec carries no rope_theta, so Llama-2's default is used."""
NORM_EPS = 1e-5
TIED_HEAD_KEY = "tok_embeddings.weight"
"""Checkpoint / comparison name of the output weight when embeddings are tied."""


@dataclass(frozen=True)
class ChunkSpec:
    """What one model chunk holds: layers [first_layer, last_layer) plus embedding and/or head."""

    first_layer: int
    last_layer: int
    has_embedding: bool
    has_head: bool


def keyed_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def keyed_normal_(t: torch.Tensor, std: float, seed: int, name: str) -> None:
    g = torch.Generator().manual_seed(keyed_seed(seed, name))
    t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).mul_(std).to(t.dtype))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(spec: ModelSpec, dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=NORM_EPS) if spec.norm == "layernorm" else RMSNorm(dim)


@functools.lru_cache(maxsize=32)
def rope_cos_sin(seq_len: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [S, head_dim/2] for rotary embeddings (Su et al. 2021, eq. 34), computed in float64
    (cached: every layer of every step asks for the same table)."""
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x_BSHd: torch.Tensor, cos_Sd: torch.Tensor, sin_Sd: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) (the interleaved convention of the Llama reference code)."""
    x = x_BSHd.unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_Sd[None, :, None, :], sin_Sd[None, :, None, :]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention. Head counts are read from the (possibly
    tensor-parallel) projection outputs, so the same code runs on a shard holding heads/tp heads."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.is_mla:
            raise ConfigError(f"model {spec.name}: multi-head latent attention (MLA) is not implemented by the runtime")
        h, d = spec.hidden_size, spec.dim_per_head
        qkv_bias = spec.linear_bias or spec.qkv_bias
        self.head_dim = d
        self.q_per_kv = spec.num_heads // spec.kv_heads
        self.rope = spec.position_embedding == "rope"
        self.wq = nn.Linear(h, spec.num_heads * d, bias=qkv_bias)
        self.wk = nn.Linear(h, spec.kv_heads * d, bias=qkv_bias)
        self.wv = nn.Linear(h, spec.kv_heads * d, bias=qkv_bias)
        self.wo = nn.Linear(spec.num_heads * d, h, bias=spec.linear_bias)
        self.q_norm = RMSNorm(d) if spec.qk_norm else None
        self.k_norm = RMSNorm(d) if spec.qk_norm else None
        self.selective_recompute = False
        """Recompute the attention core (QK^T, softmax, AV) in backward: Korthikanti et al. 2022 Sec 4.2."""

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k = k.repeat_interleave(self.q_per_kv, dim=1)
        v = v.repeat_interleave(self.q_per_kv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, _ = x_BSD.shape
        q = self.wq(x_BSD).view(B, S, -1, self.head_dim)
        k = self.wk(x_BSD).view(B, S, -1, self.head_dim)
        v = self.wv(x_BSD).view(B, S, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            cos, sin = rope_cos_sin(S, self.head_dim, q.dtype, q.device)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.selective_recompute and torch.is_grad_enabled():
            o = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            o = self._core(q, k, v)
        return self.wo(o.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    """GeLU MLP (fc1, fc2) or SwiGLU (w1 gate, w3 up, w2 down; Shazeer 2020)."""

    def __init__(self, spec: ModelSpec, ffn: int):
        super().__init__()
        h, b = spec.hidden_size, spec.linear_bias
        self.swiglu = spec.activation == "swiglu"
        if self.swiglu:
            self.w1, self.w3, self.w2 = nn.Linear(h, ffn, bias=b), nn.Linear(h, ffn, bias=b), nn.Linear(ffn, h, bias=b)
        else:
            self.fc1, self.fc2 = nn.Linear(h, ffn, bias=b), nn.Linear(ffn, h, bias=b)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.w2(F.silu(self.w1(x_BSD)) * self.w3(x_BSD))
        return self.fc2(F.gelu(self.fc1(x_BSD), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, spec: ModelSpec, layer: int, ffn: nn.Module):
        super().__init__()
        self.layer = layer
        self.attention_norm = make_norm(spec, spec.hidden_size)
        self.attention = Attention(spec)
        self.ffn_norm = make_norm(spec, spec.hidden_size)
        self.feed_forward = ffn
        self.full_recompute = False
        """Recompute the whole block in backward (Chen et al. 2016; Megatron 'full' recompute)."""

    def _forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        h = x_BSD + self.attention(self.attention_norm(x_BSD))
        return h + self.feed_forward(self.ffn_norm(h))

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if self.full_recompute and torch.is_grad_enabled():
            return checkpoint(self._forward, x_BSD, use_reentrant=False)
        return self._forward(x_BSD)


class Embedding(nn.Module):
    """Token embedding (+ learned positions). Output: hidden states [B, S, D]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos_embeddings = (nn.Embedding(spec.position_rows, spec.hidden_size)
                               if spec.position_embedding == "learned" else None)

    def forward(self, ids_BS: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(ids_BS)
        if self.pos_embeddings is not None:
            h = h + self.pos_embeddings.weight[: ids_BS.shape[1]]
        return h


class Head(nn.Module):
    """Final norm + output projection to vocabulary logits (no bias; GPT-2, Llama)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.norm = make_norm(spec, spec.hidden_size)
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(x_BSD))


class ModelChunk(nn.Module):
    """Layers [first, last) of the model, with the embedding first and / or the head last."""

    def __init__(self, spec: ModelSpec, chunk: ChunkSpec, blocks: dict[int, Block]):
        super().__init__()
        self.spec, self.chunk = spec, chunk
        self.embed = Embedding(spec) if chunk.has_embedding else None
        self.layers = nn.ModuleDict({str(i): blocks[i] for i in range(chunk.first_layer, chunk.last_layer)})
        self.head = Head(spec) if chunk.has_head else None
        if self.embed is not None and self.head is not None and spec.tied_embeddings:
            self.head.output.weight = self.embed.tok_embeddings.weight

    @property
    def holds_tied_copy(self) -> bool:
        """The head's output weight is a separate copy of the (tied) embedding held on another chunk."""
        return self.spec.tied_embeddings and self.head is not None and self.embed is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for block in self.layers.values():
            h = block(h)
        return self.head(h) if self.head is not None else h


def registered(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The parameter registered under ``name`` (attribute access may return a DTensor view of it
    during forward, see runtime.tensor_parallel.localize_for_ddp)."""
    return module._parameters[name]


def canonical_name(chunk: ModelChunk, name: str) -> str:
    """Layout-independent name of a parameter (the tied head copy is the embedding weight)."""
    name = name.replace("_orig_mod.", "").replace("module.", "")
    if name == "head.output.weight" and chunk.spec.tied_embeddings:
        return "embed." + TIED_HEAD_KEY
    return name


@torch.no_grad()
def init_chunk_(chunk: ModelChunk, seed: int) -> None:
    """Keyed initialisation of every non-expert parameter at full shape (see the module docstring)."""
    spec = chunk.spec
    out_std = INIT_STD / math.sqrt(2 * spec.num_layers)
    for name, p in chunk.named_parameters(remove_duplicate=False):
        if getattr(p, "_hybridplan_expert", False) or ".feed_forward." in name and _is_moe(chunk, name):
            continue  # the MoE module initialises itself (keyed by expert id)
        key = canonical_name(chunk, name)
        leaf = key.rsplit(".", 1)[-1]
        if "norm" in key.rsplit(".", 2)[-2] and leaf in ("weight", "bias"):
            p.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            p.zero_()
        elif key.endswith(("wo.weight", "w2.weight", "fc2.weight")):
            keyed_normal_(p, out_std, seed, key)
        else:
            keyed_normal_(p, INIT_STD, seed, key)


def _is_moe(chunk: ModelChunk, name: str) -> bool:
    layer = name.split(".")[1]
    return chunk.spec.is_moe_layer(int(layer))


def build_chunk(spec: ModelSpec, chunk: ChunkSpec, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", ep_group=None, expert_placement: list[list[int]] | None = None,
                tp_group=None, full_recompute_layers: int = 0, recompute: str = "none") -> ModelChunk:
    """Build and initialise one chunk. ``full_recompute_layers`` of its first layers use full recompute;
    ``recompute`` ('none' | 'selective' | 'full') applies to the rest."""
    if not 0 <= chunk.first_layer <= chunk.last_layer <= spec.num_layers:
        raise ConfigError(f"chunk layers [{chunk.first_layer}, {chunk.last_layer}) outside the model's "
                          f"{spec.num_layers} layers")
    blocks: dict[int, Block] = {}
    for i in range(chunk.first_layer, chunk.last_layer):
        if spec.is_moe_layer(i):
            blocks[i] = Block(spec, i, _moe_ffn(spec, i, ep_group, expert_placement, tp_group, seed))
        else:
            blocks[i] = Block(spec, i, MLP(spec, spec.ffn_hidden_size))
        k = i - chunk.first_layer
        mode = "full" if k < full_recompute_layers else recompute
        blocks[i].full_recompute = mode == "full"
        blocks[i].attention.selective_recompute = mode == "selective"
    model = ModelChunk(spec, chunk, blocks)
    init_chunk_(model, seed)
    return model.to(device=device, dtype=dtype)


def _moe_ffn(spec: ModelSpec, layer: int, ep_group, placement, tp_group, seed: int) -> nn.Module:
    try:
        from runtime.moe import build_moe_ffn
    except ImportError as exc:
        raise ConfigError(f"model {spec.name} has MoE layers but runtime.moe is not available ({exc})") from None
    return build_moe_ffn(spec, layer, ep_group, placement, tp_group, seed=seed)


def build_full_model(spec: ModelSpec, **kwargs) -> ModelChunk:
    """The single-process reference: every layer, the embedding and the head in one chunk."""
    return build_chunk(spec, ChunkSpec(0, spec.num_layers, True, True), **kwargs)


def torch_dtype(name: str) -> torch.dtype:
    table = {"fp32": torch.float32, "float32": torch.float32, "fp64": torch.float64, "float64": torch.float64,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"unknown dtype {name!r} (expected one of {', '.join(sorted(table))})")
    return table[name]
