"""Fuzz plan files: hand edits, truncation, wrong versions, garbage; nothing inconsistent is trusted.

Two readings of every mutated plan document:
- ``plan`` (the default, digest checked): an accepted plan must be *the same decision* as the plan that
  was written (same model, cluster, config, placement, stage table): an edit is either harmless
  (predicted numbers, provenance) or refused.
- ``plan:nodigest`` (the same documents, digest check off, as a tool that re-plans would read them):
  an accepted plan must still satisfy every invariant the runtime relies on.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from planner.plan import SCHEMA_VERSION, Plan
from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import dump_json_text, feed, fuzz_settings
from tests.reliability.strategies import HOSTILE, combine, mutations
from tests.reliability.test_fuzz_specs import check_config, check_model

TARGETS = {"plan": 1300, "plan_file": 500}


def check_plan_invariants(plan: Plan) -> None:
    """What the runtime assumes of any plan it is handed."""
    check_model(plan.model)
    check_config(plan.model, plan.config, plan.cluster.world_size)
    covered = [l for s in plan.stages for l in range(s.first_layer, s.last_layer)]
    assert sorted(covered) == list(range(plan.model.num_layers)), "stages must cover every layer exactly once"
    assert {s.pp_rank for s in plan.stages} == set(range(plan.config.pp))
    if plan.model.is_moe:
        assert len(plan.expert_placement) == plan.config.ep
        assert set(e for p in plan.expert_placement for e in p) == set(range(plan.model.num_experts))


def same_decision(plan: Plan, base: dict) -> None:
    ref = Plan.from_dict(base)
    assert plan.model == ref.model and plan.cluster == ref.cluster and plan.config == ref.config
    assert plan.expert_placement == ref.expert_placement and plan.digest == base["inputs_digest"]
    assert [(s.first_layer, s.last_layer, s.pp_rank) for s in plan.stages] == \
        [(s.first_layer, s.last_layer, s.pp_rank) for s in ref.stages]


def read_both_ways(doc, base: dict, why) -> None:
    out = feed("plan", Plan.from_dict, doc, "plan.json", input_repr=why)
    if out.accepted:
        same_decision(out.value, base)
    out = feed("plan:nodigest", Plan.from_dict, doc, "plan.json", check_digest=False, input_repr=why)
    if out.accepted:
        check_plan_invariants(out.value)


@fuzz_settings(max_examples=290)
@given(st.data())
def test_fuzz_plan_documents(data) -> None:
    base = data.draw(st.sampled_from(bases.valid_plans()))
    # Edits anywhere in the tree, but mostly where decisions live.
    paths = fuzzlib.all_paths(base)
    hot = [p for p in paths if p[0] in ("config", "degrees", "stages", "model", "expert_placement", "cluster")]
    muts = data.draw(mutations(base, paths=hot if data.draw(st.booleans()) else paths, max_size=4))
    for m in muts:
        read_both_ways(m.apply(base), base, m)
    read_both_ways(combine(base, muts), base, muts)
    version = data.draw(st.one_of(HOSTILE, st.integers(-2, 5)))
    doc = {**base, "schema_version": version}
    out = feed("plan", Plan.from_dict, doc, "plan.json", input_repr=("schema_version", version))
    assert out.accepted == (version == SCHEMA_VERSION), version  # 1.0 and True compare equal to 1: harmless


def test_plan_document_count() -> None:
    assert fuzzlib.total("plan") >= TARGETS["plan"], dict(fuzzlib.COUNTS["plan"])


@fuzz_settings(max_examples=120)
@given(st.data())
def test_fuzz_plan_files(tmp_path_factory, data) -> None:
    """Plan files as bytes on disk: truncated at any byte, bytes flipped, NaN literals, BOM, binary."""
    base = data.draw(st.sampled_from(bases.valid_plans()))
    text = json.dumps(base, indent=2)
    path = tmp_path_factory.mktemp("plans", numbered=True) / "plan.json"
    cut = data.draw(st.integers(0, len(text) - 1))
    pos = data.draw(st.integers(0, len(text) - 1))
    flip = data.draw(st.sampled_from([b"\x00", b"\xff", b"{", b"]", b"\"", b"9", b"NaN", b"-", b"\n"]))
    raw = text.encode()
    variants = [
        raw[:cut],                                              # a writer killed mid-write (non-atomic)
        raw[:pos] + flip + raw[pos + 1:],                       # one corrupted byte
        raw.replace(b'"step_time_s": 1.5', b'"step_time_s": NaN'),
        b"\xef\xbb\xbf" + raw,                                  # UTF-8 BOM
        data.draw(st.binary(max_size=64)),
    ]
    for blob in variants:
        path.write_bytes(blob)
        out = feed("plan_file", Plan.load, path, input_repr=blob[:80])
        if out.accepted:  # only possible when the bytes still decode to the same document
            same_decision(out.value, base)


def test_plan_file_count() -> None:
    assert fuzzlib.total("plan_file") >= TARGETS["plan_file"], dict(fuzzlib.COUNTS["plan_file"])


def test_hand_edited_summary_is_refused() -> None:
    """Editing the readable summary (degrees) instead of config must not be silently ignored."""
    base = next(p for p in bases.valid_plans() if p["degrees"]["tp"] == 2)
    doc = fuzzlib.copy_tree(base)
    doc["degrees"]["tp"] = 1
    out = feed("plan", Plan.from_dict, doc, "plan.json", must_name="degrees")
    assert not out.accepted
