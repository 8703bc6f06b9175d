"""Fuzz profile files (planner/profile.py): an accepted profile must answer every query it is asked
by the cost model without a traceback; a bad one is refused with one line."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from planner.cluster_spec import resolve_cluster
from planner.model_presets import PRESETS
from planner.profile import COLLECTIVE_OPS, Profile
from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import feed, fuzz_settings
from tests.reliability.strategies import combine, mutations

TARGETS = {"profile": 900}


CPU4 = resolve_cluster("cpu", gpus=4)


def exercise(p: Profile, scratch: Path) -> None:
    """Every query the cost model makes of a profile, over the shapes the profile holds and beyond."""
    model = PRESETS["tiny-llama"]
    for r in p.blocks:
        for mb in (r.micro_batch, r.micro_batch * 3, 1):
            p.block_time_s(r.block_kind, r.tp, mb, r.seq_len, r.sequence_parallel, model="tiny-llama")
            p.recompute_time_s(r.block_kind, r.tp, mb, r.seq_len, r.sequence_parallel, model=model)
    for op in COLLECTIVE_OPS:
        for g in (1, 2, 4):
            p.collective_time_s(op, g, "intra_node", 4096.0)
    p.device_rate("matmul_fp32")
    p.calibrated_cluster(CPU4)
    path = p.save(scratch / "profile.json")  # an accepted profile must be writable again, and read back equal
    again = Profile.load(path)
    assert again.blocks == p.blocks and again.collectives == p.collectives


def load_and_query(doc, scratch: Path) -> Profile:
    p = Profile.from_dict(doc, "profile.json")
    # fsync is what makes a write durable, not what is tested here; on a shared disk it dominates the time.
    with mock.patch("os.fsync"):
        exercise(p, scratch)
        exercise(p.for_cluster(CPU4), scratch)
    return p


@fuzz_settings(max_examples=260)
@given(st.data())
def test_fuzz_profile(tmp_path_factory, data) -> None:
    scratch = tmp_path_factory.getbasetemp()
    base = data.draw(st.sampled_from(bases.profile_docs()))
    paths = fuzzlib.all_paths(base)
    hot = [p for p in paths if p[0] in ("blocks", "collectives", "device_rates", "header", "models")
           and len(p) >= 3 or p[0] in ("kind", "schema_version")]
    muts = data.draw(mutations(base, paths=hot, max_size=4))
    for m in muts:
        feed("profile", load_and_query, m.apply(base), scratch, input_repr=m)
    feed("profile", load_and_query, combine(base, muts), scratch, input_repr=muts)


def test_profile_count() -> None:
    assert fuzzlib.total("profile") >= TARGETS["profile"], dict(fuzzlib.COUNTS["profile"])
