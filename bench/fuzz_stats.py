"""Run the reliability fuzz suite and print how many inputs it generated per category, and their outcomes.

    python bench/fuzz_stats.py            # the fuzz files of tests/reliability
    python bench/fuzz_stats.py --all      # the whole reliability suite (fault tests too)

Outcomes: accepted (the reader returned a value, whose invariants were then checked), rejected (a typed
one-line error), rejected_exit3 (the CLI's does-not-fit), known_bug (a reported bug in another owner's
file), traceback / bad_message / unnamed (failures: the suite fails on the first). Categories named
``x:mode`` re-read inputs of ``x`` in another mode and are not counted in the total of distinct inputs.
Prints the wall time too (a ratio to the 180 s budget, not an assertion).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 180.0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    import pytest

    os.environ["HYBRIDPLAN_FUZZ_RANDOM"] = "1"  # fresh random inputs (the test suite uses fixed seeds)
    from tests.reliability import fuzzlib

    target = ["tests/reliability"] if "--all" in argv else sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "reliability").glob("test_fuzz_*.py"))
    if "--all" not in argv:
        target += ["tests/reliability/test_estimate_memory.py", "tests/reliability/test_plan_invariants.py"]
    with tempfile.TemporaryDirectory() as d:
        stats = Path(d) / "fuzz_stats.json"
        os.environ[fuzzlib.STATS_ENV] = str(stats)
        os.chdir(ROOT)
        start = time.monotonic()
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *target])
        wall_s = time.monotonic() - start
        counts = json.loads(stats.read_text()) if stats.exists() else {}
    print()
    print("\n".join(fuzzlib.format_stats(counts)))
    distinct = sum(sum(c.values()) for k, c in counts.items() if ":" not in k)
    failures = sum(c.get(o, 0) for c in counts.values() for o in ("traceback", "bad_message", "unnamed"))
    print(f"distinct generated inputs: {distinct} (bar 10,000: ratio {distinct / 10_000:.2f}); "
          f"failures: {failures}; wall {wall_s:.1f} s ({wall_s / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget); "
          f"pytest exit {int(code)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
