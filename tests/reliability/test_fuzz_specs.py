"""Fuzz every spec reader: model spec files, HuggingFace config.json, cluster files, parallel configs.

Each generated input is accepted (and then must satisfy the spec's invariants) or rejected with a
one-line typed error that names the broken field; never a traceback. Counts are asserted.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from planner.cluster_spec import ClusterSpec
from planner.hf_config import model_from_hf_config
from planner.model_presets import PRESETS
from planner.model_spec import ModelSpec
from planner.parallel_config import COMPRESSION, GRAD_SYNC, RECOMPUTE, SCHEDULES, ParallelConfig
from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import feed, fuzz_settings
from tests.reliability.strategies import HOSTILE, combine, mutations

# Inputs per category this file must feed (each hypothesis example feeds several).
TARGETS = {"model_spec": 1600, "hf_config": 1700, "cluster": 1200, "parallel_config": 2000}


def check_model(model: ModelSpec) -> None:
    """Invariants of an accepted model: counts are positive finite integers and the spec round-trips."""
    total = model.total_params()
    assert isinstance(total, int) and total > 0 and math.isfinite(float(total))
    assert 0 < model.active_params() <= total
    assert model.kv_heads >= 1 and model.num_heads % model.kv_heads == 0
    assert bases.spec_round_trips(model)


def feed_model_doc(category: str, doc, strict_field: str | None = None):
    out = feed(category, ModelSpec.from_dict, doc, "model.json", must_name=strict_field)
    if out.accepted:
        check_model(out.value)
    return out


# --- model spec files (the project's own format) ---------------------------------------------
@fuzz_settings(max_examples=500)
@given(st.data())
def test_fuzz_model_spec(data) -> None:
    base = data.draw(st.sampled_from(bases.model_dicts()))
    muts = data.draw(mutations(base))
    for m in muts:
        doc = m.apply(base)
        strict = m.field if m.strict(base) else None
        if m.op == "delete" and len(m.path) == 1 and m.field in ("name", "num_layers", "hidden_size"):
            strict = m.field  # a required field: "missing required field 'X'"
        feed_model_doc("model_spec", doc, strict)
    feed_model_doc("model_spec", combine(base, muts))


def test_model_spec_count() -> None:
    # Runs after test_fuzz_model_spec in file order; asserts the fuzz really fed its inputs.
    assert fuzzlib.total("model_spec") >= TARGETS["model_spec"], dict(fuzzlib.COUNTS["model_spec"])


# --- HuggingFace config.json -------------------------------------------------------------------
HF_SIZE_KEYS = {"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
                "num_key_value_heads", "head_dim", "n_layer", "n_embd", "n_head", "n_positions", "n_inner",
                "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                "n_routed_experts", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                "v_head_dim", "first_k_dense_replace", "n_shared_experts", "max_position_embeddings",
                "shared_expert_intermediate_size", "decoder_sparse_step", "moe_layer_freq"}


@fuzz_settings(max_examples=350)
@given(st.data())
def test_fuzz_hf_config(data) -> None:
    fname, base = data.draw(st.sampled_from(bases.hf_configs()))
    muts = data.draw(mutations(base))
    for m in muts:
        doc = m.apply(base)
        # A size field the family reads, given a wrong type or sign, must be named in the error.
        strict = m.field if (m.strict(base) and len(m.path) == 1 and m.field in HF_SIZE_KEYS) else None
        out = feed("hf_config", model_from_hf_config, doc, "x", fname, input_repr=(fname, m), must_name=strict)
        if out.accepted:
            check_model(out.value)
    out = feed("hf_config", model_from_hf_config, combine(base, muts), "x", fname, input_repr=(fname, muts))
    if out.accepted:
        check_model(out.value)
    # The model_type itself: unknown, wrong type, missing.
    mt = data.draw(st.one_of(HOSTILE, st.sampled_from(["llama", "gpt2", "bert", "LLAMA", "deepseek_v2"])))
    feed("hf_config", model_from_hf_config, {**base, "model_type": mt}, "x", fname, input_repr=mt)


def test_hf_config_count() -> None:
    assert fuzzlib.total("hf_config") >= TARGETS["hf_config"], dict(fuzzlib.COUNTS["hf_config"])


# --- cluster files -------------------------------------------------------------------------------
def check_cluster(c: ClusterSpec) -> None:
    assert c.world_size >= 1 and c.links and all(l.bandwidth_bytes_per_s > 0 for l in c.links)
    assert c.device.memory_bytes > 0 and all(v > 0 and math.isfinite(v) for v in c.device.peak_flops.values())
    assert ClusterSpec.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@fuzz_settings(max_examples=250)
@given(st.data())
def test_fuzz_cluster(data) -> None:
    base = data.draw(st.sampled_from(bases.cluster_dicts()))
    muts = data.draw(mutations(base))
    for m in muts + [None]:
        doc = combine(base, muts) if m is None else m.apply(base)
        strict = m.field if (m is not None and m.strict(base) and m.field not in ("source",)) else None
        out = feed("cluster", ClusterSpec.from_dict, doc, "cluster.json", input_repr=m or muts, must_name=strict)
        if out.accepted:
            check_cluster(out.value)
            gpus = data.draw(st.one_of(st.none(), st.integers(-3, 10**8), HOSTILE))
            sized = feed("cluster", out.value.with_world, gpus=gpus, input_repr=("gpus", gpus))
            if sized.accepted:
                check_cluster(sized.value)


def test_cluster_count() -> None:
    assert fuzzlib.total("cluster") >= TARGETS["cluster"], dict(fuzzlib.COUNTS["cluster"])


# --- parallel configurations (the --tp/--pp/... knobs and a plan's "config") ----------------------
DEGREES = st.sampled_from([1, 1, 2, 2, 3, 4, 8, 16])
FREE_CONFIG = st.fixed_dictionaries(
    {"dp": DEGREES, "tp": DEGREES, "pp": DEGREES, "micro_batch_size": st.sampled_from([1, 2, 3, 4]),
     "global_batch_size": st.integers(1, 128), "seq_len": st.sampled_from([32, 64, 2048, 4096])},
    optional={"ep": DEGREES, "schedule": st.sampled_from(SCHEDULES), "virtual_stages": st.sampled_from([1, 2, 3]),
              "recompute": st.sampled_from(RECOMPUTE), "sequence_parallel": st.booleans(),
              "zero_stage": st.integers(0, 4), "grad_sync": st.sampled_from(GRAD_SYNC),
              "compression": st.sampled_from(COMPRESSION),
              "compression_param": st.sampled_from([0.0, 0.01, 1.0, 4.0, -1.0, math.nan]),
              "stage_layers": st.lists(st.integers(0, 40), max_size=6),
              "stage_recompute_layers": st.lists(st.integers(-1, 40), max_size=6)})


def check_config(model: ModelSpec, c: ParallelConfig, world: int) -> None:
    """Invariants of a configuration that passed validate_for (what the cost model and runtime assume)."""
    assert c.dp * c.tp * c.pp == world
    assert model.num_heads % c.tp == 0 and (model.is_mla or model.kv_heads % c.tp == 0)
    assert c.global_batch_size == c.num_micro_batches * c.dp * c.micro_batch_size
    ranges = c.chunk_layer_ranges(model)
    assert len(ranges) == c.num_chunks and ranges[0][0] == 0 and ranges[-1][1] == model.num_layers
    assert all(a <= b for a, b in ranges) and all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    if c.pp > 1 and c.schedule != "gpipe":
        assert c.num_micro_batches >= c.pp
    if c.schedule == "interleaved":
        assert c.num_micro_batches % c.pp == 0
    if c.stage_recompute_layers:
        per_chunk = c.layers_per_chunk(model)
        assert all(isinstance(r, int) and 0 <= r <= n for r, n in zip(c.stage_recompute_layers, per_chunk))
    if model.is_moe:
        assert model.num_experts % c.ep == 0
    else:
        assert c.ep == 1


def _build_and_validate(doc, model: ModelSpec, world: int) -> ParallelConfig:
    c = ParallelConfig.from_dict(doc, "config")
    c.validate_for(model, world)
    return c


@fuzz_settings(max_examples=420)
@given(st.data())
def test_fuzz_parallel_config(data) -> None:
    name, world, base = data.draw(st.sampled_from(bases.valid_configs()))
    model = PRESETS[name]
    muts = data.draw(mutations(base, max_size=4))
    docs = [base] + [m.apply(base) for m in muts] + [combine(base, muts), data.draw(FREE_CONFIG)]
    for doc in docs:
        w = world if data.draw(st.booleans()) else data.draw(st.sampled_from([1, 2, 4, 8, 16, 3]))
        out = feed("parallel_config", _build_and_validate, doc, model, w, input_repr=(name, w, doc))
        if out.accepted:
            check_config(model, out.value, w)


def test_parallel_config_count() -> None:
    assert fuzzlib.total("parallel_config") >= TARGETS["parallel_config"], dict(fuzzlib.COUNTS["parallel_config"])
