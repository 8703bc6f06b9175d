"""Profile format and lookups: round trip, version check, merge, interpolation, coverage."""

from __future__ import annotations

import json

import pytest

from planner.cluster_spec import CLUSTER_PRESETS, resolve_cluster
from planner.errors import SpecError
from planner.model_presets import resolve_model
from planner.profile import (BlockRecord, CollectiveSample, DeviceRate, EXTRAPOLATION_FACTOR, Profile,
                             ProfileHeader)


def _header(**kw) -> ProfileHeader:
    base = dict(device="test-cpu", backend="gloo", torch_version="2.13.0", world_size=2, nodes=1,
                devices_per_node=2, date="2025-01-01T00:00:00Z", host="h")
    base.update(kw)
    return ProfileHeader(**base)


def _block(kind="attention", tp=1, mb=1, seq=64, fwd=1.0, bwd=2.0, rec=1.1, conc=2, model="tiny-llama", sp=False):
    return BlockRecord(model=model, block_kind=kind, tp=tp, micro_batch=mb, seq_len=seq, sequence_parallel=sp,
                       forward_s=fwd, backward_s=bwd, recompute_s=rec, repeats=5, concurrency=conc)


def _samples(op="all_reduce", g=2, alpha=1e-4, beta=1e-9, conc=2):
    return tuple(CollectiveSample(op=op, group_size=g, link_level="intra_node", nbytes=n, time_s=alpha + beta * n,
                                  concurrency=conc) for n in (1e3, 1e4, 1e5, 1e6) for _ in range(3))


def _profile(**kw) -> Profile:
    model = resolve_model("tiny-llama")
    base = dict(header=_header(), models={"tiny-llama": model.to_dict()},
                blocks=(_block(mb=1, fwd=1.0, bwd=2.0), _block(mb=4, fwd=4.0, bwd=8.0, rec=4.4)),
                collectives=_samples() + _samples("send_recv", alpha=5e-5, beta=2e-9),
                device_rates=(DeviceRate("matmul_fp32", 3e10, 2), DeviceRate("memory_bandwidth", 4e9, 2)))
    base.update(kw)
    return Profile(**base)


def test_round_trip(tmp_path):
    p = _profile()
    path = p.save(tmp_path / "profile.json")
    q = Profile.load(path)
    assert q == p
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["header"]["backend"] == "gloo"
    assert {f["op"] for f in data["fits"]} == {"all_reduce", "send_recv"}


def test_version_mismatch_is_one_line_spec_error(tmp_path):
    path = _profile().save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="schema version 99 is not supported") as exc:
        Profile.load(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.update(kind="other"), "not a hybridplan profile"),
    (lambda d: d["blocks"][0].update(block_kind="conv"), "block_kind 'conv'"),
    (lambda d: d["blocks"][0].update(bogus=1), "unknown field 'bogus'"),
    (lambda d: d["collectives"][0].update(link_level="pcie"), "link_level 'pcie'"),
    (lambda d: d["collectives"][0].update(time_s=-1.0), "time_s must be a finite number"),
    (lambda d: d["collectives"][0].update(time_s=0.0), "time_s > 0"),
    (lambda d: d["blocks"][0].update(forward_s=10**400), "forward_s must be a finite number"),
    (lambda d: d["blocks"][0].update(sequence_parallel="no"), "sequence_parallel must be true or false"),
    (lambda d: d["models"].update(bad="x"), r"models\[.bad.\]"),
    (lambda d: d.update(blocks="x"), "blocks must be a list"),
])
def test_malformed_profiles_are_refused(tmp_path, mutate, msg):
    data = _profile().to_dict()
    mutate(data)
    with pytest.raises(SpecError, match=msg):
        Profile.from_dict(data)


def test_missing_file_is_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        Profile.load(tmp_path / "nope.json")


def test_block_interpolation_linear_in_tokens():
    p = _profile()
    assert p.block_time_s("attention", 1, 1, 64, False) == (1.0, 2.0)
    fwd, bwd = p.block_time_s("attention", 1, 2, 64, False)
    assert (fwd, bwd) == pytest.approx((2.0, 4.0))
    assert p.recompute_time_s("attention", 1, 2, 64, False) == pytest.approx(1.1 + (4.4 - 1.1) / 3)
    # within the extrapolation factor beyond the largest shape: the end segment extended
    assert p.block_time_s("attention", 1, 8, 64, False) == pytest.approx((8.0, 16.0))
    # beyond it, or an unmeasured tp / kind / sp: not covered
    assert p.block_time_s("attention", 1, int(4 * EXTRAPOLATION_FACTOR) + 1, 64, False) is None
    assert p.block_time_s("attention", 2, 1, 64, False) is None
    assert p.block_time_s("mlp", 1, 1, 64, False) is None
    assert p.block_time_s("attention", 1, 1, 64, True) is None


def test_block_lookup_prefers_same_seq_and_filters_model():
    p = _profile(blocks=(_block(mb=1, seq=64, fwd=1.0), _block(mb=2, seq=32, fwd=5.0),
                         _block(mb=1, seq=128, fwd=2.2)))
    # 64 tokens: exact measured shape at seq 64 wins over the (mb 2, seq 32) record of the same tokens
    assert p.block_time_s("attention", 1, 1, 64, False)[0] == 1.0
    assert p.block_time_s("attention", 1, 1, 64, False, model=resolve_model("tiny-llama"))[0] == 1.0
    assert p.block_time_s("attention", 1, 1, 64, False, model="other") is None
    # same name, another architecture (a wider model): not this profile's blocks
    wider = resolve_model("tiny-llama").replace(hidden_size=128)
    assert p.block_time_s("attention", 1, 1, 64, False, model=wider) is None
    two = _profile(blocks=(_block(), _block(model="m2")))
    with pytest.raises(SpecError, match="several models"):
        two.block_time_s("attention", 1, 1, 64, False)


def test_collective_time_from_fit_and_coverage():
    p = _profile()
    fit = p.fits[("all_reduce", 2, "intra_node")]
    assert fit.alpha_s == pytest.approx(1e-4) and fit.beta_s_per_byte == pytest.approx(1e-9)
    assert p.collective_time_s("all_reduce", 2, "intra_node", 5e5) == pytest.approx(1e-4 + 5e-4)
    assert p.collective_time_s("all_reduce", 1, "intra_node", 5e5) == 0.0
    assert p.collective_time_s("all_reduce", 4, "intra_node", 5e5) is None
    assert p.collective_time_s("all_gather", 2, "intra_node", 5e5) is None
    assert p.collective_time_s("all_reduce", 2, "inter_node", 5e5) is None
    assert p.collective_time_s("all_reduce", 2, "intra_node", 1e6 * EXTRAPOLATION_FACTOR * 1.01) is None


def test_concurrency_selection():
    p = _profile(blocks=(_block(conc=2, fwd=1.0), _block(conc=4, fwd=2.0)),
                 collectives=_samples(conc=2) + _samples(conc=4, alpha=3e-4))
    assert p.block_time_s("attention", 1, 1, 64, False)[0] == 1.0  # header world 2
    assert p.at_concurrency(4).block_time_s("attention", 1, 1, 64, False)[0] == 2.0
    cpu4 = resolve_cluster("cpu", gpus=4)
    assert p.for_cluster(cpu4).fits[("all_reduce", 2, "intra_node")].alpha_s == pytest.approx(3e-4)
    assert p.for_cluster(CLUSTER_PRESETS["dgx-h100"]) is p


def test_merge_keeps_samples_and_latest_blocks():
    a = _profile(header=_header(date="2025-01-01T00:00:00Z"))
    b = _profile(header=_header(date="2025-02-01T00:00:00Z", world_size=4, devices_per_node=4),
                 blocks=(_block(mb=1, fwd=1.5, bwd=3.0),), collectives=_samples("all_gather"))
    m = Profile.merge([b, a])
    assert m.header.world_size == 4 and m.header.date == "2025-02-01T00:00:00Z"
    assert len(m.collectives) == len(a.collectives) + len(b.collectives)
    # the (mb 1) block was measured in both: the later run's record wins; mb 4 only in a
    assert m.at_concurrency(2).block_time_s("attention", 1, 1, 64, False) == (1.5, 3.0)
    assert m.at_concurrency(2).block_time_s("attention", 1, 4, 64, False) == (4.0, 8.0)
    with pytest.raises(SpecError, match="different devices"):
        Profile.merge([a, _profile(header=_header(device="gpu"))])
    with pytest.raises(SpecError, match="nothing to merge"):
        Profile.merge([])


def test_calibrated_cpu_cluster_uses_measurements():
    cpu = resolve_cluster("cpu", gpus=2)
    c = _profile().calibrated_cluster(cpu)
    assert c.device.peak_flops["fp32"] == 3e10 and c.device.hbm_bandwidth_bytes_per_s == 4e9
    assert c.intra_node.latency_s == pytest.approx(5e-5)
    assert c.intra_node.bandwidth_bytes_per_s == pytest.approx(5e8)
    assert c.devices_per_node == 2 and c.backend == "gloo"


def test_merge_average_brackets_a_measurement():
    before = _profile(header=_header(date="2025-01-01T00:00:00Z"), blocks=(_block(mb=1, fwd=1.0, bwd=2.0),))
    after = _profile(header=_header(date="2025-01-01T01:00:00Z"), blocks=(_block(mb=1, fwd=2.0, bwd=4.0, rec=None),))
    m = Profile.merge([before, after], average=True)
    assert m.at_concurrency(2).block_time_s("attention", 1, 1, 64, False) == (1.5, 3.0)
    assert m.blocks[0].recompute_s is None  # one run did not measure it: no half-made mean
    assert m.blocks[0].repeats == 10
    assert Profile.merge([before, after]).at_concurrency(2).block_time_s("attention", 1, 1, 64, False) == (2.0, 4.0)
