"""LayerGraph: the model as a DAG of blocks, each with parameters, FLOPs, activation bytes and the
communication a parallel axis induces on it; identical repeated blocks share one ``Block`` object.

Blocks: ``embedding`` -> per layer ``attention`` (with its input norm) -> ``mlp`` or ``moe`` (with its input
norm) -> ``head`` (final norm, output projection, cross-entropy). Every quantity is a *coefficient per token*
of one micro-batch (forward pass, before any parallel split), so the cost model evaluates a block at any
(micro-batch, sequence, tp, sp, ep) without walking the graph: the graph is built once, the hot path uses
``LayerGraph.layer_types`` (a few distinct blocks, each with the layer indices that use it).

Sources: FLOPs of a matmul = 2 x its multiply-adds (Narayanan et al. 2021 App. / Kaplan et al. 2020);
attention core QK^T and AV = 4 s h per token over the full s x s matrix (Korthikanti et al. 2022 App. A,
the convention of their eq. 7 MFU). Activation bytes: Korthikanti et al. 2022 Sec 4.1 (16-bit tensors, 1-byte
dropout masks), generalised to GQA (K, V widths), SwiGLU (gate, up and product kept) and MoE (top-k copies
of each token through the experts). Elementwise (memory-bound) traffic: the reads and writes of Megatron's
fused kernels (layer norm, bias-dropout-add, bias-GeLU / SwiGLU, scale-mask-softmax, dropout), counted below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx

from planner.model_spec import ModelSpec

MASK_BYTES = 1
"""Dropout masks are stored as bytes (Korthikanti et al. 2022 Sec 4.1)."""
LOGIT_BYTES = 4
"""Logits and the loss are computed in fp32 (Korthikanti et al. 2022 Sec 4.3: 4 s b v / t)."""


@dataclass(frozen=True)
class Block:
    """Per-token coefficients of one block kind (one forward pass of one micro-batch).

    Activation and elementwise bytes are split by how tensor parallelism (Megatron, Shoeybi et al. 2019)
    divides them: ``*_rep`` are replicated over the TP group (split only with sequence parallelism),
    ``*_tp`` are split over TP, ``*_core_per_seq`` scale with tokens x sequence length (attention scores,
    split over TP), ``*_expert`` belong to the routed-expert path (tokens x top-k, split over EP).
    """

    kind: str
    """'embedding', 'attention', 'mlp', 'moe' or 'head' (planner.profile.BLOCK_KINDS)."""
    params: int
    """All parameter elements of the block."""
    replicated_params: int = 0
    """Elements every TP rank holds in full (norms, row-parallel biases, router)."""
    expert_params: int = 0
    """Routed-expert elements: split over EP ranks (not over TP; experts are whole on an EP rank)."""
    gemm_flops: float = 0.0
    """Dense matmul FLOPs per token (split over TP)."""
    expert_gemm_flops: float = 0.0
    """Routed-expert matmul FLOPs per token (top-k experts; tokens split over EP)."""
    core_flops_per_seq: float = 0.0
    """Attention QK^T + AV FLOPs per token per key position (full s x s; split over TP)."""
    act_rep: float = 0.0
    act_tp: float = 0.0
    act_core_per_seq: float = 0.0
    act_expert: float = 0.0
    ew_rep: float = 0.0
    ew_tp: float = 0.0
    ew_core_per_seq: float = 0.0
    ew_expert: float = 0.0
    tp_collectives: int = 0
    """TP all-reduces in forward (Narayanan et al. 2021 Sec 3.2: f/g operators; with SP an all-gather +
    reduce-scatter pair replaces each); backward has as many."""
    a2a_bytes: float = 0.0
    """EP all-to-all bytes per token for one dispatch (combine moves as many): h x dtype x top-k."""
    top_k: int = 0
    """Experts per token (MoE blocks)."""
    gemm_width: int = 0
    """Representative output width of the block's matmuls before TP split (GEMM efficiency curve)."""
    signature: tuple = field(default=(), compare=False)


def _attention(m: ModelSpec, flash: bool, dropout: bool) -> Block:
    h, a, d, D = m.hidden_size, m.num_heads, m.dim_per_head, m.dtype_bytes
    mask = MASK_BYTES if dropout else 0
    attn_params = m.attention_params()
    norm = m.norm_params()
    if m.is_mla:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q_w, k_w, v_w = a * qk, a * qk, a * m.v_head_dim
        core = 2 * a * (qk + m.v_head_dim)
        matmul = attn_params - (m.q_lora_rank + m.kv_lora_rank)  # norms inside MLA are not matmuls
        width = q_w + k_w + v_w
    else:
        q_w, k_w, v_w = a * d, m.kv_heads * d, m.kv_heads * d
        core = 4 * a * d
        bias = (q_w + k_w + v_w + h) if m.linear_bias else ((q_w + k_w + v_w) if m.qkv_bias else 0)
        matmul = attn_params - bias - (2 * d if m.qk_norm else 0)
        width = q_w + k_w + v_w
    # Korthikanti Sec 4.1 (MHA: 11 sbh + 5 as^2 b, plus the norm input 2 sbh):
    # replicated: norm input, QKV input, output dropout mask; TP-split: Q, K (for QK^T), V, out-proj input;
    # core: softmax output (D), dropout mask (1) and dropout output (D) per score; flash attention keeps none.
    act_rep = D * h + D * h + mask * h
    act_tp = D * (q_w + k_w) + D * v_w + D * q_w
    if flash:
        act_core = 0.0
        act_tp += 4 * a  # fp32 log-sum-exp per head (FlashAttention-2, Dao 2023)
    else:
        act_core = (2 * D + mask) * a if dropout else D * a
    # fused kernels, forward bytes read + written: norm 2D h, bias-dropout-add 3 D h + mask h;
    # scale-mask-softmax 2 D per score, dropout 2 D + mask per score (flash: inside the matmul kernel)
    ew_rep = 2 * D * h + 3 * D * h + mask * h
    ew_core = 0.0 if flash else (2 * D + ((2 * D + mask) if dropout else 0)) * a
    replicated = norm + (h if m.linear_bias else 0)
    return Block(kind="attention", params=attn_params + norm, replicated_params=replicated,
                 gemm_flops=2.0 * matmul, core_flops_per_seq=float(core), act_rep=act_rep, act_tp=act_tp,
                 act_core_per_seq=act_core, ew_rep=ew_rep, ew_core_per_seq=ew_core, tp_collectives=1,
                 gemm_width=width, signature=("attention", flash, dropout))


def _mlp_coeffs(m: ModelSpec, ffn: int) -> tuple[float, float, float]:
    """(matmul elements, activation bytes inside the MLP after its input, elementwise bytes) per token."""
    h, D = m.hidden_size, m.dtype_bytes
    if m.activation == "swiglu":
        # gate and up outputs (2f) and their product (f) are kept; fused SwiGLU reads 2f, writes f
        return 3 * h * ffn, D * 3 * ffn, D * 3 * ffn
    # GeLU input (f) and fc2 input (f) kept (Korthikanti: 8 sbh + 8 sbh at f = 4h); bias-GeLU reads f, writes f
    return 2 * h * ffn, D * 2 * ffn, D * 2 * ffn


def _mlp(m: ModelSpec, dropout: bool) -> Block:
    h, D = m.hidden_size, m.dtype_bytes
    mask = MASK_BYTES if dropout else 0
    matmul, act_inner, ew_inner = _mlp_coeffs(m, m.ffn_hidden_size)
    act_rep = D * h + D * h + mask * h  # norm input, fc1 input, output dropout mask
    ew_rep = 2 * D * h + 3 * D * h + mask * h
    replicated = m.norm_params() + (h if m.linear_bias else 0)
    return Block(kind="mlp", params=m.mlp_params() + m.norm_params(), replicated_params=replicated,
                 gemm_flops=2.0 * matmul, act_rep=act_rep, act_tp=act_inner, ew_rep=ew_rep, ew_tp=ew_inner,
                 tp_collectives=1, gemm_width=m.ffn_hidden_size * (2 if m.activation == "swiglu" else 1),
                 signature=("mlp", dropout))


def _moe(m: ModelSpec, dropout: bool) -> Block:
    h, D, k, E = m.hidden_size, m.dtype_bytes, m.moe_top_k, m.num_experts
    mask = MASK_BYTES if dropout else 0
    e_mat, e_act, e_ew = _mlp_coeffs(m, m.moe_ffn_hidden_size)
    shared = m.shared_ffn_width
    s_mat, s_act, s_ew = _mlp_coeffs(m, shared) if shared else (0, 0, 0)
    router = h * E
    act_rep = D * h + D * h + mask * h + 4 * E  # norm input, router/expert input, mask, fp32 router probs
    ew_rep = 2 * D * h + 3 * D * h + mask * h + 3 * 4 * E  # + softmax/top-k over E scores in fp32
    # per routed token copy: the permuted input (D h) and the expert's inner tensors; permute/unpermute
    # read + write the token (4 D h)
    act_exp = k * (D * h + e_act)
    ew_exp = k * (4 * D * h + e_ew)
    replicated = m.norm_params() + router + (E if m.router_bias else 0) + (h if m.shared_expert_gate else 0)
    return Block(kind="moe", params=m.moe_params() + m.norm_params(), replicated_params=replicated,
                 expert_params=E * m.expert_params(), gemm_flops=2.0 * (s_mat + router),
                 expert_gemm_flops=2.0 * k * e_mat, act_rep=act_rep, act_tp=s_act, act_expert=act_exp,
                 ew_rep=ew_rep, ew_tp=s_ew, ew_expert=ew_exp, tp_collectives=1 if shared else 0,
                 a2a_bytes=float(k * h * D), top_k=k, gemm_width=m.moe_ffn_hidden_size * (2 if m.activation == "swiglu" else 1),
                 signature=("moe", dropout))


def _embedding(m: ModelSpec, dropout: bool) -> Block:
    h, D = m.hidden_size, m.dtype_bytes
    pos = m.position_rows * h if m.position_embedding == "learned" else 0
    # vocab-parallel embedding: one all-reduce in forward (Shoeybi et al. 2019); the output dropout mask
    # is its stored activation (Korthikanti eq. 5 extra term: s b h p / t counts it per stage)
    return Block(kind="embedding", params=m.embedding_params(), replicated_params=pos,
                 act_rep=MASK_BYTES * h if dropout else 0.0, ew_rep=3 * D * h, tp_collectives=1,
                 signature=("embedding",))


def _head(m: ModelSpec) -> Block:
    h, D, V = m.hidden_size, m.dtype_bytes, m.vocab_size
    # final norm input (D h), output-projection input (D h), fp32 logits (4 V, vocab-split over TP,
    # Korthikanti Sec 4.3); cross-entropy in fp32 reads the logits, writes softmax: ~3 passes of 4 V
    return Block(kind="head", params=m.head_params(), replicated_params=m.norm_params(),
                 gemm_flops=2.0 * h * V, act_rep=2 * D * h, act_tp=LOGIT_BYTES * V, ew_rep=2 * D * h,
                 ew_tp=3 * LOGIT_BYTES * V + D * V, tp_collectives=0, gemm_width=V, signature=("head",))


@dataclass(frozen=True)
class LayerType:
    """A distinct transformer layer (attention + FFN block pair) and the layers that use it."""

    attention: Block
    ffn: Block
    layers: tuple[int, ...]

    @property
    def blocks(self) -> tuple[Block, Block]:
        return (self.attention, self.ffn)


class LayerGraph:
    """The model as a networkx DiGraph of block nodes plus the grouped view the cost model uses.

    ``flash_attention``: attention scores are never materialised (FlashAttention; Dao et al. 2022), so
    no s x s activation and no separate softmax kernels. ``dropout``: dropout layers (and their 1-byte
    masks) are present; None means the Megatron GPT convention: models with learned positions (GPT-2,
    Megatron GPT) train with dropout, rope models (Llama, Mixtral, Qwen, DeepSeek) publish dropout 0.
    """

    def __init__(self, model: ModelSpec, *, flash_attention: bool = True, dropout: bool | None = None):
        self.model = model
        self.flash_attention = flash_attention
        self.dropout = (model.position_embedding == "learned") if dropout is None else dropout
        self.embedding = _embedding(model, self.dropout)
        self.head = _head(model)
        attn = _attention(model, flash_attention, self.dropout)
        dense = _mlp(model, self.dropout)
        moe = _moe(model, self.dropout) if model.is_moe else None
        groups: dict[str, list[int]] = {}
        for i in range(model.num_layers):
            groups.setdefault("moe" if model.is_moe_layer(i) else "dense", []).append(i)
        self.layer_types: tuple[LayerType, ...] = tuple(
            LayerType(attn, moe if key == "moe" else dense, tuple(idx)) for key, idx in groups.items())
        self._type_of_layer = [0] * model.num_layers
        for t, lt in enumerate(self.layer_types):
            for i in lt.layers:
                self._type_of_layer[i] = t

    def type_of_layer(self, layer: int) -> int:
        """Index into ``layer_types`` of transformer layer ``layer``."""
        return self._type_of_layer[layer]

    def layer_type_counts(self, first: int, last: int) -> list[int]:
        """How many layers of each type the range [first, last) holds."""
        counts = [0] * len(self.layer_types)
        for i in range(first, last):
            counts[self._type_of_layer[i]] += 1
        return counts

    def total_params(self) -> int:
        """Equals ModelSpec.total_params() (tested): the graph loses no parameter."""
        return (self.embedding.params + self.head.params
                + sum(len(lt.layers) * (lt.attention.params + lt.ffn.params) for lt in self.layer_types))

    def graph(self) -> nx.DiGraph:
        """The block DAG (built on demand; the cost model never walks it). Node attributes: ``block``
        (the shared Block), ``layer`` (or None)."""
        g = nx.DiGraph()
        g.add_node("embedding", block=self.embedding, layer=None)
        prev = "embedding"
        for i in range(self.model.num_layers):
            lt = self.layer_types[self._type_of_layer[i]]
            for b in lt.blocks:
                name = f"layer{i}.{b.kind}"
                g.add_node(name, block=b, layer=i)
                g.add_edge(prev, name)
                prev = name
        g.add_node("head", block=self.head, layer=None)
        g.add_edge(prev, "head")
        return g

    def distinct_blocks(self) -> dict[tuple, int]:
        """Block signature -> how many nodes of the graph share it."""
        out: dict[tuple, int] = {}
        for _, data in self.graph().nodes(data=True):
            sig = data["block"].signature
            out[sig] = out.get(sig, 0) + 1
        return out


@lru_cache(maxsize=64)
def layer_graph(model: ModelSpec, flash_attention: bool = True, dropout: bool | None = None) -> LayerGraph:
    """Cached constructor: ModelSpec is frozen and hashable."""
    return LayerGraph(model, flash_attention=flash_attention, dropout=dropout)
