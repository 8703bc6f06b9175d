"""Built-in model presets and the `--model` resolver (preset name, HF config.json, or own spec file).

Each preset states its source; ``PUBLISHED_PARAMS`` holds the totals the test suite checks the
parameter count against (relative tolerance in ``tests/planner/test_model_spec.py``).
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import SpecError
from planner.model_spec import ModelSpec


def _megatron_gpt(name: str, layers: int, hidden: int, heads: int, *, seq: int = 2048, vocab: int = 51200,
                  source: str) -> ModelSpec:
    """Megatron-LM GPT: LayerNorm + GeLU MLP of 4h, biases, learned positions, tied embeddings.

    Its parameter count is Narayanan et al. 2021 eq. 2: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h))
    (plus the final LayerNorm, 2h, which eq. 2 leaves out).
    """
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden,
                     num_heads=heads, vocab_size=vocab, seq_len=seq, norm="layernorm", activation="gelu",
                     position_embedding="learned", tied_embeddings=True, linear_bias=True, dtype="bf16",
                     notes=source)


_SC21 = "Narayanan et al. SC'21 Table 1"
_KOR = "Korthikanti et al. 2022 Table 3"


def _llama3(name: str, layers: int, hidden: int, ffn: int, heads: int) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_heads=heads,
                     num_kv_heads=8, vocab_size=128256, seq_len=8192, max_position_embeddings=131072,
                     norm="rmsnorm", activation="swiglu", position_embedding="rope",
                     notes="Llama 3.1 HF config.json (meta-llama); Llama 3 paper Table 3 (seq 8192)")


PRESETS: dict[str, ModelSpec] = {
    # --- Megatron GPT family of the calibration data ---
    "gpt-1.7b": _megatron_gpt("gpt-1.7b", 24, 2304, 24, source=_SC21),
    "gpt-3.6b": _megatron_gpt("gpt-3.6b", 30, 3072, 32, source=_SC21),
    "gpt-7.5b": _megatron_gpt("gpt-7.5b", 36, 4096, 32, source=_SC21),
    "gpt-18.4b": _megatron_gpt("gpt-18.4b", 40, 6144, 48, source=_SC21),
    "gpt-39.1b": _megatron_gpt("gpt-39.1b", 48, 8192, 64, source=_SC21),
    "gpt-76.1b": _megatron_gpt("gpt-76.1b", 60, 10240, 80, source=_SC21),
    "gpt-145.6b": _megatron_gpt("gpt-145.6b", 80, 12288, 96, source=_SC21),
    "gpt-310.1b": _megatron_gpt("gpt-310.1b", 96, 16384, 128, source=_SC21),
    "megatron-22b": _megatron_gpt("megatron-22b", 48, 6144, 64, source=_KOR),
    "gpt3-175b": _megatron_gpt("gpt3-175b", 96, 12288, 96, source=_KOR + "; Brown et al. 2020"),
    "megatron-530b": _megatron_gpt("megatron-530b", 105, 20480, 128, source=_KOR + " (MT-NLG)"),
    "megatron-1t": _megatron_gpt("megatron-1t", 128, 25600, 160, source=_KOR),
    # --- open models (numbers from their HF config.json, see ../shared/data/hf-configs/SOURCES.md) ---
    "gpt2": ModelSpec(name="gpt2", num_layers=12, hidden_size=768, ffn_hidden_size=3072, num_heads=12,
                      vocab_size=50257, seq_len=1024, max_position_embeddings=1024, norm="layernorm",
                      activation="gelu", position_embedding="learned", tied_embeddings=True, linear_bias=True,
                      notes="openai-community/gpt2 config.json"),
    "llama3.1-8b": _llama3("llama3.1-8b", 32, 4096, 14336, 32),
    "llama3.1-70b": _llama3("llama3.1-70b", 80, 8192, 28672, 64),
    "llama3.1-405b": _llama3("llama3.1-405b", 126, 16384, 53248, 128),
    "mixtral-8x7b": ModelSpec(name="mixtral-8x7b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                              num_heads=32, num_kv_heads=8, vocab_size=32000, seq_len=4096,
                              max_position_embeddings=32768, norm="rmsnorm", activation="swiglu",
                              position_embedding="rope", num_experts=8, moe_top_k=2, moe_ffn_hidden_size=14336,
                              notes="mistralai/Mixtral-8x7B-v0.1 config.json"),
    "mixtral-8x22b": ModelSpec(name="mixtral-8x22b", num_layers=56, hidden_size=6144, ffn_hidden_size=16384,
                               num_heads=48, num_kv_heads=8, vocab_size=32000, seq_len=4096,
                               max_position_embeddings=65536, norm="rmsnorm", activation="swiglu",
                               position_embedding="rope", num_experts=8, moe_top_k=2, moe_ffn_hidden_size=16384,
                               notes="mistralai/Mixtral-8x22B-v0.1 config.json"),
    "qwen3-30b-a3b": ModelSpec(name="qwen3-30b-a3b", num_layers=48, hidden_size=2048, ffn_hidden_size=6144,
                               num_heads=32, num_kv_heads=4, head_dim=128, vocab_size=151936, seq_len=4096,
                               max_position_embeddings=40960, norm="rmsnorm", activation="swiglu",
                               position_embedding="rope", qk_norm=True, num_experts=128, moe_top_k=8,
                               moe_ffn_hidden_size=768, notes="Qwen/Qwen3-30B-A3B config.json"),
    "deepseek-v3": ModelSpec(name="deepseek-v3", num_layers=61, hidden_size=7168, ffn_hidden_size=18432,
                             num_heads=128, num_kv_heads=128, vocab_size=129280, seq_len=4096,
                             max_position_embeddings=163840, norm="rmsnorm", activation="swiglu",
                             position_embedding="rope", num_experts=256, moe_top_k=8, moe_ffn_hidden_size=2048,
                             num_shared_experts=1, first_dense_layers=3, router_scoring="sigmoid",
                             router_bias=True, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                             qk_rope_head_dim=64, v_head_dim=128,
                             notes="deepseek-ai/DeepSeek-V3 config.json; MTP module not counted (671B total)"),
    # --- tiny models for tests and CPU runs (byte-level vocabulary) ---
    "tiny-gpt": ModelSpec(name="tiny-gpt", num_layers=4, hidden_size=64, ffn_hidden_size=256, num_heads=4,
                          vocab_size=256, seq_len=32, norm="layernorm", activation="gelu",
                          position_embedding="learned", tied_embeddings=True, linear_bias=True, dtype="fp32",
                          notes="test model"),
    "tiny-llama": ModelSpec(name="tiny-llama", num_layers=4, hidden_size=64, ffn_hidden_size=176, num_heads=4,
                            num_kv_heads=2, vocab_size=256, seq_len=32, norm="rmsnorm", activation="swiglu",
                            position_embedding="rope", dtype="fp32", notes="test model"),
    "tiny-moe": ModelSpec(name="tiny-moe", num_layers=4, hidden_size=64, ffn_hidden_size=176, num_heads=4,
                          num_kv_heads=2, vocab_size=256, seq_len=32, norm="rmsnorm", activation="swiglu",
                          position_embedding="rope", num_experts=4, moe_top_k=2, moe_ffn_hidden_size=64,
                          first_dense_layers=1, dtype="fp32", notes="test model"),
}

# Published total parameter counts (elements) the presets are tested against.
PUBLISHED_PARAMS: dict[str, tuple[float, str]] = {
    "gpt-1.7b": (1.7e9, _SC21), "gpt-3.6b": (3.6e9, _SC21), "gpt-7.5b": (7.5e9, _SC21),
    "gpt-18.4b": (18.4e9, _SC21), "gpt-39.1b": (39.1e9, _SC21), "gpt-76.1b": (76.1e9, _SC21),
    "gpt-145.6b": (145.6e9, _SC21), "gpt-310.1b": (310.1e9, _SC21), "megatron-530b": (529.6e9, _SC21),
    "megatron-1t": (1008.0e9, _SC21), "gpt3-175b": (175e9, "Brown et al. 2020"),
    "megatron-22b": (22e9, _KOR),
    "gpt2": (124_439_808, "HF model card / transformers num_parameters()"),
    "llama3.1-8b": (8.03e9, "Meta Llama 3.1 model card (8.03B)"),
    "llama3.1-70b": (70.6e9, "Meta Llama 3.1 model card (70.6B)"),
    "llama3.1-405b": (405.9e9, "Meta Llama 3.1 model card (405B; 405.85B exact)"),
    "mixtral-8x7b": (46.7e9, "Mistral AI, Mixtral of Experts (46.7B total)"),
    "mixtral-8x22b": (141e9, "Mistral AI Mixtral 8x22B announcement (141B total)"),
    "qwen3-30b-a3b": (30.5e9, "Qwen3 model card (30.5B total)"),
    "deepseek-v3": (671e9, "DeepSeek-V3 technical report (671B total, 37B activated)"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_model(arg: str) -> ModelSpec:
    """`--model` accepts a preset name, a HF config.json path, or the project's own spec file."""
    if arg in PRESETS:
        return PRESETS[arg]
    path = Path(arg)
    try:
        exists = path.exists()
    except OSError:  # e.g. a name longer than the file system allows: not a file either
        exists = False
    if not exists:
        raise SpecError(f"unknown model {arg[:200]!r}: not a preset ({', '.join(preset_names())}) and no such file")
    from planner.io import read_json_or_yaml

    data = read_json_or_yaml(path, "model file")
    if isinstance(data, dict) and "model_type" in data:
        from planner.hf_config import model_from_hf_config

        name = path.stem if path.stem != "config" else (path.parent.name or "hf-model")
        return model_from_hf_config(data, name, str(path))
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]  # a plan file or a wrapper {"model": {...}}
    return ModelSpec.from_dict(data, str(path))
