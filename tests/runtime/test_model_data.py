"""Model built from ModelSpec (parameter counts are ModelSpec's), keyed initialisation, data, topology."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from planner.errors import ConfigError, SpecError
from planner.model_presets import PRESETS
from planner.rank_order import groups
from runtime.data import BatchLoader, ByteFileSource, SyntheticSource, make_source
from runtime.local_launch import launch
from runtime.mesh import build_topology
from runtime.model import ChunkSpec, build_chunk, build_full_model
from runtime.pipeline import check_preconditions
from tests.runtime.helpers import make_plan


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())  # parameters() de-duplicates the tied weight


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-moe"])
def test_parameter_count_is_model_specs(name: str) -> None:
    spec = PRESETS[name]
    assert _count(build_full_model(spec)) == spec.total_params()


@pytest.mark.parametrize("changes", [
    dict(qkv_bias=True), dict(qk_norm=True, head_dim=32), dict(linear_bias=True, activation="gelu"),
    dict(tied_embeddings=True), dict(num_kv_heads=1),
])
def test_parameter_count_of_variants(changes: dict) -> None:
    spec = PRESETS["tiny-llama"].replace(**changes)
    assert _count(build_full_model(spec)) == spec.total_params()


def test_chunks_are_slices_of_one_initialisation() -> None:
    """Keyed init: a layer's weights do not depend on which chunk (stage split) builds it."""
    spec = PRESETS["tiny-gpt"]
    full = dict(build_full_model(spec, seed=7).named_parameters())
    part = build_chunk(spec, ChunkSpec(2, 4, False, True), seed=7)
    for name, p in part.named_parameters():
        key = "embed.tok_embeddings.weight" if name == "head.output.weight" else name  # the tied copy
        assert torch.equal(p, full[key]), name
    other = dict(build_full_model(spec, seed=8).named_parameters())
    assert not torch.equal(other["layers.0.attention.wq.weight"], full["layers.0.attention.wq.weight"])


def test_mla_models_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="multi-head latent attention"):
        build_full_model(PRESETS["tiny-llama"].replace(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                                                        v_head_dim=16))


def test_synthetic_samples_depend_only_on_seed_and_index() -> None:
    src = SyntheticSource(256, 16, seed=3)
    assert torch.equal(src.sample(5), SyntheticSource(256, 16, seed=3).sample(5))
    assert not torch.equal(src.sample(5), src.sample(6))
    s = src.sample(9)
    assert s.shape == (17,) and int(s.min()) >= 0 and int(s.max()) < 256
    assert len(set(((s[1:] - s[:-1]) % 256).tolist())) == 1  # a counting sequence: learnable


def test_data_parallel_slices_tile_the_global_batch_and_position_round_trips() -> None:
    src = SyntheticSource(256, 8)
    whole = BatchLoader(src, 8, dp=1, dp_rank=0)
    parts = [BatchLoader(src, 8, dp=4, dp_rank=r) for r in range(4)]
    for _ in range(2):
        x, y = whole.next_batch()
        xs = torch.cat([p.next_batch()[0] for p in parts])
        assert torch.equal(x, xs) and torch.equal(x[:, 1:], y[:, :-1])
    resumed = BatchLoader(src, 8, dp=2, dp_rank=0)  # another layout resumes at the same global sample
    resumed.load_state_dict(whole.state_dict())
    assert torch.equal(resumed.next_batch()[0], whole.next_batch()[0][:4])
    with pytest.raises(SpecError):
        resumed.load_state_dict({"position": -1})


def test_byte_file_source(tmp_path) -> None:
    f = tmp_path / "text.txt"
    f.write_bytes(b"hello world, " * 20)
    src = make_source(f"bytes:{f}", 256, 8, seed=1)
    s = src.sample(0)
    assert s.shape == (9,) and bytes(s.tolist()) in b"hello world, " * 20
    with pytest.raises(ConfigError, match="vocabulary of at least 256"):
        ByteFileSource(f, 128, 8)
    with pytest.raises(SpecError, match="cannot read"):
        make_source(f"bytes:{tmp_path / 'missing'}", 256, 8)
    with pytest.raises(ConfigError, match="unknown data source"):
        make_source("imagenet", 256, 8)


def test_pipeline_preconditions_fail_fast_instead_of_hanging() -> None:
    cfg = make_plan("tiny-llama", pp=2, micro_batch_size=2, global_batch_size=8).config
    check_preconditions(cfg, 8)
    with pytest.raises(ConfigError, match="local batch 6 is not micro-batches x micro-batch size"):
        check_preconditions(cfg, 6)
    short = make_plan("tiny-llama", pp=2, schedule="gpipe", micro_batch_size=8, global_batch_size=8).config
    check_preconditions(short, 8)  # gpipe runs with fewer micro-batches than stages
    with pytest.raises(ConfigError, match="at least as many micro-batches"):
        check_preconditions(short.replace(schedule="1f1b"), 8)


def _groups_of_rank(plan) -> dict:
    topo = build_topology(plan)
    get = lambda g: sorted(dist.get_process_group_ranks(g)) if g is not None else None  # noqa: E731
    return {"tp": get(topo.tp_group), "dp": get(topo.dp_group), "pp": get(topo.pp_group),
            "ep": get(topo.ep_group), "edp": get(topo.edp_group)}


def test_topology_groups_are_the_planners_rank_order() -> None:
    plan = make_plan("tiny-moe", dp=2, tp=2, pp=2, ep=2, micro_batch_size=1)
    degrees = plan.config.degrees
    for rank, got in enumerate(launch(_groups_of_rank, 8, plan)):
        for axis in ("tp", "dp", "pp", "ep", "edp"):
            want = next(g for g in groups(degrees, axis) if rank in g)
            assert got[axis] == want, (rank, axis, got[axis], want)


def test_moe_with_zero_is_refused_up_front() -> None:
    from runtime.data_parallel import check_supported

    cfg = make_plan("tiny-moe", dp=2, zero_stage=1).config
    with pytest.raises(ConfigError, match="ZeRO .* with MoE layers is not supported"):
        check_supported(cfg, is_moe=True)


def test_zbv_with_zero3_is_refused_up_front() -> None:
    from runtime.data_parallel import check_supported

    cfg = make_plan("tiny-llama", dp=2, pp=2, schedule="zbv", virtual_stages=2, micro_batch_size=1,
                    zero_stage=3).config
    with pytest.raises(ConfigError, match="zbv with ZeRO-3"):
        check_supported(cfg, is_moe=False)
    with pytest.raises(ConfigError, match="zbv's split backward"):
        check_supported(cfg.replace(zero_stage=0, compression="fp16"), is_moe=False)
