"""Fuzz `python -m runtime train|verify` arguments and plan files: a documented exit code and one error line,
refused before any rank starts or process group forms (the runtime re-validates the plan, its digest and
the launched world first). Every generated argument vector carries at least one defect, so nothing trains.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import fuzz_settings
from tests.reliability.train_helpers import write_plan

TARGETS = {"runtime_cli": 120}
_FILES: dict[str, dict[str, str]] = {}

DEFECTS = [["--steps", "0"], ["--steps", "-3"], ["--steps", "x"], ["--lr", "nan"], ["--lr", "-1"], ["--lr", "inf"],
           ["--dtype", "fp8"], ["--optimizer", "lion"], ["--resume", "/nonexistent/ckpt"], ["--log-every", "0"],
           ["--trace-steps", "0"], ["--timeout", "0"], ["--unknown"], ["--checkpoint-every", "x"]]
# --data defects are refused before any rank starts: test_bad_data_source_refused_up_front (regression test).


def _files(root) -> dict[str, str]:
    if str(root) in _FILES:
        return _FILES[str(root)]
    root.mkdir(parents=True, exist_ok=True)
    good = root / "plan.json"
    write_plan(good)
    doc = json.loads(good.read_text())
    edited = dict(doc, config={**doc["config"], "global_batch_size": 8})  # hand edit: digest no longer matches
    files = {"good": str(good)}
    for name, text in {"truncated": good.read_text()[:200], "edited": json.dumps(edited),
                       "v9": json.dumps({**doc, "schema_version": 9}), "empty": "",
                       "other": json.dumps(bases.valid_plans()[-1])}.items():
        (root / f"{name}.json").write_text(text)
        files[name] = str(root / f"{name}.json")
    files["missing"], files["dir"] = str(root / "nope.json"), str(root)
    _FILES[str(root)] = files
    return files


def run_runtime_cli(argv: list[str]) -> tuple[int, str]:
    from runtime.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return int(code), err.getvalue()


@fuzz_settings(max_examples=TARGETS["runtime_cli"])
@given(st.data())
def test_fuzz_runtime_cli(tmp_path_factory, data) -> None:
    files = _files(tmp_path_factory.getbasetemp() / "runtime-cli")
    command = data.draw(st.sampled_from(["train", "train", "verify", "bogus"]))
    plan = data.draw(st.sampled_from(sorted(files)))
    argv = [command, "--plan", files[plan], "--steps", data.draw(st.sampled_from(["1", "2", "0", "x"]))]
    if plan in ("good", "other") or data.draw(st.booleans()):
        argv += data.draw(st.sampled_from(DEFECTS))  # a loadable plan always comes with a defect
    code, stderr = run_runtime_cli(argv)
    lines = [l for l in stderr.splitlines() if l.strip()]
    ok = (code in (2, 3, 4) and lines and lines[-1].startswith("error: ") and "Traceback" not in stderr
          and sum(l.startswith("error:") for l in lines) == 1)
    fuzzlib.COUNTS["runtime_cli"]["rejected" if ok else "bad_message"] += 1
    assert ok, f"argv={argv!r} exit={code} stderr={stderr[-1500:]!r}"


def test_runtime_cli_count() -> None:
    assert fuzzlib.total("runtime_cli") >= TARGETS["runtime_cli"], dict(fuzzlib.COUNTS["runtime_cli"])


def test_world_mismatch_refused_before_process_group(tmp_path, monkeypatch) -> None:
    """torchrun started 4 processes for a 2-process plan: refused before init_process_group."""
    files = _files(tmp_path / "f")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    code, stderr = run_runtime_cli(["train", "--plan", files["good"], "--steps", "1"])
    assert code == 2 and "needs 2 processes, torchrun started 4" in stderr, (code, stderr)
    import torch.distributed as dist

    assert not dist.is_initialized()


@pytest.mark.parametrize("data_arg", ["weird", "bytes:/nonexistent/file.txt"])
def test_bad_data_source_refused_up_front(tmp_path, data_arg) -> None:
    files = _files(tmp_path / "f")
    code, stderr = run_runtime_cli(["train", "--plan", files["good"], "--steps", "1", "--data", data_arg])
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-800:])
