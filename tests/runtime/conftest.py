"""Runtime tests: one intra-op thread in the test process.

Why: the tiny models of these tests gain nothing from intra-op parallelism, and on a loaded 2-core
machine OpenMP threads spin against the forked ranks (the single-process reference ran 30x slower
with 2 threads than with 1 under load). Ranks forked by runtime.local_launch set 1 thread themselves.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
