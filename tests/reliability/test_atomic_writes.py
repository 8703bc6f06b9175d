"""Atomic writes: a failure or a kill during a write leaves the previous version intact, and every
writer in the project goes through planner.io's atomic helpers.

- failures injected into planner.io (os.replace / os.fsync / the write itself raising);
- a real writer process SIGKILLed at random moments while it rewrites a file (and a report directory);
- Plan.save and Profile.save under the same injected failures;
- a scan: no module writes files except through planner.io (or a named, justified exception).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from planner import io as pio
from tests.reliability import bases, fuzzlib

ROOT = Path(__file__).resolve().parents[2]


class Boom(OSError):
    pass


def _fail(*_a, **_k):
    raise Boom("injected failure")


@pytest.mark.parametrize("target", ["os.replace", "os.fsync"])
def test_failed_write_keeps_previous_version(tmp_path, monkeypatch, target) -> None:
    path = tmp_path / "plan.json"
    pio.atomic_write_json(path, {"version": 1})
    monkeypatch.setattr(target, _fail)
    with pytest.raises(Boom):
        pio.atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert pio.read_json(path) == {"version": 1}
    assert not fuzzlib.partial_entries(tmp_path), list(tmp_path.iterdir())


def test_write_that_raises_midway_keeps_previous_version(tmp_path, monkeypatch) -> None:
    path = tmp_path / "report.html"
    pio.atomic_write_text(path, "old")
    real_fdopen = os.fdopen

    class HalfFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise Boom("disk full")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: HalfFile(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(Boom):
        pio.atomic_write_text(path, "new" * 1000)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert not fuzzlib.partial_entries(tmp_path)


def test_staged_directory_failures_keep_previous_run(tmp_path, monkeypatch) -> None:
    run = tmp_path / "reports" / "run"
    with pio.staged_directory(run) as d:
        (d / "plan.json").write_text("v1")
    # 1. the run fails half-way: nothing partial, the previous run intact
    with pytest.raises(RuntimeError):
        with pio.staged_directory(run) as d:
            (d / "plan.json").write_text("v2-partial")
            raise RuntimeError("solver crashed")
    assert (run / "plan.json").read_text() == "v1"
    assert not fuzzlib.partial_entries(tmp_path)
    # 2. the second of the two renames fails: the previous version is put back
    real = os.replace
    calls = []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise Boom("rename failed")
        return real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(Boom):
        with pio.staged_directory(run) as d:
            (d / "plan.json").write_text("v3")
    monkeypatch.undo()
    assert (run / "plan.json").read_text() == "v1"
    assert not fuzzlib.partial_entries(tmp_path), sorted(p.name for p in (tmp_path / "reports").iterdir())


def test_plan_and_profile_save_are_atomic(tmp_path, monkeypatch) -> None:
    from planner.plan import Plan
    from planner.profile import Profile

    plan = Plan.from_dict(bases.valid_plans()[0])
    other = Plan.from_dict(bases.valid_plans()[1])
    prof = Profile.from_dict(bases.profile_docs()[0])
    plan.save(tmp_path / "plan.json")
    prof.save(tmp_path / "profile.json")
    monkeypatch.setattr(os, "replace", _fail)
    with pytest.raises(Boom):
        other.save(tmp_path / "plan.json")
    with pytest.raises(Boom):
        Profile.from_dict(bases.profile_docs()[1]).save(tmp_path / "profile.json")
    monkeypatch.undo()
    assert Plan.load(tmp_path / "plan.json") == plan
    assert Profile.load(tmp_path / "profile.json") == prof


# --- a real process killed while writing ------------------------------------------------------------
WRITER = r"""
import sys
from planner.io import atomic_write_bytes, staged_directory
path, mode = sys.argv[1], sys.argv[2]
size = 2_000_000
i = 0
print("ready", flush=True)
while True:
    i += 1
    payload = bytes([65 + i % 2]) * size
    if mode == "file":
        atomic_write_bytes(path, payload)
    else:
        with staged_directory(path) as d:
            for name in ("plan.json", "candidates.csv", "report.html"):
                (d / name).write_bytes(payload)
"""


def _kill_during_writes(target: Path, mode: str, kills: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    delays = []
    for k in range(kills):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], env=env, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        delay = 0.05 + 0.37 * ((k * 7919) % 11) / 11  # spread over the write cycle, deterministic
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        delays.append(delay)
    return delays


def _whole(blob: bytes) -> bool:
    return len(blob) == 2_000_000 and blob in (b"A" * 2_000_000, b"B" * 2_000_000)


def test_sigkill_during_file_writes_never_leaves_a_partial_file(tmp_path) -> None:
    target = tmp_path / "plan.json"
    for _ in range(4):
        _kill_during_writes(target, "file", 1)
        assert target.exists() and _whole(target.read_bytes())
    # A SIGKILL cannot clean up: at most the one hidden temp file of the interrupted write remains,
    # never under the target's name, and the next write is unaffected by it.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "plan.json"]
    assert all(n.startswith(".plan.json.") and n.endswith(".tmp") for n in leftovers), leftovers


def test_sigkill_during_report_directory_writes(tmp_path) -> None:
    """A run directory is replaced by two renames; a kill between them leaves the previous version as a
    hidden backup, which the next staged_directory (or a reader's recovery) restores. Either way the
    directory a reader opens is whole: every file complete and of one version."""
    run = tmp_path / "reports" / "run"
    with pio.staged_directory(run) as d:
        for n in ("plan.json", "candidates.csv", "report.html"):
            (d / n).write_bytes(b"A" * 2_000_000)
    for _ in range(6):
        _kill_during_writes(run, "dir", 1)
        pio._recover_interrupted_swap(run)
        assert run.is_dir(), "the previous run directory was lost"
        blobs = [(run / n).read_bytes() for n in ("plan.json", "candidates.csv", "report.html")]
        assert all(_whole(b) for b in blobs) and len(set(blobs)) == 1, "mixed or partial run directory"


# --- every writer goes through planner.io -----------------------------------------------------------------
WRITE_CALLS = {"write_text", "write_bytes", "to_csv", "to_json", "to_html", "savefig", "dump"}
ALLOWED = {
    # file -> why its direct writes are fine
    "planner/io.py": "the atomic helpers themselves",
    "runtime/local_launch.py": "per-rank logs and results in the launcher's private temp dir (results: tmp + replace)",
}


def _direct_writes(path: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: open(..., {mode.value!r})")
        elif name in WRITE_CALLS and node.args:
            first = node.args[0]
            to_buffer = isinstance(first, ast.Name) and first.id in ("buf", "buffer", "f", "fh", "stream", "out")
            if name == "dump" and not (isinstance(f, ast.Attribute) and getattr(f.value, "id", "") in ("json", "yaml")):
                continue
            if not to_buffer:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{name}(...)")
    return out


def test_every_writer_uses_the_atomic_helpers() -> None:
    found = []
    for pkg in ("planner", "profiler", "runtime"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(p.relative_to(ROOT))
            if rel not in ALLOWED:
                found += _direct_writes(p)
    assert not found, ("direct file writes (a kill mid-write leaves a partial file); use planner.io."
                       "atomic_write_* / staged_directory:\n" + "\n".join(found))
