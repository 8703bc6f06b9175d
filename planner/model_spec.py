"""ModelSpec: the architecture numbers of a decoder-only transformer, frozen and validated.

Everyone (layer graph, cost model, runtime, profiler) reads the model from here, so the
parameter count below is the single source of truth: a preset's count is tested against
its published total, and the runtime's built model is tested against this count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.errors import SpecError

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
ROUTER_SCORING = ("softmax", "sigmoid")
MAX_SIZE = 10_000_000
"""Largest accepted width, head count, vocabulary, sequence or expert count: far above any real model."""
MAX_LAYERS = 100_000
"""Largest accepted layer count (real models: < 200); parameter counting loops over layers."""


def _brief(v: int) -> str:
    """An absurd integer, shown without printing hundreds of digits into a one-line error."""
    text = str(v)
    return text if len(text) <= 24 else f"{text[:6]}...({len(text)} digits)"


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (GPT / Llama / Mixtral / Qwen-MoE / DeepSeek-V3 families)."""

    name: str
    """Human name; preset name when built from a preset."""
    num_layers: int
    """Transformer blocks (L)."""
    hidden_size: int
    """Model width (h)."""
    ffn_hidden_size: int
    """Dense MLP inner width (GeLU: usually 4h; SwiGLU: the per-branch width)."""
    num_heads: int
    """Attention query heads (a)."""
    vocab_size: int
    """Vocabulary size (V); the runtime pads nothing, the cost model uses it as is."""
    seq_len: int
    """Default training sequence length (s); CLI --seq overrides."""
    num_kv_heads: int = 0
    """Key/value heads for GQA; 0 means equal to num_heads (MHA)."""
    head_dim: int = 0
    """Per-head width; 0 means hidden_size // num_heads (Qwen3 sets it explicitly)."""
    norm: str = "layernorm"
    """'layernorm' (weight + bias) or 'rmsnorm' (weight only)."""
    activation: str = "gelu"
    """'gelu' (two matrices) or 'swiglu' (three matrices: gate, up, down)."""
    position_embedding: str = "learned"
    """'learned' (GPT-2 / Megatron GPT: a max_positions x h table) or 'rope' (no parameters)."""
    max_position_embeddings: int = 0
    """Rows of the learned position table; 0 means seq_len."""
    tied_embeddings: bool = False
    """Output projection shares the input embedding (GPT-2, Megatron GPT)."""
    linear_bias: bool = False
    """Biases on every linear layer (GPT-2 / Megatron GPT)."""
    qkv_bias: bool = False
    """Biases on Q, K, V projections only (Qwen2)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys per head (Qwen3)."""
    # --- mixture of experts -------------------------------------------------------------
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for a dense model."""
    moe_top_k: int = 0
    """Experts each token is routed to."""
    moe_ffn_hidden_size: int = 0
    """Inner width of one routed expert (SwiGLU branch width)."""
    num_shared_experts: int = 0
    """Always-active shared experts (DeepSeek: same width as a routed expert)."""
    shared_expert_ffn_hidden_size: int = 0
    """Total inner width of the shared expert(s); 0 means num_shared_experts x moe_ffn_hidden_size."""
    shared_expert_gate: bool = False
    """Sigmoid gate on the shared expert output (Qwen2-MoE): h parameters per layer."""
    first_dense_layers: int = 0
    """Leading layers that use a dense MLP instead of MoE (DeepSeek-V3: 3)."""
    moe_layer_freq: int = 1
    """Every k-th layer (after the dense ones) is MoE; 1 means all of them."""
    router_scoring: str = "softmax"
    """'softmax' (Mixtral, Qwen) or 'sigmoid' (DeepSeek-V3)."""
    router_bias: bool = False
    """Per-expert score-correction bias (DeepSeek-V3 aux-loss-free balancing): E parameters."""
    # --- multi-head latent attention (DeepSeek-V2/V3) ----------------------------------
    q_lora_rank: int = 0
    """Rank of the query down-projection; 0 with kv_lora_rank 0 means standard attention."""
    kv_lora_rank: int = 0
    """Rank of the joint key/value down-projection (MLA); 0 means standard attention."""
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    dtype: str = "bf16"
    """Parameter / activation dtype for compute: 'bf16', 'fp16', 'fp32'."""
    notes: str = ""
    """Where the numbers come from."""

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SpecError(f"model {self.name!r}: {name} must be a positive integer, got {v!r}")

        def non_negative(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"model {self.name!r}: {name} must be a non-negative integer, got {v!r}")

        if not isinstance(self.name, str) or not self.name:
            raise SpecError("model name must be a non-empty string")
        if not isinstance(self.notes, str):
            raise SpecError(f"model {self.name!r}: notes must be a string")
        for n in ("num_layers", "hidden_size", "ffn_hidden_size", "num_heads", "vocab_size", "seq_len"):
            positive(n)
        for n in (
            "num_kv_heads", "head_dim", "max_position_embeddings", "num_experts", "moe_top_k",
            "moe_ffn_hidden_size", "num_shared_experts", "shared_expert_ffn_hidden_size",
            "first_dense_layers", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
            "qk_rope_head_dim", "v_head_dim",
        ):
            non_negative(n)
        positive("moe_layer_freq")
        # Absurd sizes overflow nothing in Python but make every downstream number meaningless (a float
        # conversion of 10**400 raises), and a huge layer count makes every per-layer loop crawl.
        for n in ("hidden_size", "ffn_hidden_size", "num_heads", "vocab_size", "seq_len", "num_kv_heads", "head_dim",
                  "max_position_embeddings", "num_experts", "moe_top_k", "moe_ffn_hidden_size", "num_shared_experts",
                  "shared_expert_ffn_hidden_size", "first_dense_layers", "moe_layer_freq", "q_lora_rank",
                  "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if getattr(self, n) > MAX_SIZE:
                raise SpecError(f"model {self.name!r}: {n}={_brief(getattr(self, n))} is implausibly large (> 1e7)")
        if self.num_layers > MAX_LAYERS:
            raise SpecError(f"model {self.name!r}: num_layers={_brief(self.num_layers)} is implausibly large "
                            f"(> {MAX_LAYERS})")
        for n, allowed in (("norm", NORMS), ("activation", ACTIVATIONS),
                           ("position_embedding", POSITIONS), ("router_scoring", ROUTER_SCORING)):
            if not isinstance(getattr(self, n), str) or getattr(self, n) not in allowed:
                raise SpecError(f"model {self.name!r}: {n} must be one of {', '.join(allowed)}, got {getattr(self, n)!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_BYTES:
            raise SpecError(f"model {self.name!r}: dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        for n in ("tied_embeddings", "linear_bias", "qkv_bias", "qk_norm", "shared_expert_gate", "router_bias"):
            if not isinstance(getattr(self, n), bool):
                raise SpecError(f"model {self.name!r}: {n} must be true or false, got {getattr(self, n)!r}")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise SpecError(
                f"model {self.name!r}: num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.num_kv_heads > self.num_heads:
            raise SpecError(f"model {self.name!r}: num_kv_heads={self.num_kv_heads} exceeds num_heads={self.num_heads}")
        if not self.head_dim and not self.is_mla and self.hidden_size % self.num_heads:
            raise SpecError(
                f"model {self.name!r}: num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}"
                " (set head_dim explicitly)")
        if self.num_experts:
            if not 1 <= self.moe_top_k <= self.num_experts:
                raise SpecError(
                    f"model {self.name!r}: moe_top_k={self.moe_top_k} must be between 1 and num_experts={self.num_experts}")
            if not self.moe_ffn_hidden_size:
                raise SpecError(f"model {self.name!r}: MoE model needs moe_ffn_hidden_size")
            if self.first_dense_layers >= self.num_layers:
                raise SpecError(
                    f"model {self.name!r}: first_dense_layers={self.first_dense_layers} leaves no MoE layer of {self.num_layers}")
        elif self.moe_top_k or self.num_shared_experts:
            raise SpecError(f"model {self.name!r}: moe_top_k / num_shared_experts set but num_experts is 0")
        if self.is_mla and not (self.kv_lora_rank and self.qk_nope_head_dim and self.qk_rope_head_dim and self.v_head_dim):
            raise SpecError(
                f"model {self.name!r}: MLA needs kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim")

    # --- derived shapes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def position_rows(self) -> int:
        return self.max_position_embeddings or self.seq_len

    def is_moe_layer(self, layer: int) -> bool:
        """Which blocks carry an MoE FFN (DeepSeek first_k_dense_replace, Qwen decoder_sparse_step)."""
        if not self.is_moe or layer < self.first_dense_layers:
            return False
        return (layer - self.first_dense_layers) % self.moe_layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    @property
    def shared_ffn_width(self) -> int:
        return self.shared_expert_ffn_hidden_size or self.num_shared_experts * self.moe_ffn_hidden_size

    # --- parameter counts (elements) ------------------------------------------------------
    def norm_params(self) -> int:
        return 2 * self.hidden_size if self.norm == "layernorm" else self.hidden_size

    def attention_params(self) -> int:
        """Q, K, V, O projections (+ biases), or MLA's low-rank projections and their norms."""
        h, a = self.hidden_size, self.num_heads
        if self.is_mla:
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * a * qk_dim  # q_a, q_a_norm, q_b
            else:
                q = h * a * qk_dim
            kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim)  # kv_a (with shared rope key)
                  + self.kv_lora_rank  # kv_a_norm
                  + self.kv_lora_rank * a * (self.qk_nope_head_dim + self.v_head_dim))  # kv_b
            o = a * self.v_head_dim * h
            return q + kv + o
        d, kv = self.dim_per_head, self.kv_heads
        q_out, kv_out = a * d, kv * d
        params = h * q_out + 2 * h * kv_out + q_out * h
        if self.linear_bias:
            params += q_out + 2 * kv_out + h
        elif self.qkv_bias:
            params += q_out + 2 * kv_out
        if self.qk_norm:
            params += 2 * d
        return params

    def mlp_params(self, ffn: int | None = None) -> int:
        h, f = self.hidden_size, ffn if ffn is not None else self.ffn_hidden_size
        if self.activation == "swiglu":
            return 3 * h * f + (2 * f + h if self.linear_bias else 0)
        return 2 * h * f + (f + h if self.linear_bias else 0)

    def expert_params(self) -> int:
        """One routed expert."""
        return self.mlp_params(self.moe_ffn_hidden_size)

    def moe_params(self) -> int:
        """Router + all routed experts + shared expert(s) of one MoE layer."""
        h = self.hidden_size
        p = h * self.num_experts + self.num_experts * self.expert_params()
        if self.router_bias:
            p += self.num_experts
        if self.shared_ffn_width:
            p += self.mlp_params(self.shared_ffn_width)
        if self.shared_expert_gate:
            p += h
        return p

    def layer_params(self, layer: int) -> int:
        ffn = self.moe_params() if self.is_moe_layer(layer) else self.mlp_params()
        return self.attention_params() + ffn + 2 * self.norm_params()

    def embedding_params(self) -> int:
        p = self.vocab_size * self.hidden_size
        if self.position_embedding == "learned":
            p += self.position_rows * self.hidden_size
        return p

    def head_params(self) -> int:
        """Final norm + output projection (zero extra elements when tied)."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    def total_params(self) -> int:
        return (self.embedding_params() + self.head_params()
                + sum(self.layer_params(i) for i in range(self.num_layers)))

    def active_params(self) -> int:
        """Parameters a token touches (MoE: top-k routed experts + shared), for 6*N*D-style FLOPs."""
        if not self.is_moe:
            return self.total_params()
        inactive = (self.num_experts - self.moe_top_k) * self.expert_params()
        return self.total_params() - self.num_moe_layers * inactive

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "model spec") -> "ModelSpec":
        """Build from the project's own spec format (the keys of this dataclass)."""
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)  # YAML keys may be ints
        if unknown:
            raise SpecError(f"{source}: unknown field {unknown[0]!r}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        for r in required:
            if r not in data:
                raise SpecError(f"{source}: missing required field {r!r}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

