"""Read a HuggingFace ``config.json`` into a ModelSpec, as plain JSON: no hub, no transformers.

Field names and per-family defaults follow the ``configuration_*.py`` files of transformers
(LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig, Qwen3MoeConfig,
DeepseekV3Config, GPT2Config). A missing required field is a one-line error naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from planner.errors import SpecError
from planner.model_spec import ModelSpec

# Training sequence length when the config only states the (much longer) context window.
DEFAULT_TRAIN_SEQ = 4096

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class _Fields:
    """Typed access to the config dict with errors that name the field and the file."""

    def __init__(self, cfg: dict[str, Any], source: str):
        self.cfg, self.source = cfg, source

    def req(self, *names: str) -> int:
        for n in names:
            if n in self.cfg and self.cfg[n] is not None:
                return self._int(n)
        raise SpecError(f"{self.source}: missing required field {names[0]!r}")

    def opt(self, name: str, default: int) -> int:
        if self.cfg.get(name) is None:
            return default
        return self._int(name)

    def flag(self, name: str, default: bool) -> bool:
        v = self.cfg.get(name, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise SpecError(f"{self.source}: field {name!r} must be true or false, got {v!r}")
        return v

    def _int(self, name: str) -> int:
        v = self.cfg[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                isinstance(v, float) and (not math.isfinite(v) or not v.is_integer())):
            raise SpecError(f"{self.source}: field {name!r} must be an integer, got {v!r}")
        if v < 0:
            raise SpecError(f"{self.source}: field {name!r} must be non-negative, got {v!r}")
        return int(v)

    def dtype(self) -> str:
        v = self.cfg.get("torch_dtype") or self.cfg.get("dtype") or "bfloat16"
        return _DTYPES.get(v, "bf16") if isinstance(v, str) else "bf16"


def _seq(f: _Fields, max_pos: int) -> int:
    return min(max_pos, DEFAULT_TRAIN_SEQ) if max_pos else DEFAULT_TRAIN_SEQ


def _llama_like(f: _Fields, name: str, *, qkv_bias: bool = False, qk_norm: bool = False,
                tied_default: bool = False) -> dict[str, Any]:
    """Llama, Mistral, Qwen2, Qwen3 and the attention/norm half of their MoE variants."""
    heads = f.req("num_attention_heads")
    max_pos = f.opt("max_position_embeddings", 0)
    act = f.cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish", "swiglu"):
        raise SpecError(f"{f.source}: hidden_act {act!r} is not supported for this family (expected silu)")
    bias = f.flag("attention_bias", False)
    return dict(
        name=name,
        num_layers=f.req("num_hidden_layers"),
        hidden_size=f.req("hidden_size"),
        ffn_hidden_size=f.req("intermediate_size"),
        num_heads=heads,
        num_kv_heads=f.opt("num_key_value_heads", heads),
        head_dim=f.opt("head_dim", 0),
        vocab_size=f.req("vocab_size"),
        seq_len=_seq(f, max_pos),
        max_position_embeddings=max_pos,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rope",
        tied_embeddings=f.flag("tie_word_embeddings", tied_default),
        qkv_bias=qkv_bias or bias,
        qk_norm=qk_norm,
        dtype=f.dtype(),
    )


def _reject_mlp_only_layers(f: _Fields) -> None:
    layers = f.cfg.get("mlp_only_layers") or []
    if layers:
        raise SpecError(f"{f.source}: mlp_only_layers={layers} (dense layers at arbitrary positions) is not supported")


def _llama(f: _Fields, name: str) -> dict[str, Any]:
    spec = _llama_like(f, name)
    if f.flag("attention_bias", False) or f.flag("mlp_bias", False):
        spec["qkv_bias"] = False
        spec["linear_bias"] = True
    return spec


def _qwen2(f: _Fields, name: str) -> dict[str, Any]:
    return _llama_like(f, name, qkv_bias=True)


def _qwen3(f: _Fields, name: str) -> dict[str, Any]:
    spec = _llama_like(f, name, qk_norm=True)
    spec["head_dim"] = f.opt("head_dim", 128)  # Qwen3Config default
    return spec


def _mixtral(f: _Fields, name: str) -> dict[str, Any]:
    spec = _llama_like(f, name)
    spec.update(num_experts=f.req("num_local_experts"), moe_top_k=f.req("num_experts_per_tok"),
                moe_ffn_hidden_size=spec["ffn_hidden_size"])
    return spec


def _qwen2_moe(f: _Fields, name: str) -> dict[str, Any]:
    _reject_mlp_only_layers(f)
    spec = _llama_like(f, name, qkv_bias=True)
    shared = f.opt("shared_expert_intermediate_size", 0)
    spec.update(num_experts=f.req("num_experts"), moe_top_k=f.req("num_experts_per_tok"),
                moe_ffn_hidden_size=f.req("moe_intermediate_size"),
                num_shared_experts=1 if shared else 0, shared_expert_ffn_hidden_size=shared,
                shared_expert_gate=bool(shared), moe_layer_freq=f.opt("decoder_sparse_step", 1) or 1)
    return spec


def _qwen3_moe(f: _Fields, name: str) -> dict[str, Any]:
    _reject_mlp_only_layers(f)
    spec = _qwen3(f, name)
    spec.update(num_experts=f.req("num_experts"), moe_top_k=f.req("num_experts_per_tok"),
                moe_ffn_hidden_size=f.req("moe_intermediate_size"),
                moe_layer_freq=f.opt("decoder_sparse_step", 1) or 1)
    return spec


def _deepseek_v3(f: _Fields, name: str) -> dict[str, Any]:
    spec = _llama_like(f, name)
    spec.update(
        num_experts=f.req("n_routed_experts"), moe_top_k=f.req("num_experts_per_tok"),
        moe_ffn_hidden_size=f.req("moe_intermediate_size"), num_shared_experts=f.opt("n_shared_experts", 0),
        first_dense_layers=f.opt("first_k_dense_replace", 0), moe_layer_freq=f.opt("moe_layer_freq", 1) or 1,
        router_scoring="sigmoid" if f.cfg.get("scoring_func", "sigmoid") == "sigmoid" else "softmax",
        router_bias=f.cfg.get("topk_method", "noaux_tc") == "noaux_tc",
        q_lora_rank=f.opt("q_lora_rank", 0), kv_lora_rank=f.req("kv_lora_rank"),
        qk_nope_head_dim=f.req("qk_nope_head_dim"), qk_rope_head_dim=f.req("qk_rope_head_dim"),
        v_head_dim=f.req("v_head_dim"), head_dim=0,
        notes="MLA + DeepSeekMoE; the multi-token-prediction module (num_nextn_predict_layers) is not counted",
    )
    return spec


def _gpt2(f: _Fields, name: str) -> dict[str, Any]:
    hidden = f.req("n_embd", "hidden_size")
    n_pos = f.opt("n_positions", 1024)
    act = f.cfg.get("activation_function", "gelu_new")
    if not isinstance(act, str) or not act.startswith("gelu"):
        raise SpecError(f"{f.source}: activation_function {act!r} is not supported for gpt2 (expected a gelu)")
    return dict(
        name=name, num_layers=f.req("n_layer", "num_hidden_layers"), hidden_size=hidden,
        ffn_hidden_size=f.opt("n_inner", 0) or 4 * hidden,  # GPT2Config: n_inner None means 4 * n_embd
        num_heads=f.req("n_head", "num_attention_heads"), vocab_size=f.req("vocab_size"),
        seq_len=min(n_pos, f.opt("n_ctx", n_pos)), max_position_embeddings=n_pos,
        norm="layernorm", activation="gelu", position_embedding="learned",
        tied_embeddings=f.flag("tie_word_embeddings", True), linear_bias=True, dtype="fp32"
        if f.cfg.get("torch_dtype") == "float32" else "bf16",
    )


FAMILIES: dict[str, Callable[[_Fields, str], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v3": _deepseek_v3,
    "gpt2": _gpt2,
}


def model_from_hf_config(cfg: Any, name: str, source: str = "config.json") -> ModelSpec:
    """Map a parsed HF config dict to a ModelSpec."""
    if not isinstance(cfg, dict):
        raise SpecError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type is None:
        raise SpecError(f"{source}: missing required field 'model_type'")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise SpecError(
            f"{source}: unknown model_type {model_type!r} (supported: {', '.join(sorted(FAMILIES))})")
    return ModelSpec(**FAMILIES[model_type](_Fields(cfg, source), name))


def load_hf_config(path: str | Path) -> ModelSpec:
    from planner.io import read_json

    path = Path(path)
    cfg = read_json(path, "HuggingFace config")
    name = path.stem if path.stem != "config" else path.parent.name or "hf-model"
    return model_from_hf_config(cfg, name, str(path))
