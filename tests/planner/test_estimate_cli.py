"""`python -m planner estimate`: the exact surface of issue #2, JSON shape, exit codes."""

from __future__ import annotations

import json

from planner.cli import main
from planner.errors import EXIT_DOES_NOT_FIT, EXIT_INVALID

MIXTRAL = ["estimate", "--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "256",
           "--seq", "4096", "--tp", "1", "--ep", "8", "--pp", "4", "--schedule", "interleaved:8", "--micro-batch", "1"]


def test_human_output_prints_the_breakdown(capsys):
    assert main(MIXTRAL) == 0
    out = capsys.readouterr().out
    for word in ("step time", "TFLOP/s", "pp_bubble", "ep_comm", "dp_sync_exposed", "stage   3", "fits"):
        assert word in out


def test_json_output_has_the_required_fields(capsys):
    assert main(MIXTRAL + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("step_time_s", "tflops_per_gpu", "mfu", "peak_memory_bytes", "memory_by_stage", "fits", "breakdown"):
        assert key in d
    assert len(d["memory_by_stage"]) == 4
    for s in d["memory_by_stage"]:
        assert set(s) >= {"weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "other_bytes",
                          "total_bytes"}
    assert d["peak_memory_bytes"] == max(s["total_bytes"] for s in d["memory_by_stage"])
    assert abs(sum(d["breakdown"].values()) - d["step_time_s"]) < 1e-9 * d["step_time_s"]


def test_does_not_fit_still_reports_and_exits_3(capsys):
    argv = ["estimate", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "8",
            "--tp", "8", "--pp", "1", "--micro-batch", "1", "--json"]
    assert main(argv) == EXIT_DOES_NOT_FIT
    cap = capsys.readouterr()
    d = json.loads(cap.out)
    assert d["fits"] is False and d["excess_bytes"] > 0 and d["memory_by_stage"]
    assert "exceeds" in cap.err and "bytes per rank" in cap.err


def test_invalid_input_exits_2_with_one_line(capsys):
    argv = ["estimate", "--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "64", "--global-batch", "64",
            "--tp", "5", "--pp", "1", "--micro-batch", "1"]
    assert main(argv) == EXIT_INVALID
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    bad_sched = argv[:9] + ["--tp", "8", "--pp", "2", "--micro-batch", "1", "--schedule", "interleaved:x"]
    assert main(bad_sched) == EXIT_INVALID


def test_zbv_gpipe_zero_and_recompute_flags(capsys):
    base = ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100", "--gpus", "16", "--global-batch", "64",
            "--tp", "2", "--pp", "2", "--micro-batch", "1", "--json"]
    for extra in (["--schedule", "zbv"], ["--schedule", "gpipe"], ["--zero", "3"],
                  ["--recompute", "full", "--sequence-parallel"], ["--grad-sync", "hierarchical", "--no-overlap"]):
        assert main(base + extra) in (0, EXIT_DOES_NOT_FIT)
        json.loads(capsys.readouterr().out)
