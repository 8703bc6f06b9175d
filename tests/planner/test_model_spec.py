"""ModelSpec: parameter counts against published totals, HF config loading, and one-line errors."""

from __future__ import annotations

import json

import pytest

from planner.errors import SpecError
from planner.hf_config import load_hf_config, model_from_hf_config
from planner.model_presets import PRESETS, PUBLISHED_PARAMS, resolve_model
from planner.model_spec import ModelSpec

# Published totals are rounded (SC'21 Table 1 rounds to 0.1B; 1.7B is 1.65B by its own eq. 2).
PARAM_TOLERANCE = {"gpt-1.7b": 0.035, "gpt-3.6b": 0.015}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_count_matches_published(name: str) -> None:
    published, _source = PUBLISHED_PARAMS[name]
    got = PRESETS[name].total_params()
    assert abs(got - published) / published <= PARAM_TOLERANCE.get(name, 0.005), (name, got, published)


def test_megatron_gpt_count_is_narayanan_eq2() -> None:
    # P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h)), plus the final LayerNorm (2h) that eq. 2 leaves out.
    m = PRESETS["gpt3-175b"]
    l, h, v, s = m.num_layers, m.hidden_size, m.vocab_size, m.seq_len
    eq2 = 12 * l * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * l * h))
    assert m.total_params() == pytest.approx(eq2 + 2 * h, rel=1e-12)


def test_hand_count_llama3_8b() -> None:
    m = PRESETS["llama3.1-8b"]
    h, f, v, d = 4096, 14336, 128256, 128
    attn = h * 32 * d + 2 * h * 8 * d + 32 * d * h
    layer = attn + 3 * h * f + 2 * h
    assert m.total_params() == 32 * layer + 2 * v * h + h == 8_030_261_248


# Published totals of the shared HF configs (model cards); DeepSeek-V3 excludes its 14B MTP module.
HF_TOTALS = {
    "gpt2": 124_439_808, "gpt2-xl": 1_557_611_200, "llama-2-7b": 6_738_415_616,
    "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496, "llama-3.1-405b": 405_853_388_800,
    "mixtral-8x7b": 46_702_792_704, "mixtral-8x22b": 140_620_634_112, "qwen2.5-7b": 7_615_616_512,
    "qwen2-57b-a14b": 57.41e9, "qwen3-30b-a3b": 30_532_122_624, "deepseek-v3": 671e9,
}


def test_every_shared_hf_config_loads_and_matches(hf_configs_dir) -> None:
    files = sorted(hf_configs_dir.glob("*.json"))
    assert len(files) >= 12
    for f in files:
        m = load_hf_config(f)
        assert m.name == f.stem
        published = HF_TOTALS[f.stem]
        assert abs(m.total_params() - published) / published < 1e-3, (f.stem, m.total_params())


def test_hf_active_params_of_moe(hf_configs_dir) -> None:
    assert load_hf_config(hf_configs_dir / "mixtral-8x7b.json").active_params() == pytest.approx(12.9e9, rel=0.01)
    assert load_hf_config(hf_configs_dir / "deepseek-v3.json").active_params() == pytest.approx(37e9, rel=0.02)
    assert load_hf_config(hf_configs_dir / "qwen3-30b-a3b.json").active_params() == pytest.approx(3.3e9, rel=0.02)


def test_gpt2_defaults_tied_embeddings_and_4h() -> None:
    m = model_from_hf_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100},
                             "x")
    assert m.tied_embeddings and m.ffn_hidden_size == 256 and m.position_rows == 1024


@pytest.mark.parametrize("cfg, needle", [
    ({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10,
      "intermediate_size": 128}, "num_attention_heads"),
    ({"model_type": "bert"}, "unknown model_type 'bert'"),
    ({"hidden_size": 3}, "model_type"),
    ({"model_type": "llama", "hidden_size": "big", "num_hidden_layers": 2, "vocab_size": 10,
      "intermediate_size": 128, "num_attention_heads": 4}, "hidden_size"),
    ({"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10,
      "intermediate_size": 128, "num_attention_heads": 4}, "num_local_experts"),
])
def test_bad_hf_config_is_one_line_error_naming_the_field(cfg, needle) -> None:
    with pytest.raises(SpecError) as exc:
        model_from_hf_config(cfg, "bad", "bad.json")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_spec_validation_errors() -> None:
    base = PRESETS["tiny-llama"].to_dict()
    for change, needle in [({"num_layers": 0}, "num_layers"), ({"num_kv_heads": 3}, "num_kv_heads"),
                           ({"norm": "batchnorm"}, "norm"), ({"dtype": ["x"]}, "dtype"),
                           ({"num_heads": 5}, "num_heads"), ({"moe_top_k": 2}, "num_experts is 0")]:
        with pytest.raises(SpecError, match=needle):
            ModelSpec.from_dict({**base, **change})
    with pytest.raises(SpecError, match="unknown field 'layers'"):
        ModelSpec.from_dict({**base, "layers": 3})
    with pytest.raises(SpecError, match="missing required field 'hidden_size'"):
        ModelSpec.from_dict({k: v for k, v in base.items() if k != "hidden_size"})


def test_resolve_model_paths(tmp_path, hf_configs_dir) -> None:
    assert resolve_model("tiny-gpt") is PRESETS["tiny-gpt"]
    own = tmp_path / "mine.json"
    own.write_text(json.dumps(PRESETS["tiny-moe"].to_dict()))
    assert resolve_model(str(own)) == PRESETS["tiny-moe"]
    assert resolve_model(str(hf_configs_dir / "llama-3.1-8b.json")).total_params() == 8_030_261_248
    with pytest.raises(SpecError, match="unknown model"):
        resolve_model("no-such-model")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        resolve_model(str(bad))


def test_moe_layer_pattern() -> None:
    ds = PRESETS["deepseek-v3"]
    assert [ds.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert ds.num_moe_layers == 58
    assert PRESETS["tiny-moe"].num_moe_layers == 3
