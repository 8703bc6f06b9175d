"""report.html: the sections in order, inline figures only, escaped user strings, numbers that add up."""

from __future__ import annotations

import base64
import html as htmllib
import json
import re
from pathlib import Path

import pytest

from planner.cluster_spec import CLUSTER_PRESETS
from planner.cost import CostModel
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from planner.report import Rejected, write_report
from planner.report.context import reason_groups, training_time
from planner.report.plots import pareto_front
from planner.report.sensitivity import sweep

XSS = "<script>alert(1)</script>"
SECTION_ORDER = ["answer", "why", "candidates", "plots", "partition", "inputs"]


def configs(gb: int = 64) -> list[ParallelConfig]:
    out = []
    for tp, pp, dp in ((8, 4, 2), (8, 2, 4), (4, 4, 4), (8, 8, 1)):
        for rc in ("selective", "full"):
            out.append(ParallelConfig(dp=dp, tp=tp, pp=pp, micro_batch_size=1, global_batch_size=gb, seq_len=8192,
                                      sequence_parallel=True, recompute=rc, schedule="interleaved", virtual_stages=2))
    return out


def build(tmp: Path, model_name: str = "llama3.1-70b", command: str = "python -m planner search",
          measured: Path | None = None):
    model = PRESETS["llama3.1-70b"].replace(name=model_name)
    cluster = CLUSTER_PRESETS["dgx-h100"].with_world(gpus=64)
    cm = CostModel(model, cluster)
    ests = sorted((cm.estimate(c) for c in configs()), key=lambda e: e.step_time_s)
    ok = [e for e in ests if e.fits]
    rejected = [Rejected(e.config.name, e.notes[0], e.step_time_s) for e in ests if not e.fits]
    plan = Plan.build(model, cluster, ok[0].config, predicted=ok[0].to_dict())
    files = write_report(tmp, plan=plan, ranked=ok, cost_model=cm, rejected=rejected, command=command,
                         launch_command=f"torchrun --nnodes 8 -m runtime train --plan {tmp}/plan.json",
                         tokens=1e12, measured_trace=measured)
    return files, ok, rejected


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    files, ok, rejected = build(tmp, command=f"python -m planner search --model '{XSS}' --out <b>dir</b>")
    return files, files["report.html"].read_text(), ok, rejected


def test_sections_in_order_and_figures_inline(report) -> None:
    files, text, ok, _ = report
    ids = re.findall(r'<section id="([a-z]+)"', text)
    assert ids == SECTION_ORDER
    imgs = re.findall(r"<img [^>]*>", text)
    assert len(imgs) >= 6  # breakdown, memory, gantt, pareto, sensitivity, partition
    for tag in imgs:
        src = re.search(r'src="([^"]+)"', tag).group(1)
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "http://" not in text and "https://" not in text and "src=\"//" not in text
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert {"report.html", "predicted_trace.json", "torchtitan_args.sh", "megatron_args.sh", "torchtitan.toml"} <= set(
        p.name for p in files.values())


def test_user_strings_are_escaped(report) -> None:
    _, text, _, _ = report
    assert XSS not in text and "<b>dir</b>" not in text
    assert "<script" not in text.lower()  # the report carries no script at all
    assert htmllib.escape(XSS) in text  # the name still shows, as text
    assert "&lt;b&gt;dir&lt;/b&gt;" in text


def test_answer_shows_the_plan_numbers(report) -> None:
    _, text, ok, _ = report
    best = ok[0]
    answer = text.split('<section id="why"')[0]
    assert htmllib.escape(best.config.name) in answer
    assert f"{best.tokens_per_s_per_gpu:,.0f}" in answer
    assert f"MFU {100 * best.mfu:.1f}%" in answer
    for s in best.memory_by_stage:
        assert f"pp rank {s.pp_rank}" in answer
    assert "torchrun --nnodes 8" in answer
    wall, gpu_h = training_time(best.step_time_s, best.config.tokens_per_step, 1e12, 64)
    assert f"{wall / 86400:,.1f} days" in answer or f"{wall / 3600:,.1f} h" in answer
    assert "--tensor-model-parallel-size 8" in answer and "--parallelism.tensor_parallel_degree 8" in answer


def test_why_names_runner_up_and_rejected_faster_candidate(report) -> None:
    _, text, ok, rejected = report
    why = text.split('<section id="why"')[1].split('<section id="candidates"')[0]
    assert htmllib.escape(ok[1].config.name) in why
    faster = [r for r in rejected if r.step_time_s < ok[0].step_time_s]
    assert faster  # tp4 / pp2 candidates are faster but do not fit: the binding constraint names the fastest
    assert htmllib.escape(min(faster, key=lambda r: r.step_time_s).name) in why
    assert "rejected because: does not fit" in why
    for term in ok[0].breakdown:
        if ok[0].breakdown[term] or ok[1].breakdown[term]:
            assert f"<td class=\"l\">{term}</td>" in why


def test_candidates_table_ranks_and_lists_infeasible(report) -> None:
    _, text, ok, rejected = report
    cands = text.split('<section id="candidates"')[1].split('<section id="plots"')[0]
    positions = [cands.index(htmllib.escape(e.config.name)) for e in ok]
    assert positions == sorted(positions)
    assert f"Infeasible candidates ({len(rejected)} configurations)" in cands
    for r in rejected:
        assert htmllib.escape(r.name) in cands


def test_training_time_and_reason_groups() -> None:
    wall, gpu_h = training_time(2.0, 1_000_000, 1e9, 64)
    assert wall == pytest.approx(2000.0) and gpu_h == pytest.approx(2000.0 * 64 / 3600)
    groups = reason_groups((Rejected("a", "needs 90.1 GiB"), Rejected("b", "needs 85 GiB"), Rejected("c", "pp 3")))
    assert groups[0][:2] == ("needs N GiB", 2) and groups[1][1] == 1


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [("a", 100.0, 10.0), ("b", 90.0, 20.0), ("c", 150.0, 30.0), ("d", 120.0, 40.0), ("e", 200.0, 50.0)]
    assert [n for n, _, _ in pareto_front(pts)] == ["a", "c", "e"]


def test_sensitivity_moves_the_right_way() -> None:
    model = PRESETS["llama3.1-70b"]
    cluster = CLUSTER_PRESETS["dgx-h100"].with_world(gpus=64)
    cfg = configs()[0]
    dims = {d.title: d.points[cfg.name] for d in sweep(model, cluster, [(cfg.name, cfg)],
                                                       lambda m, c: CostModel(m, c))}
    lo, base, hi = dims["device FLOP/s"]
    assert lo.step_time_s > base.step_time_s > hi.step_time_s
    lo, base, hi = dims["link bandwidth"]
    assert lo.step_time_s >= base.step_time_s >= hi.step_time_s
    lo, base, hi = dims["sequence length"]
    assert lo.step_time_s < base.step_time_s < hi.step_time_s
    lo, base, hi = dims["GPU count (dp)"]
    assert lo.step_time_s > base.step_time_s  # half the replicas: each runs twice the micro-batches
    # 72 sequences: dp 4 leaves 18 micro-batches, not a multiple of pp 4 as interleaving needs, so that point
    # is marked invalid rather than priced
    odd = cfg.replace(global_batch_size=72, dp=2)
    pts = {d.title: d.points["odd"] for d in sweep(model, cluster, [("odd", odd)], lambda m, c: CostModel(m, c))}
    assert pts["GPU count (dp)"][2] is None


def test_compare_section_with_a_measured_trace(report, tmp_path) -> None:
    files = report[0]
    predicted = json.loads(files["predicted_trace.json"].read_text())
    measured = dict(predicted)
    measured["otherData"] = dict(predicted["otherData"], source="measured")
    measured["traceEvents"] = [dict(e, ts=e["ts"] * 1.25, dur=e["dur"] * 1.25) if e["ph"] == "X" else e
                               for e in predicted["traceEvents"]]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(measured))
    _, _, _ = build(tmp_path / "b", measured=path)
    text = (tmp_path / "b" / "report.html").read_text()
    ids = re.findall(r'<section id="([a-z]+)"', text)
    assert ids == SECTION_ORDER + ["compare"]
    compare = text.split('<section id="compare"')[1]
    assert "<td>1.25</td>" in compare  # every track 25% slower than predicted
    assert compare.count("<img ") == 3
