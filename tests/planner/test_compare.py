"""`planner compare` and the per-stage cut of traces (planner/measured.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner.cli import main
from planner.cluster_spec import resolve_cluster
from planner.commands.compare import comparison, predicted_trace_for
from planner.errors import SpecError
from planner.measured import stage_times
from planner.model_presets import resolve_model
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from planner.trace_schema import TraceBuilder, save


def make_plan(pp: int = 2, tp: int = 1, dp: int = 1, gb: int = 4, stage_layers: tuple[int, ...] = ()) -> Plan:
    model = resolve_model("tiny-llama")
    cfg = ParallelConfig(dp=dp, tp=tp, pp=pp, micro_batch_size=1, global_batch_size=gb, seq_len=32,
                         stage_layers=stage_layers)
    cpu = resolve_cluster("cpu", gpus=dp * tp * pp)
    # 8 GiB per process: room for the cost model's framework overhead, so memory never binds here
    cpu = dataclasses.replace(cpu, device=dataclasses.replace(cpu.device, memory_bytes=8 * 2**30))
    return Plan.build(model, cpu, cfg)


def gpipe_trace(f_s: list[float], b_s: list[float], m: int, steps: int, opt_s: float = 0.001,
                warmup_scale: float = 3.0) -> dict:
    """A measured-looking GPipe trace for pp = len(f_s) ranks (one chunk each), ``steps`` steps; the first
    step is ``warmup_scale`` times slower. Stage r's F of micro-batch i starts when stage r-1's ends."""
    tb = TraceBuilder("measured")
    t0 = 0.0
    pp = len(f_s)
    for step in range(steps):
        k = warmup_scale if step == 0 else 1.0
        f_end = [[0.0] * m for _ in range(pp)]
        for r in range(pp):
            t = t0
            for i in range(m):
                start = max(t, f_end[r - 1][i] if r else t0)
                tb.add(r, "compute", "F", start * 1e6, f_s[r] * k * 1e6, chunk=r, microbatch=i, kind="F")
                t = f_end[r][i] = start + f_s[r] * k
        b_end = [[0.0] * m for _ in range(pp)]
        for r in reversed(range(pp)):
            t = f_end[r][-1]
            for i in reversed(range(m)):
                start = max(t, b_end[r + 1][i] if r < pp - 1 else t)
                tb.add(r, "compute", "B", start * 1e6, b_s[r] * k * 1e6, chunk=r, microbatch=i, kind="B")
                t = b_end[r][i] = start + b_s[r] * k
        end = max(b_end[r][0] for r in range(pp))
        for r in range(pp):
            tb.add(r, "compute", "optimizer", end * 1e6, opt_s * 1e6, kind="O")
        t0 = end + opt_s
    return tb.to_dict()


def test_stage_times_drop_warmup_and_add_up():
    trace = gpipe_trace([0.01, 0.01], [0.02, 0.02], m=4, steps=3)
    st = stage_times(trace, make_plan().config.degrees)
    assert [s.steps for s in st] == [2, 2]  # warm-up step dropped
    for s in st:
        assert s.compute_s == pytest.approx(4 * 0.03)
        assert s.optimizer_s == pytest.approx(0.001)
        assert s.compute_s + s.comm_s + s.bubble_s + s.optimizer_s == pytest.approx(s.step_s)
        assert s.chunk_compute_s == {s.pp_rank: pytest.approx(0.03)}
    # GPipe with equal stages: step = (m + pp - 1) (f + b) + optimizer
    assert max(s.step_s for s in st) == pytest.approx(5 * 0.03 + 0.001)
    assert st[0].bubble_s == pytest.approx(0.03)


def test_stage_times_refuse_inconsistent_traces():
    d = make_plan().config.degrees
    trace = gpipe_trace([0.01, 0.01], [0.02, 0.02], m=2, steps=2)
    trace["traceEvents"] = [e for e in trace["traceEvents"] if not (e.get("pid") == 1 and e["name"] == "optimizer"
                                                                    and e["ts"] > 0.05e6)]
    with pytest.raises(SpecError, match="different numbers of steps"):
        stage_times(trace, d)
    big = gpipe_trace([0.01, 0.01, 0.01], [0.02, 0.02, 0.02], m=2, steps=1)
    with pytest.raises(SpecError, match="outside the plan's world"):
        stage_times(big, d)


def test_compare_with_own_prediction_is_exact():
    plan = make_plan(pp=2, tp=2)
    pred = predicted_trace_for(plan)
    res = comparison(plan, pred, pred, "self")
    assert res["step_time_s"]["error"] == pytest.approx(0.0)
    assert [r["layers"] for r in res["stages"]] == [2, 2]


def test_compare_cli_table_and_json(tmp_path, capsys):
    plan = make_plan()
    plan.save(tmp_path / "plan.json")
    save(tmp_path / "trace.json", gpipe_trace([0.01, 0.012], [0.02, 0.024], m=4, steps=3))
    assert main(["compare", "--plan", str(tmp_path / "plan.json"), "--measured", str(tmp_path / "trace.json"),
                 "--json", "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["stages"][1]["compute_s"]["measured"] == pytest.approx(4 * 0.036)
    assert res["step_time_s"]["predicted"] > 0
    assert (tmp_path / "cmp" / "compare.json").exists() and (tmp_path / "cmp" / "compare.txt").exists()
    assert main(["compare", "--plan", str(tmp_path / "plan.json"), "--measured", str(tmp_path / "trace.json")]) == 0
    out = capsys.readouterr().out
    assert "predicted vs measured per pipeline stage" in out and out.strip().splitlines()[-1].startswith("step time")


def test_compare_cli_bad_trace_is_one_line(tmp_path, capsys):
    make_plan().save(tmp_path / "plan.json")
    (tmp_path / "t.json").write_text("{}")
    assert main(["compare", "--plan", str(tmp_path / "plan.json"), "--measured", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_profile_defaults_to_the_one_recorded_in_the_plan(tmp_path, capsys):
    from planner.commands.compare import profile_for
    from planner.profile import Profile, ProfileHeader

    prof = Profile(header=ProfileHeader(device="d", backend="gloo"))
    prof.save(tmp_path / "p.json")
    plan = make_plan()
    recorded = Plan.build(plan.model, plan.cluster, plan.config, provenance={"profile": str(tmp_path / "p.json")})
    assert profile_for(recorded, None) == prof
    assert profile_for(plan, None) is None
    gone = Plan.build(plan.model, plan.cluster, plan.config, provenance={"profile": str(tmp_path / "gone.json")})
    assert profile_for(gone, None) is None and "is gone" in capsys.readouterr().err
