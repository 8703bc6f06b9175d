"""CostModel interface: Estimate fields, breakdown adds up, partition inputs agree, profile, errors."""

from __future__ import annotations

import json

import pytest

from planner.cluster_spec import resolve_cluster
from planner.cost import BREAKDOWN_TERMS, CostModel, Estimate
from planner.errors import ConfigError
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig


def _gpt3():
    return CostModel(PRESETS["gpt3-175b"], resolve_cluster("dgx-a100-80gb", gpus=1024))


CFG = ParallelConfig(dp=8, tp=8, pp=16, micro_batch_size=1, global_batch_size=1536, seq_len=2048,
                     schedule="interleaved", virtual_stages=2, recompute="selective", sequence_parallel=True)


def test_estimate_fields_and_breakdown_add_up():
    est = _gpt3().estimate(CFG)
    assert isinstance(est, Estimate)
    assert set(BREAKDOWN_TERMS) <= set(est.breakdown)
    assert sum(est.breakdown.values()) == pytest.approx(est.step_time_s)
    assert all(v >= 0 for v in est.breakdown.values())
    assert len(est.memory_by_stage) == 16 and len(est.chunk_times_s) == 32
    assert est.peak_memory_bytes == max(s.total_bytes for s in est.memory_by_stage)
    assert 0 < est.mfu <= est.hfu < 1
    model_flops = 72 * 1536 * 96 * 2048 * 12288**2 * (1 + 2048 / (6 * 12288) + 51200 / (12 * 12288 * 96))
    assert est.tflops_per_gpu == pytest.approx(model_flops / est.step_time_s / 1024 / 1e12, rel=0.01)
    json.dumps(est.to_dict(), allow_nan=False)


def test_invalid_config_raises_and_does_not_fit_does_not():
    cm = _gpt3()
    with pytest.raises(ConfigError):
        cm.estimate(ParallelConfig(dp=1024 // 10 // 1, tp=10, pp=1, micro_batch_size=1, global_batch_size=1530,
                                   seq_len=2048))
    big = ParallelConfig(dp=1024, tp=1, pp=1, micro_batch_size=1, global_batch_size=1024, seq_len=2048)
    est = cm.estimate(big)
    assert not est.fits and est.excess_bytes > 0 and any("does not fit" in n for n in est.notes)
    assert cm.memory(big).fits is False


def test_partition_inputs_rebuild_the_memory_and_time_of_a_stage():
    cm = _gpt3()
    cfg = CFG.replace(schedule="1f1b", virtual_stages=1)
    pin = cm.partition_inputs(cfg)
    est = cm.estimate(cfg)
    assert len(pin.layer_time_s) == 96 and len(pin.inflight_microbatches) == 16
    assert pin.inflight_microbatches[0] == 16
    stage0 = est.memory_by_stage[0]
    static = sum(pin.layer_static_bytes[:6]) + pin.embed_static_bytes
    assert static == pytest.approx(stage0.weights_bytes + stage0.gradients_bytes + stage0.optimizer_bytes, rel=1e-9)
    act = (sum(pin.layer_activation_bytes[:6]) + pin.embed_activation_bytes) * pin.inflight_microbatches[0]
    assert act == pytest.approx(stage0.activations_bytes, rel=1e-9)
    assert sum(pin.layer_time_s[6:12]) == pytest.approx(est.chunk_times_s[1], rel=1e-9)
    assert all(x > 0 for x in pin.layer_full_recompute_extra_s)
    assert all(f < a for f, a in zip(pin.layer_activation_full_recompute_bytes, pin.layer_activation_bytes))
    assert pin.capacity_bytes == cm.capacity_bytes


class _Profile:
    def block_time_s(self, block_kind, tp, micro_batch, seq_len, sequence_parallel):
        return (0.01, 0.02) if block_kind in ("attention", "mlp") else None

    def collective_time_s(self, op, group_size, link_level, nbytes):
        return None


def test_profile_block_times_replace_the_analysis():
    m = PRESETS["tiny-gpt"]
    c = resolve_cluster("cpu", gpus=2)
    cfg = ParallelConfig(dp=2, tp=1, pp=1, micro_batch_size=2, global_batch_size=8, seq_len=32)
    plain = CostModel(m, c).estimate(cfg)
    prof = CostModel(m, c, profile=_Profile()).estimate(cfg)
    per_mb_layers = m.num_layers * (0.01 + 0.02)
    assert prof.chunk_times_s[0] > per_mb_layers > plain.chunk_times_s[0]


def test_stage_layers_and_per_chunk_full_recompute_are_priced():
    cm = _gpt3()
    cfg = CFG.replace(schedule="1f1b", virtual_stages=1)
    uneven = cfg.replace(stage_layers=(5,) + (6,) * 14 + (7,))
    est = cm.estimate(uneven)
    assert est.chunk_times_s[0] < est.chunk_times_s[-1]
    rec = cm.estimate(cfg.replace(stage_recompute_layers=(6,) + (0,) * 15))
    base = cm.estimate(cfg)
    assert rec.chunk_times_s[0] > base.chunk_times_s[0]
    assert rec.memory_by_stage[0].activations_bytes < base.memory_by_stage[0].activations_bytes


def test_mixtral_ep_and_zbv_and_grad_sync_variants_run():
    m = PRESETS["mixtral-8x7b"]
    cm = CostModel(m, resolve_cluster("dgx-h100", gpus=64))
    cfg = ParallelConfig(dp=16, tp=1, pp=4, ep=8, micro_batch_size=1, global_batch_size=256, seq_len=4096,
                         schedule="interleaved", virtual_stages=8)
    est = cm.estimate(cfg)
    assert est.breakdown["ep_comm"] > 0 and est.fits
    zbv = cm.estimate(cfg.replace(schedule="zbv", virtual_stages=2))
    assert zbv.step_time_s > 0
    for gs in ("hierarchical", "ps"):
        assert cm.estimate(cfg.replace(grad_sync=gs)).step_time_s > 0
    ps = cm.estimate(cfg.replace(grad_sync="ps", overlap_grad_reduce=False))
    ring = cm.estimate(cfg.replace(overlap_grad_reduce=False))
    assert ps.breakdown["dp_sync_exposed"] > ring.breakdown["dp_sync_exposed"]


def test_zbv_prices_a_smaller_bubble_than_1f1b():
    # the case: llama3.1-70b, 64 H100s, tp 8 pp 4 dp 2, 16 micro-batches of 16 x 8192 tokens
    from planner.model_presets import resolve_model

    cm = CostModel(resolve_model("llama3.1-70b").replace(seq_len=8192), resolve_cluster("dgx-h100", gpus=64))
    base = ParallelConfig(dp=2, tp=8, pp=4, micro_batch_size=16, global_batch_size=512, seq_len=8192)
    one = cm.estimate(base)
    zbv = cm.estimate(base.replace(schedule="zbv", virtual_stages=2))
    bubble = {k: e.breakdown["pp_bubble"] / e.step_time_s for k, e in (("1f1b", one), ("zbv", zbv))}
    assert bubble["zbv"] < bubble["1f1b"] / 4 and zbv.step_time_s < one.step_time_s
    # same compute, B + W = the whole backward (the busiest rank differs: zbv's rank 0 holds embedding and head,
    # 1F1B's last rank the head alone, hence 1%); zbv's B also waits for the TP collectives W no longer hides
    assert zbv.breakdown["compute"] == pytest.approx(one.breakdown["compute"], rel=1e-2)
    assert zbv.breakdown["tp_comm"] > one.breakdown["tp_comm"]
    # activation memory of the 1F1B budget: every zbv rank holds 2 pp chunk-microbatches of half-stage chunks,
    # the p micro-batches of 1F1B's first stage (1F1B rank 1 holds p - 1; its layers equal zbv rank 1's)
    assert zbv.memory_by_stage[1].activations_bytes == pytest.approx(
        one.memory_by_stage[1].activations_bytes * 4 / 3, rel=1e-9)


def test_pipeline_durations_are_what_the_estimate_simulates():
    from planner.cost import CostOptions, PipelineDurations
    from planner.schedules import build_schedule, simulate

    cm = _gpt3()
    cfg = CFG.replace(global_batch_size=256)  # 32 micro-batches = 2 pp: simulated exactly, no extrapolation
    dur = cm.pipeline_durations(cfg)
    est = cm.estimate(cfg)
    assert isinstance(dur, PipelineDurations) and len(dur.chunks) == cfg.num_chunks and dur.p2p_s > 0
    assert [ch.total_s for ch in dur.chunks] == pytest.approx(est.chunk_times_s, rel=1e-12)
    assert all(ch.w_s == 0 for ch in dur.chunks)  # interleaved runs the whole backward as B
    f, b, w, p2p = dur.simulation_inputs()
    tl = simulate(build_schedule(cfg.schedule, cfg.pp, cfg.num_micro_batches, cfg.virtual_stages), f, b, w, p2p)
    pipeline = sum(est.breakdown[k] for k in ("compute", "recompute", "tp_comm", "ep_comm", "pp_comm", "pp_bubble"))
    assert tl.makespan_s == pytest.approx(pipeline, rel=1e-9)
    # zbv: W is the weight-gradient part, B + W the whole backward
    z = cm.pipeline_durations(cfg.replace(schedule="zbv", virtual_stages=2))
    assert all(0 < ch.w_s < ch.b_s for ch in z.chunks)
    # blocking sends: the transfer is the tail of the producing action, the edges carry none
    blocking = CostModel(cm.model, cm.cluster, options=CostOptions(pp_comm_overlap=False)).pipeline_durations(cfg)
    fb, bb, _, edge = blocking.simulation_inputs()
    assert blocking.p2p_blocking and edge == 0.0
    assert fb[0] == pytest.approx(blocking.chunks[0].f_s + blocking.p2p_s) and bb[0] == blocking.chunks[0].b_s
    with pytest.raises(ConfigError, match="world size"):
        cm.pipeline_durations(cfg.replace(dp=4))


# a sample of real configurations beyond the exactly simulated range: every schedule, uneven chunks, blocking
# and asynchronous sends, dense and MoE (model, gpus, tp, pp, ep, micro-batch, global batch, schedule, v, options)
_SAMPLE = [("gpt3-175b", 1024, 8, 16, 1, 1, 1536, "interleaved", 2, None),
           ("gpt3-175b", 1024, 4, 16, 1, 4, 6144, "interleaved", 4, None),
           ("gpt3-175b", 1024, 8, 8, 1, 1, 1536, "1f1b", 1, "blocking"),
           ("gpt3-175b", 1024, 8, 8, 1, 2, 2048, "zbv", 2, None),
           ("gpt3-175b", 1024, 8, 16, 1, 1, 1024, "gpipe", 1, None),
           ("llama3.1-70b", 512, 8, 8, 1, 1, 512, "1f1b", 1, None),
           ("llama3.1-70b", 512, 8, 4, 1, 1, 1024, "interleaved", 5, "blocking"),
           ("llama3.1-70b", 512, 8, 8, 1, 2, 1024, "zbv", 2, "blocking"),
           ("llama3.1-70b", 512, 4, 2, 1, 1, 4096, "zbv", 2, None),
           ("mixtral-8x7b", 64, 2, 4, 8, 1, 256, "1f1b", 1, None),
           ("mixtral-8x7b", 64, 1, 4, 4, 1, 512, "zbv", 2, None),
           ("mixtral-8x7b", 64, 2, 2, 4, 2, 1024, "interleaved", 4, None)]


@pytest.mark.parametrize("row", _SAMPLE, ids=lambda r: f"{r[0]}-tp{r[2]}-pp{r[3]}-{r[7]}{r[8]}-{r[9] or 'async'}")
def test_extrapolated_pipeline_is_within_a_tenth_of_a_percent_of_the_full_simulation(row):
    from planner.cost import CostOptions
    from planner.cost.pipeline import makespan
    from planner.cost.schedule_dag import finish_times, schedule_dag
    from planner.model_presets import resolve_model

    name, gpus, tp, pp, ep, mb, gb, sched, v, opts = row
    model = resolve_model(name)
    model = model.replace(seq_len=min(model.seq_len, 4096))
    cluster = resolve_cluster("dgx-a100-80gb" if name.startswith("gpt3") else "dgx-h100", gpus=gpus)
    cm = CostModel(model, cluster, options=CostOptions(pp_comm_overlap=opts != "blocking"))
    cfg = ParallelConfig(dp=gpus // (tp * pp), tp=tp, pp=pp, ep=ep, micro_batch_size=mb, global_batch_size=gb,
                         seq_len=model.seq_len, schedule=sched, virtual_stages=v, recompute="selective",
                         sequence_parallel=tp > 1)
    assert cfg.num_micro_batches > 5 * pp  # beyond every schedule's exactly simulated range
    dur = cm.pipeline_durations(cfg)
    f, b, w, p2p = dur.simulation_inputs()
    m = cfg.num_micro_batches
    full = max(finish_times(schedule_dag(sched, pp, m, v), f, b, w, p2p))
    got = makespan(sched, pp, v, m, f, b, w, p2p).makespan_s
    # zbv's deferred W can absorb a few percent of stage imbalance for tens of rounds before the busiest rank
    # saturates; the extension assumes it saturated (0.4% at worst on a wider sample of real configurations)
    assert got == pytest.approx(full, rel=5e-3 if sched == "zbv" else 1e-3)
