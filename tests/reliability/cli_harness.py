"""Run the planner CLI in-process (fast) or as a real subprocess, and check what a user would see.

The contract checked for every run (planner/errors.py, planner/cli.py):
- the exit code is documented: 0, 2 (invalid input), 3 (does not fit), 4 (check failed); argparse's own
  errors exit 2; 1 (an unexpected exception turned into "internal error") is a bug;
- a failing run prints exactly one ``error:`` line on stderr, and never a traceback;
- nothing partial is left behind: no temp files, staging or backup directories, and a failed run adds no
  file at all under the working directory (where ``reports/`` lives).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from planner.model_presets import PRESETS
from planner.profile import Profile
from tests.reliability import bases, fuzzlib

DOCUMENTED_EXIT_CODES = {0, 2, 3, 4}
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliRun:
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


def run_in_process(argv: list[str]) -> CliRun:
    from planner.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return CliRun(tuple(argv), int(code), out.getvalue(), err.getvalue())


def run_subprocess(argv: list[str], cwd: Path, timeout_s: float = 120) -> CliRun:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "planner", *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout_s)
    return CliRun(tuple(argv), p.returncode, p.stdout, p.stderr)


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_run(run: CliRun, root: Path, before: set[str]) -> None:
    """Assert the CLI contract (module docstring) for one run whose working area is ``root``."""
    where = f"argv={list(run.argv)!r}\nstderr={run.stderr[-2000:]!r}"
    assert "Traceback (most recent call last)" not in run.stderr + run.stdout, f"traceback\n{where}"
    assert run.code in DOCUMENTED_EXIT_CODES, f"undocumented exit code {run.code}\n{where}"
    lines = [l for l in run.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) <= 1, f"several error lines\n{where}"
    if run.code != 0:
        # The reason is one line, last on stderr ("error: ..." for a typed error; a failed check may word
        # it "check failed: ..."); warnings logged before it are allowed.
        assert lines, f"exit {run.code} without a reason on stderr\n{where}"
        assert not errors or errors[0] == lines[-1], f"the error line must be the last line\n{where}"
        assert len(lines[-1]) < 2000, f"error line too long ({len(lines[-1])} chars)\n{where}"
    else:
        assert not errors, f"exit 0 with an error line\n{where}"
    leftovers = fuzzlib.partial_entries(root)
    assert not leftovers, f"partial files left: {leftovers}\n{where}"
    if run.code not in (0, 3):  # a refused run writes nothing (3: estimate still reports, writes nothing)
        added = snapshot(root) - before
        assert not added, f"a failed run left files: {sorted(added)[:5]}\n{where}"


def write_input_files(d: Path) -> dict[str, str]:
    """The files the CLI fuzz hands to --model / --cluster / --profile / --plan: good, bad and odd."""
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def put(name: str, data: str | bytes) -> None:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        files[name] = str(p)

    tiny = PRESETS["tiny-llama"].to_dict()
    put("model.json", json.dumps(tiny))
    put("model.yaml", "\n".join(f"{k}: {json.dumps(v)}" for k, v in tiny.items()))
    put("model_bad_type.json", json.dumps({**tiny, "hidden_size": "64"}))
    put("model_missing.json", json.dumps({k: v for k, v in tiny.items() if k != "num_heads"}))
    put("model_truncated.json", json.dumps(tiny)[:40])
    put("hf_llama.json", (bases.HF_CONFIGS / "llama-3.1-8b.json").read_text())
    put("hf_unknown.json", json.dumps({"model_type": "bert", "hidden_size": 8}))
    put("hf_nan.json", '{"model_type": "llama", "hidden_size": NaN}')
    cpu = bases.cluster_dicts()[1]  # whichever preset sorts second; any valid cluster will do
    put("cluster.json", json.dumps(cpu))
    put("cluster_bad.yaml", "devices_per_node: -1\ndevice: {peak_flops: {bf16: 1}, memory_bytes: 1}\nlinks: []\n")
    put("cluster_list.json", "[1, 2, 3]")
    put("profile.json", json.dumps(bases.profile_docs()[0]))
    put("profile_v9.json", json.dumps({**bases.profile_docs()[0], "schema_version": 9}))
    plan = bases.valid_plans()[0]
    put("plan.json", json.dumps(plan))
    put("plan_truncated.json", json.dumps(plan)[: len(json.dumps(plan)) // 2])
    trace_plan, trace = bases.trace_cases()[0]
    put("trace_plan.json", json.dumps(trace_plan))
    put("trace.json", json.dumps(trace))
    put("trace_bad.json", json.dumps({**trace, "traceEvents": trace["traceEvents"][:3] + [{"ph": "X"}]}))
    put("empty.json", "")
    put("binary.json", bytes(range(256)))
    put("deep.json", "[" * 50_000 + "]" * 50_000)
    files["dir"] = str(d)
    files["missing"] = str(d / "does-not-exist.json")
    Profile.load(files["profile.json"])  # the good ones really are good
    return files
