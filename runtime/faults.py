"""Faults: name a hung collective instead of waiting on it forever, and inject faults for tests.

Why: on gloo a rank that stops responding makes every other rank wait in its next collective; on NCCL
the wait may never return. A run must instead fail fast with one line saying *which* rank and *which*
operation, so the launcher (torchrun ``--max-restarts``) can restart it from the last checkpoint.

Three layers, cheapest first:

1. ``process_group_timeout(s)``: pass it to ``init_process_group(timeout=...)``. gloo then fails a
   blocked collective after ``s`` seconds (torch's default is 30 minutes).
2. ``CollectiveWatchdog``: wrap each collective (or each phase of a step) in ``watchdog.op(name)``. The
   watchdog records, in the c10d store every rank already shares, the sequence number and name of the
   operation each rank is in. When an operation fails with a timeout or a lost peer, it raises
   ``CollectiveTimeoutError`` whose one-line message names the ranks that never entered the operation
   (or are still in an earlier one) and what they were last doing. A monitor thread covers the case
   where no exception ever comes (NCCL, or a timeout left at its default): after ``timeout_s`` plus a
   grace period it prints the same line to stderr and ends the process with ``EXIT_COLLECTIVE_TIMEOUT``.
3. ``find_unresponsive_ranks``: a gloo ``monitored_barrier`` that lists every rank that did not answer
   (a health check at start-up or after a resume).

Fault injection for tests: ``FaultInjector.from_env(rank)`` reads ``HYBRIDPLAN_FAULT`` (e.g.
``kill:rank=1:step=3``) and the training loop calls ``injector.at("step", step)`` at each step (and
``injector.at("checkpoint", step)`` between writing a checkpoint's data and committing it). By default
a fault fires only in the first attempt (``TORCHELASTIC_RESTART_COUNT`` 0), so the restarted job
runs through.

Usage in the runtime (rank 0 logs the line; every rank raises)::

    dist.init_process_group(backend, timeout=faults.process_group_timeout(timeout_s))
    watchdog = faults.CollectiveWatchdog.for_default_group(timeout_s)
    injector = faults.FaultInjector.from_env(dist.get_rank())
    for step in range(start, steps):
        injector.at("step", step)
        with watchdog.op(f"step {step} forward/backward"):
            ...
        with watchdog.op(f"step {step} grad all_reduce"):
            dist.all_reduce(grad)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

from planner.errors import PlannerError, SpecError

EXIT_COLLECTIVE_TIMEOUT = 5
"""Exit code of a process that the watchdog ended because a collective hung (distinct from planner's 2/3/4,
so a launcher or a script can tell a hang from bad input)."""
FAULT_ENV = "HYBRIDPLAN_FAULT"
TIMEOUT_ENV = "HYBRIDPLAN_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0
"""Default collective timeout: far above any healthy step of the CPU tests, far below torch's 30 minutes."""
_FAILURE_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe",
                  "connection refused", "peer", "unreachable")


class CollectiveTimeoutError(PlannerError):
    """A collective did not complete: the message names the rank(s) that stopped and the operation."""

    exit_code = EXIT_COLLECTIVE_TIMEOUT


def timeout_s_from_env(default_s: float = DEFAULT_TIMEOUT_S) -> float:
    """``HYBRIDPLAN_COLLECTIVE_TIMEOUT_S`` if set (a positive number of seconds), else ``default_s``."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return default_s
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise SpecError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def process_group_timeout(timeout_s: float) -> timedelta:
    """The ``timeout=`` argument of ``init_process_group``: gloo fails a blocked collective after it."""
    if not timeout_s > 0:
        raise SpecError(f"collective timeout must be positive, got {timeout_s!r}")
    return timedelta(seconds=timeout_s)


def is_comm_failure(exc: BaseException) -> bool:
    """Does this exception mean a peer did not answer (timeout, lost connection) rather than a bug?"""
    try:
        import torch.distributed as dist

        if isinstance(exc, getattr(dist, "DistError", ())) and not isinstance(exc, getattr(dist, "DistStoreError", ())):
            return True
    except ImportError:  # pragma: no cover - runtime always has torch
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in _FAILURE_WORDS)


@dataclass(frozen=True)
class _Record:
    """What one rank is doing, as stored under ``<prefix>/<group>/<rank>``."""

    seq: int
    op: str
    state: str
    """'in' while the operation runs, 'done' after it returned."""
    since_s: float

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "op": self.op, "state": self.state, "since_s": self.since_s})

    @staticmethod
    def decode(raw: bytes) -> "_Record":
        d = json.loads(raw.decode())
        return _Record(int(d["seq"]), str(d["op"]), str(d["state"]), float(d["since_s"]))


class CollectiveWatchdog:
    """Tracks which collective each rank is in (through the c10d store) and names the ranks that hang.

    ``op(name, group=..., ranks=...)`` is a context manager. Ranks of a group must enter their
    operations on that group in the same order (as collectives require), so the n-th operation of a
    group is the same operation on every member. Cost: two small store writes per operation, so wrap
    phases or bucketed collectives, not every kernel.
    """

    def __init__(self, store: Any, rank: int, world_size: int, timeout_s: float, *,
                 prefix: str = "hybridplan/watchdog", grace_s: float | None = None, abort: bool = True):
        if not timeout_s > 0:
            raise SpecError(f"collective timeout must be positive, got {timeout_s!r}")
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s, self.prefix, self.abort = float(timeout_s), prefix, abort
        self.grace_s = float(grace_s) if grace_s is not None else max(2.0, 0.5 * self.timeout_s)
        self._seq: dict[str, int] = {}
        self._current: tuple[str, int, str, tuple[int, ...], float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._write("world", _Record(0, "start", "done", time.time()))

    @classmethod
    def for_default_group(cls, timeout_s: float | None = None, **kwargs: Any) -> "CollectiveWatchdog":
        """A watchdog on the default process group's store (call after init_process_group)."""
        import torch.distributed as dist
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()  # the store every rank already rendezvoused on
        return cls(store, dist.get_rank(), dist.get_world_size(),
                   timeout_s if timeout_s is not None else timeout_s_from_env(), **kwargs)

    # --- recording ---------------------------------------------------------------------------
    def _key(self, group: str, rank: int) -> str:
        return f"{self.prefix}/{group}/{rank}"

    def _write(self, group: str, rec: _Record) -> None:
        self.store.set(self._key(group, self.rank), rec.encode())

    def _read(self, group: str, rank: int) -> _Record | None:
        key = self._key(group, rank)
        try:
            if not self.store.check([key]):
                return None
            return _Record.decode(self.store.get(key))
        except Exception:  # noqa: BLE001 - the store may be gone with the rank that hosted it
            return None

    @contextlib.contextmanager
    def op(self, name: str, *, group: str = "world", ranks: list[int] | tuple[int, ...] | None = None) -> Iterator[int]:
        """Run one collective (or phase) under watch; yields its sequence number in ``group``.

        ``group``/``ranks``: a name for a subgroup and its global ranks (default: the whole world).
        """
        members = tuple(ranks) if ranks is not None else tuple(range(self.world_size))
        seq = self._seq.get(group, 0) + 1
        self._seq[group] = seq
        start = time.time()
        self._write(group, _Record(seq, name, "in", start))
        with self._lock:
            self._current = (group, seq, name, members, time.monotonic())
        self._ensure_monitor()
        try:
            yield seq
        except Exception as exc:
            if isinstance(exc, CollectiveTimeoutError) or not is_comm_failure(exc):
                raise
            raise CollectiveTimeoutError(self.describe(group, seq, name, members, time.time() - start)) from None
        finally:
            with self._lock:
                self._current = None
        self._write(group, _Record(seq, name, "done", time.time()))

    # --- diagnosis -----------------------------------------------------------------------------
    def describe(self, group: str, seq: int, name: str, members: tuple[int, ...], waited_s: float) -> str:
        """One line: this rank, the operation, how long it waited, and who never joined it."""
        behind, unknown = [], []
        for r in members:
            if r == self.rank:
                continue
            rec = self._read(group, r)
            if rec is None:
                unknown.append(r)
            elif rec.seq < seq:
                last = f"#{rec.seq} {rec.op!r} ({'still running' if rec.state == 'in' else 'completed'})"
                behind.append(f"rank {r} (last: {last})")
        head = (f"collective timeout: rank {self.rank} waited {waited_s:.1f} s in {name!r} "
                f"(#{seq} on group {group})")
        if behind:
            return f"{head}; never entered by {', '.join(behind)}"
        if unknown:
            return f"{head}; no record from rank(s) {', '.join(map(str, unknown))} (dead, or its store is gone)"
        return f"{head}; every rank entered it, so a peer failed inside it (lost process or connection)"

    # --- monitor thread (no exception ever comes: NCCL, or an unbounded backend timeout) ----------
    def _ensure_monitor(self) -> None:
        if self._monitor is None and self.abort:
            self._monitor = threading.Thread(target=self._watch, name="hybridplan-watchdog", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                cur = self._current
            if cur is None:
                continue
            group, seq, name, members, t0 = cur
            waited = time.monotonic() - t0
            if waited < self.timeout_s + self.grace_s:
                continue
            line = self.describe(group, seq, name, members, waited)
            with self._lock:
                if self._current is None or self._current[1] != seq or self._current[0] != group:
                    continue  # it finished (or failed on its own) while we looked
            try:
                sys.stderr.write(f"error: {line}\n")
                sys.stderr.flush()
            finally:
                os._exit(EXIT_COLLECTIVE_TIMEOUT)

    def close(self) -> None:
        self._stop.set()


def find_unresponsive_ranks(timeout_s: float, group: Any = None) -> list[int]:
    """Ranks that do not reach a gloo ``monitored_barrier`` within ``timeout_s`` (empty: all healthy).

    Every rank must call it; rank 0 learns who is missing, and the other ranks get rank 0's answer only
    when it succeeds (if rank 0 itself is missing, they report rank 0).
    """
    import re

    import torch.distributed as dist

    try:
        dist.monitored_barrier(group=group, timeout=process_group_timeout(timeout_s), wait_all_ranks=True)
        return []
    except RuntimeError as exc:
        text = str(exc)
        m = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", text)
        if m:
            return sorted(int(x) for x in m.group(1).replace(" ", "").split(",") if x)
        if dist.get_rank(group) != 0:
            return [0]
        raise


# --------------------------------------------------------------------------------------------
# Fault injection (tests)
# --------------------------------------------------------------------------------------------
FAULT_KINDS = ("kill", "hang", "raise")
FAULT_POINTS = ("step", "checkpoint")


@dataclass(frozen=True)
class FaultInjector:
    """One planned fault: ``kind`` at ``point`` of ``step`` on ``rank`` in restart ``attempt``.

    ``HYBRIDPLAN_FAULT`` syntax: ``KIND:key=value:...`` with keys ``rank`` (default 0), ``step``
    (required), ``point`` (``step`` or ``checkpoint``, default ``step``), ``attempt`` (default 0: only
    the first run; torchrun's ``TORCHELASTIC_RESTART_COUNT`` counts restarts). Kinds: ``kill`` (SIGKILL
    itself: no cleanup, no atexit, as a machine failure), ``hang`` (stop responding: sleep for ever),
    ``raise`` (an ordinary crash).
    """

    kind: str | None = None
    rank: int = 0
    step: int = -1
    point: str = "step"
    attempt: int = 0
    my_rank: int = 0

    @classmethod
    def from_env(cls, my_rank: int, env: dict[str, str] | None = None) -> "FaultInjector":
        env = os.environ if env is None else env
        text = env.get(FAULT_ENV, "").strip()
        if not text:
            return cls(my_rank=my_rank)
        kind, *fields = text.split(":")
        if kind not in FAULT_KINDS:
            raise SpecError(f"{FAULT_ENV}={text!r}: fault kind must be one of {', '.join(FAULT_KINDS)}")
        values: dict[str, str] = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep or key not in ("rank", "step", "point", "attempt"):
                raise SpecError(f"{FAULT_ENV}={text!r}: expected rank=, step=, point= or attempt=, got {f!r}")
            values[key] = value
        if "step" not in values:
            raise SpecError(f"{FAULT_ENV}={text!r}: step= is required")
        point = values.get("point", "step")
        if point not in FAULT_POINTS:
            raise SpecError(f"{FAULT_ENV}={text!r}: point must be one of {', '.join(FAULT_POINTS)}")
        try:
            rank, step, attempt = (int(values.get("rank", "0")), int(values["step"]), int(values.get("attempt", "0")))
        except ValueError:
            raise SpecError(f"{FAULT_ENV}={text!r}: rank, step and attempt must be integers") from None
        return cls(kind=kind, rank=rank, step=step, point=point, attempt=attempt, my_rank=my_rank)

    def armed(self, point: str, step: int, env: dict[str, str] | None = None) -> bool:
        env = os.environ if env is None else env
        current_attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        return (self.kind is not None and self.my_rank == self.rank and self.step == step and self.point == point
                and self.attempt == current_attempt)

    def at(self, point: str, step: int) -> None:
        """Call at each injection point; fires the planned fault when point, step, rank and attempt match."""
        if not self.armed(point, step):
            return
        sys.stderr.write(f"fault injection: {self.kind} on rank {self.rank} at {point} {step}\n")
        sys.stderr.flush()
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "hang":
            while True:  # stop responding, as a wedged process would; only a signal ends it
                time.sleep(3600)
        else:
            raise RuntimeError(f"injected fault at {point} {step} on rank {self.rank}")
