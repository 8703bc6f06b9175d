"""One test per input bug the fuzz suite found (each fixed in the file named; see the reliability report).

Each is the smallest input that used to produce a traceback, or an edit that used to be silently trusted.
"""

from __future__ import annotations

import json
import math

import pytest

from planner.cluster_spec import ClusterSpec, resolve_cluster
from planner.errors import ConfigError, PlannerError, SpecError
from planner.hf_config import model_from_hf_config
from planner.io import read_json, read_json_or_yaml
from planner.model_presets import PRESETS
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from tests.reliability import bases

LLAMA = dict(model_type="llama", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
CFG = dict(dp=2, tp=2, pp=2, micro_batch_size=1, global_batch_size=8, seq_len=32)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e400])
def test_hf_non_finite_size_is_one_line(value) -> None:
    """hf_config._Fields._int: int(nan) raised ValueError, int(inf) OverflowError."""
    with pytest.raises(SpecError, match="'hidden_size' must be an integer"):
        model_from_hf_config({**LLAMA, "hidden_size": value}, "x")


@pytest.mark.parametrize("value", [[1], {"a": 1}, 7])
def test_hf_model_type_of_wrong_type(value) -> None:
    """hf_config.model_from_hf_config: an unhashable model_type raised TypeError."""
    with pytest.raises(SpecError, match="unknown model_type"):
        model_from_hf_config({**LLAMA, "model_type": value}, "x")


def test_absurd_sizes_rejected_quickly() -> None:
    """model_spec: only six fields were bounded; 10**300 experts or 10**7 layers (6 s to count) passed."""
    with pytest.raises(SpecError, match="num_kv_heads=100000...\\(301 digits\\) is implausibly large"):
        model_from_hf_config({**LLAMA, "num_key_value_heads": 1e300}, "x")
    base = PRESETS["tiny-moe"]
    with pytest.raises(SpecError, match="num_experts"):
        base.replace(num_experts=10**400)
    with pytest.raises(SpecError, match="num_layers=10000000 is implausibly large"):
        PRESETS["tiny-gpt"].replace(num_layers=10_000_000)


def test_yaml_integer_keys() -> None:
    """model_spec / parallel_config from_dict: sorted() of mixed int/str keys raised TypeError."""
    with pytest.raises(SpecError, match="unknown field 1"):
        ModelSpec.from_dict({1: 2, "name": "x"})
    with pytest.raises(ConfigError, match="unknown field 1"):
        ParallelConfig.from_dict({**CFG, 1: 2})


def test_cluster_huge_integer_number() -> None:
    """cluster_spec._num: math.isfinite(10**400) raised OverflowError."""
    d = resolve_cluster("cpu").to_dict()
    d["device"]["peak_flops"]["fp32"] = 10**400
    with pytest.raises(SpecError, match="peak_flops.fp32 must be a finite number"):
        ClusterSpec.from_dict(d)


def test_cluster_path_too_long() -> None:
    """cluster_spec.resolve_cluster: Path.exists() raised OSError(ENAMETOOLONG)."""
    with pytest.raises(SpecError, match="unknown cluster"):
        resolve_cluster("a" * 5000)


def test_model_path_too_long() -> None:
    from planner.model_presets import resolve_model

    with pytest.raises(SpecError, match="unknown model"):
        resolve_model("a" * 5000)


def test_config_field_types() -> None:
    """parallel_config: stage_recompute_layers ('a' raised TypeError; >chunk layers passed with an even split),
    compression_param (any object passed), booleans ('yes' passed as sequence_parallel, True as zero stage 1)."""
    with pytest.raises(ConfigError, match="stage_recompute_layers must be non-negative integers"):
        ParallelConfig(**CFG, stage_layers=(2, 2), stage_recompute_layers=("a", 1))
    with pytest.raises(ConfigError, match="exceed the layers per chunk"):
        ParallelConfig(**CFG, stage_recompute_layers=(3, 0)).validate_for(PRESETS["tiny-gpt"], 8)
    for bad in ("abc", math.nan, math.inf, -1.0, None, 10**400, -(10**400)):
        with pytest.raises(ConfigError, match="compression_param"):
            ParallelConfig(**CFG, compression_param=bad)
    with pytest.raises(ConfigError, match="sequence_parallel must be true or false"):
        ParallelConfig(**CFG, sequence_parallel="yes")
    with pytest.raises(ConfigError, match="zero stage"):
        ParallelConfig(**CFG, zero_stage=True)


def _plan_doc() -> dict:
    return json.loads(json.dumps(bases.valid_plans()[0]))


def test_plan_predicted_not_an_object() -> None:
    """plan.Plan.from_dict: dict('ab') raised ValueError."""
    with pytest.raises(SpecError, match="predicted must be an object"):
        Plan.from_dict({**_plan_doc(), "predicted": "ab"})


def test_plan_expert_ids_of_wrong_type() -> None:
    """plan._check_placement: sorted() over mixed str/int expert ids raised TypeError."""
    doc = next(json.loads(json.dumps(p)) for p in bases.valid_plans() if p["expert_placement"])
    doc["expert_placement"][0][0] = "zero"
    with pytest.raises(SpecError, match="expert_placement must be a list of lists of expert ids"):
        Plan.from_dict(doc)


@pytest.mark.parametrize("key, value", [("degrees", {"dp": 9, "tp": 9, "pp": 9, "ep": 1}), ("world_size", 3),
                                        ("rank_order", "pp-dp-tp"), ("name", "tp8_pp1_dp1_mbs1")])
def test_plan_summary_edits_refused(key, value) -> None:
    """plan.Plan.from_dict ignored the summary keys: a hand edit there was silently trusted."""
    with pytest.raises(SpecError, match=f"{key}=.* disagrees with the plan's config"):
        Plan.from_dict({**_plan_doc(), key: value})


@pytest.mark.parametrize("text, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("1" * 5000, "not valid JSON"),
    ('{"a": NaN}', "not valid JSON"),
    ('{"a": -Infinity}', "not valid JSON"),
])
def test_read_json_hostile_text(tmp_path, text, needle) -> None:
    """io.read_json: RecursionError and the int-digit ValueError escaped; NaN/Infinity were accepted."""
    p = tmp_path / "f.json"
    p.write_text(text)
    with pytest.raises(SpecError, match=needle):
        read_json(p)


def test_read_yaml_deep_nesting(tmp_path) -> None:
    p = tmp_path / "f.yaml"
    p.write_text("[" * 2000 + "]" * 2000)
    try:
        read_json_or_yaml(p)
    except PlannerError:
        pass


# --- planner/profile.py: reported by this suite, fixed by its owner in 0ca5f16 ---------------------------
def _profile_doc_with(path: tuple, value) -> dict:
    from tests.reliability.fuzzlib import copy_tree, set_at

    doc = copy_tree(bases.profile_docs()[0])
    set_at(doc, path, value)
    return doc


@pytest.mark.parametrize("path, value", [
    (("collectives", 0, "nbytes"), "1e3"),             # TypeError in _check_record (math.isfinite(str))
    (("blocks", 0, "forward_s"), 10**400),             # OverflowError in _check_record
    (("blocks", 5, "recompute_s"), "8"),               # TypeError in _piecewise_linear on a query
    (("blocks", 4, "model"), {"a": 1}),                # TypeError (unhashable) in _interpolate
    (("collectives", 2, "concurrency"), None),         # TypeError in concurrency_levels
    (("models", "tiny-llama"), "x"),                   # AttributeError in _arch on a query by ModelSpec
])
def test_profile_field_types(path, value) -> None:
    """profile._check_record validated only some fields: each of these used to be a traceback."""
    from planner.profile import Profile

    doc = _profile_doc_with(path, value)
    with pytest.raises(PlannerError):
        p = Profile.from_dict(doc)
        p.block_time_s("attention", 1, 2, 32, False, model=PRESETS["tiny-llama"])
        p.recompute_time_s("attention", 1, 2, 32, False, model=PRESETS["tiny-llama"])
        p.collective_time_s("all_reduce", 2, "intra_node", 1e4)


def test_profile_huge_shape() -> None:
    """profile._check_record: micro_batch=10**400 passed and a query's float division raised OverflowError
    (fixed by its owner after this report)."""
    from planner.profile import Profile

    with pytest.raises(PlannerError):
        p = Profile.from_dict(_profile_doc_with(("blocks", 4, "micro_batch"), 10**400))
        p.block_time_s("attention", 1, 2, 32, False, model=PRESETS["tiny-llama"])


def test_trace_huge_timestamp() -> None:
    from planner.trace_schema import events

    trace = fuzzlib_copy(bases.trace_cases()[0][1])
    ev = next(e for e in trace["traceEvents"] if e.get("ph") == "X")
    ev["dur"] = 10**400
    with pytest.raises(PlannerError):
        events(trace)


def fuzzlib_copy(doc):
    from tests.reliability.fuzzlib import copy_tree

    return copy_tree(doc)


def test_plan_keeps_stage_predictions_on_load() -> None:
    """plan.Plan.from_dict rebuilt the stage table without its predictions: every loaded plan said
    predicted_time_s = 0 and predicted_memory_bytes = 0 per stage, whatever the file said."""
    doc = _plan_doc()
    for i, s in enumerate(doc["stages"]):
        s["predicted_time_s"], s["predicted_memory_bytes"] = 0.5 + i, 1000 + s["pp_rank"]
    plan = Plan.from_dict(doc)
    assert [s.predicted_time_s for s in plan.stages] == [0.5 + i for i in range(len(doc["stages"]))]
    assert [s.predicted_memory_bytes for s in plan.stages] == [1000 + s["pp_rank"] for s in doc["stages"]]
    doc["stages"][0]["predicted_memory_bytes"] = 10**400
    with pytest.raises(SpecError, match="stage 0 predicted_memory_bytes must be a finite number"):
        Plan.from_dict(doc)
