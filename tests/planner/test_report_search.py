"""`python -m planner search --out DIR` writes the report, the predicted trace and the exports beside the plan,
and candidates.csv loads in pandas as is."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest

from planner import trace_schema
from planner.cli import main
from planner.plan import Plan


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    rc = main(["search", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "8", "--fix", "pp=2",
               "--tokens", "1e12", "--out", str(out)])
    assert rc == 0
    return out


def test_search_writes_report_trace_and_exports(run_dir) -> None:
    names = {p.name for p in run_dir.iterdir()}
    assert {"plan.json", "candidates.csv", "report.html", "predicted_trace.json", "torchtitan_args.sh",
            "megatron_args.sh", "torchtitan.toml"} <= names
    plan = Plan.load(run_dir / "plan.json")
    text = (run_dir / "report.html").read_text()
    assert re.findall(r'<section id="([a-z]+)"', text) == ["answer", "why", "candidates", "plots", "partition",
                                                             "inputs"]
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) >= 5
    assert html.escape(plan.config.name) in text.split('<section id="why"')[0]
    assert "1.00T tokens" in text and "(--tokens)" in text
    assert "--pipeline-model-parallel-size 2" in text  # the Megatron export, folded under the launch line
    assert "torchrun --nnodes 1 --nproc-per-node 8 --standalone" in text
    # the command line in section 6 (the search rebuilds it from sys.argv: here pytest's)
    assert "<h3>Command</h3><pre>python -m planner " in text
    events = trace_schema.events(trace_schema.load(run_dir / "predicted_trace.json"))
    assert {e.rank for e in events} == {r for r in range(8) if r % plan.config.tp == 0}
    assert max(e.end_us for e in events) == pytest.approx(plan.predicted["step_time_s"] * 1e6, rel=0.03)


def test_candidates_csv_loads_in_pandas(run_dir) -> None:
    df = pd.read_csv(run_dir / "candidates.csv")
    assert len(df) > 10
    assert {"name", "status", "reason", "step_time_s", "peak_memory_bytes", "tp", "pp", "dp"} <= set(df.columns)
    assert set(df["status"]) <= {"ok", "infeasible", "pruned"}
    assert pd.api.types.is_float_dtype(df["step_time_s"]) and pd.api.types.is_numeric_dtype(df["tp"])
    ok = df[df["status"] == "ok"]
    assert ok["step_time_s"].notna().all() and (ok["step_time_s"] > 0).all()
    assert df.loc[df["status"] != "ok", "reason"].notna().all()  # every rejected row says why
    best = df.loc[df["rank"] == 1].iloc[0]
    assert best["step_time_s"] == ok["step_time_s"].min()
