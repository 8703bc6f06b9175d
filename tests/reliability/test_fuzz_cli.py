"""Fuzz the command line: every argument vector gets a documented exit code, at most one error line,
no traceback and nothing partial on disk. Bulk in-process (planner.cli.main), a few real subprocesses."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from planner.cli import COMMANDS
from tests.reliability import fuzzlib
from tests.reliability.cli_harness import check_run, run_in_process, run_subprocess, snapshot, write_input_files
from tests.reliability.fuzzlib import fuzz_settings

TARGETS = {"cli": 300}
_FILES: dict[str, dict[str, str]] = {}

INTS = st.sampled_from(["1", "2", "4", "8", "0", "-1", "3", "abc", "1e3", "", "9" * 30, "2.0", " 4", "0x8"])
FLOATS = st.sampled_from(["0", "0.01", "1", "4", "-1", "nan", "inf", "x", "1e400"])
VALUES = {
    "--gpus": INTS, "--nodes": INTS, "--global-batch": INTS, "--seq": INTS, "--tp": INTS, "--pp": INTS,
    "--dp": INTS, "--ep": INTS, "--micro-batch": INTS, "--top": INTS, "--time-limit": FLOATS,
    "--schedule": st.sampled_from(["1f1b", "gpipe", "interleaved:2", "interleaved:1", "interleaved:x", "zbv",
                                   "bogus", "INTERLEAVED:3", ""]),
    "--recompute": st.sampled_from(["none", "selective", "full", "some"]),
    "--zero": st.sampled_from(["0", "1", "2", "3", "4", "-1", "x"]),
    "--grad-sync": st.sampled_from(["allreduce", "hierarchical", "ps", "ring"]),
    "--compression": st.sampled_from(["none", "fp16", "bf16", "int8", "topk", "powersgd", "zip"]),
    "--compression-param": FLOATS,
    "--stage-layers": st.sampled_from(["2,2", "1,3", "4", "a,b", "-1,5", "", "2,,2", "1,1,1,1", "9" * 40]),
    "--fix": st.sampled_from(["tp=2", "pp=2", "dp=1", "tp=0", "tp", "=2", "bogus=1", "tp=x", "micro_batch=2"]),
}
FLAGS = ("--sequence-parallel", "--json", "--no-overlap")
MODELS = ["tiny-llama", "tiny-gpt", "tiny-moe", "gpt2", "llama3.1-8b", "mixtral-8x7b", "nope", ""]
CLUSTERS = ["cpu", "dgx-h100", "dgx-a100-80gb", "a100-25gbe", "nope"]


@st.composite
def argvs(draw, files: dict[str, str]) -> list[str]:
    # Weighted to the commands that read user input; validate (reads nothing but its flags, and runs every
    # published row, ~1 s) is covered by one subprocess run below.
    command = draw(st.sampled_from(["estimate"] * 8 + ["search"] * 3 + ["compare", "rebalance"] * 2
                                   + ["presets", "bogus", "--verbose", "validate"]))
    if command == "validate":
        return [command, draw(st.sampled_from(["--bogus", "--json=3", "extra"]))]
    file_names = sorted(files)
    argv = [command]
    # A search that succeeds writes a full report (~2-7 s on a loaded 2-core machine): rare here (see below),
    # and covered end to end by test_search_outputs.py.
    if command == "estimate" and draw(st.booleans()):
        # Near-valid: a runnable request plus at most two hostile flags (reaches the cost model and solver).
        argv += ["--model", draw(st.sampled_from(["tiny-llama", "tiny-gpt", "tiny-moe", files["model.json"],
                                                  files["model.yaml"]])),
                 "--cluster", draw(st.sampled_from(["cpu", "dgx-h100", "dgx-h100", files["cluster.json"]])),
                 "--gpus", draw(st.sampled_from(["1", "2", "4", "8"])),
                 "--global-batch", draw(st.sampled_from(["8", "16"]))]
        for flag in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=2, unique=True)):
            argv += [flag, draw(VALUES[flag])]
        return argv
    if draw(st.booleans()):
        argv += ["--model", draw(st.sampled_from(MODELS + [files[n] for n in file_names]))]
    if draw(st.booleans()):
        argv += ["--cluster", draw(st.sampled_from(CLUSTERS + [files[n] for n in file_names if "cluster" in n]
                                                   + [files["missing"], files["dir"]]))]
    for flag in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=5, unique=True)):
        argv += [flag, draw(VALUES[flag])]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    if draw(st.integers(0, 3)) == 0:
        argv += ["--profile", draw(st.sampled_from([files[n] for n in file_names]))]
    if command in ("compare", "rebalance") and draw(st.booleans()):
        # The run's own plan and trace (valid), or a mismatched / broken one.
        argv += ["--plan", draw(st.sampled_from([files["trace_plan.json"], files["plan.json"]])),
                 "--measured", draw(st.sampled_from([files["trace.json"], files["trace_bad.json"], files["plan.json"]]))]
    elif draw(st.integers(0, 5)) == 0:
        argv += ["--plan", draw(st.sampled_from([files[n] for n in file_names]))]
    if draw(st.integers(0, 5)) == 0:
        argv += ["--measured", draw(st.sampled_from([files[n] for n in file_names]))]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(["--unknown-flag", "extra", "--model", "-x", "--gpus=2", "\x00"])))
    if command == "search":
        if "--model" not in argv:
            argv += ["--model", "tiny-gpt"]  # not the built-in default (a 70B model on 64 GPUs: seconds per run)
        if draw(st.integers(0, 9)):  # mostly a request search must refuse: its refusals are what is fuzzed here
            argv += draw(st.sampled_from([["--gpus", "0"], ["--fix", "tp=0"], ["--fix", "bogus=1"], ["--fix", "tp"],
                                          ["--global-batch", "x"], ["--time-limit", "-1"], ["--top", "0"],
                                          ["--cluster", "nope"], ["--model", "nope"], ["--gpus", "7", "--fix", "tp=2"]]))
    return argv


@fuzz_settings(max_examples=TARGETS["cli"])
@given(st.data())
def test_fuzz_cli_in_process(tmp_path_factory, data) -> None:
    root = tmp_path_factory.getbasetemp() / "cli-fuzz"
    files = _FILES.get(str(root)) or _FILES.setdefault(str(root), write_input_files(root / "inputs"))
    work = root / "work"
    work.mkdir(exist_ok=True)
    argv = data.draw(argvs(files))
    if any(a in ("search", "rebalance", "compare") for a in argv[:2]):
        argv += ["--out", str(work / "reports" / "run")]
        if argv[0] != "compare":
            argv += ["--time-limit", "2"]
    before = snapshot(work)
    cwd = os.getcwd()
    os.chdir(work)  # commands that default to ./reports write under the scratch area, never the repo
    try:
        run = run_in_process(argv)
    finally:
        os.chdir(cwd)
    outcome = {0: "accepted", 3: "rejected_exit3"}.get(run.code, "rejected")
    try:
        check_run(run, work, before)
    except AssertionError:
        fuzzlib.COUNTS["cli"]["traceback" if "Traceback" in run.stderr or run.code == 1 else "bad_message"] += 1
        raise
    fuzzlib.COUNTS["cli"][outcome] += 1


def test_cli_count() -> None:
    assert fuzzlib.total("cli") >= TARGETS["cli"], dict(fuzzlib.COUNTS["cli"])


def test_cli_subprocess_bad_inputs(tmp_path) -> None:
    """A few real processes: what a user's shell sees (exit code, one stderr line, nothing partial)."""
    files = write_input_files(tmp_path / "inputs")
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        (["estimate", "--model", files["hf_nan.json"], "--cluster", "cpu", "--global-batch", "8"], 2),
        (["estimate", "--model", "tiny-llama", "--cluster", files["cluster_bad.yaml"], "--global-batch", "8"], 2),
        (["estimate", "--model", "tiny-llama", "--cluster", "cpu", "--gpus", "4", "--global-batch", "8",
          "--tp", "3"], 2),
    ]  # argparse's own refusals (SystemExit 2) are covered in-process
    for argv, want in cases:
        before = snapshot(work)
        run = run_subprocess(argv, cwd=work)
        check_run(run, work, before)
        assert run.code == want, (argv, run.code, run.stderr)
        fuzzlib.COUNTS["cli_subprocess"]["rejected"] += 1
