"""Run a function on N local processes with torch.distributed initialised: THE test launcher.

Why this instead of torchrun or ``torch.multiprocessing.spawn``: workers are forked from a parent
that has already imported torch, so a rank starts in ~0.1 s instead of ~5 s, and the function
(a closure is fine: nothing is pickled) runs as is. The launcher is robust in the ways a
distributed test suite needs (Galvatron ``tests/conftest.py::run_distributed``):

* a rendezvous store per run hosted by the parent on a port the OS assigns (no "free port" race
  with concurrent test runs); ranks join it as clients, as under torchrun's agent store
  (``TORCHELASTIC_USE_AGENT_STORE=True``, so ``init_process_group('env://')`` also works in a rank);
* a wall-clock timeout per run; on gloo a mismatched collective hangs rather than fails;
* the first rank that fails (exception, non-zero exit, signal) kills every other rank at once;
* every rank's stdout + stderr goes to its own log, and a failure shows all of them.

Results travel back as JSON (one file per rank), never as pickles: a worker's return value must be
JSON-serialisable (numbers, strings, lists, dicts).

Usage::

    from runtime.local_launch import launch

    def worker(scale):
        import torch.distributed as dist
        t = torch.ones(1) * dist.get_rank() * scale
        dist.all_reduce(t)
        return t.item()

    assert launch(worker, 4, 2.0) == [12.0] * 4
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

LOG_TAIL_CHARS = 6000
"""How much of each rank's log a failure message shows (the end of it, where the error is)."""


class LaunchError(RuntimeError):
    """A rank failed, or the run timed out; the message holds every rank's log."""

    def __init__(self, message: str, logs: list[str]):
        super().__init__(message)
        self.logs = logs


@dataclass(frozen=True)
class LaunchResult:
    values: list[Any]
    """Each rank's return value (JSON round-tripped), rank order."""
    logs: list[str]
    """Each rank's captured stdout + stderr."""
    wall_s: float


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it; another process may take it before it
    is used: for rendezvous the launcher hosts its own store instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable[..., Any], rank: int, world_size: int, port: int, workdir: Path, backend: str | None,
           init_process_group: bool, threads: int, env: dict[str, str], args: tuple, kwargs: dict) -> None:
    """Body of a forked rank; never returns (os._exit keeps the parent's atexit / pytest state out)."""
    code = 1
    try:
        log_fd = os.open(workdir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                           "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                           "LOCAL_WORLD_SIZE": str(world_size), "TORCHELASTIC_USE_AGENT_STORE": "True",
                           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")})
        os.environ.update(env)
        import torch
        import torch.distributed as dist

        # One intra-op thread per rank: N ranks share the machine's cores, and a forked child must not
        # reuse the parent's OpenMP pool.
        torch.set_num_threads(threads)
        if init_process_group:
            be = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if be == "nccl":
                torch.cuda.set_device(rank % torch.cuda.device_count())
            store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False)
            dist.init_process_group(be, store=dist.PrefixStore("default_pg", store), rank=rank,
                                    world_size=world_size)
        value = fn(*args, **kwargs)
        text = json.dumps(value)
        tmp = workdir / f".rank{rank}.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, workdir / f"rank{rank}.json")
        if init_process_group and dist.is_initialized():
            dist.destroy_process_group()
        code = 0
    except BaseException:  # noqa: BLE001 - every failure must reach the log, then the parent
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _read_logs(workdir: Path, world_size: int) -> list[str]:
    logs = []
    for r in range(world_size):
        p = workdir / f"rank{r}.log"
        logs.append(p.read_text(errors="replace") if p.exists() else "")
    return logs


_PEER_FAILURE = ("connection closed by peer", "connection reset by peer", "remote worker", "broken pipe")


def _culprit(first_seen: int, status: list[str | None], logs: list[str]) -> int:
    """The rank to blame: ranks that die because a peer died ("Connection closed by peer") can be
    reaped in the same poll as the one that failed first; prefer a failed rank whose log shows its
    own error over one that only reports a lost peer."""
    failed = [r for r, st in enumerate(status) if st and st != "exit 0" and "launcher" not in st]
    own = [r for r in failed if not any(w in logs[r].lower() for w in _PEER_FAILURE)]
    return own[0] if own and first_seen not in own else first_seen


def _format_failure(headline: str, logs: list[str], statuses: list[str]) -> str:
    parts = [headline]
    for r, (log, status) in enumerate(zip(logs, statuses)):
        tail = log[-LOG_TAIL_CHARS:]
        cut = "...(earlier output cut)\n" if len(log) > LOG_TAIL_CHARS else ""
        parts.append(f"----- rank {r} ({status}) -----\n{cut}{tail.rstrip() or '(no output)'}")
    return "\n".join(parts)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0,
              backend: str | None = "gloo", init_process_group: bool = True, threads_per_rank: int = 1,
              env: dict[str, str] | None = None, **kwargs: Any) -> LaunchResult:
    """Fork ``world_size`` ranks that each run ``fn(*args, **kwargs)``; return values and logs.

    ``backend=None`` picks nccl when CUDA is available, else gloo. Raises LaunchError (with every
    rank's log) when a rank fails or the run exceeds ``timeout_s``; all ranks are dead by then.
    """
    if world_size <= 0:
        raise ValueError(f"world_size must be positive, got {world_size}")
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hp-launch-") as tmp:
        workdir = Path(tmp)
        import torch.distributed as dist

        # Fork every rank BEFORE the parent starts the store: the store's server runs a thread, and a
        # child forked while that thread holds a lock can deadlock creating its client (seen here: ~1 in 3
        # 4-rank launches hung with no output). Each child blocks on a pipe until the parent sends the port
        # the OS assigned; if the parent fails first, the pipe closes and the child exits non-zero.
        pids: list[int] = []
        port_pipes: list[int] = []
        for rank in range(world_size):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(write_fd)
                for fd in port_pipes:
                    os.close(fd)
                with os.fdopen(read_fd, "rb") as pipe:
                    port_text = pipe.readline().decode().strip()
                if not port_text.isdigit():
                    os._exit(3)  # the parent died before it could start the store
                _child(fn, rank, world_size, int(port_text), workdir, backend, init_process_group,
                       threads_per_rank, dict(env or {}), args, kwargs)
            os.close(read_fd)
            port_pipes.append(write_fd)
            pids.append(pid)
        try:
            server = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
            for fd in port_pipes:
                os.write(fd, f"{server.port}\n".encode())
        finally:
            for fd in port_pipes:
                os.close(fd)
        status: list[str | None] = [None] * world_size
        failed: int | None = None
        timed_out = False
        try:
            while any(s is None for s in status):
                progressed = False
                for r, pid in enumerate(pids):
                    if status[r] is not None:
                        continue
                    done, wstatus = os.waitpid(pid, os.WNOHANG)
                    if done == 0:
                        continue
                    progressed = True
                    if os.WIFSIGNALED(wstatus):
                        status[r] = f"killed by signal {os.WTERMSIG(wstatus)}"
                        failed = r if failed is None else failed
                    else:
                        code = os.WEXITSTATUS(wstatus)
                        status[r] = f"exit {code}"
                        if code != 0 and failed is None:
                            failed = r
                if failed is not None or time.monotonic() - start > timeout_s:
                    timed_out = failed is None
                    break
                if not progressed:
                    time.sleep(0.01)
        finally:
            # Kill whatever is still running: on the first failure, on timeout, or on Ctrl-C.
            for r, pid in enumerate(pids):
                if status[r] is None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    os.waitpid(pid, 0)
                    status[r] = "killed by the launcher" if not timed_out else "killed on timeout"
        del server  # stops the rendezvous store
        logs = _read_logs(workdir, world_size)
        wall_s = time.monotonic() - start
        if timed_out:
            raise LaunchError(_format_failure(
                f"distributed run of {getattr(fn, '__name__', fn)} on {world_size} ranks timed out after "
                f"{timeout_s:.0f} s (a hung collective?)", logs, [str(s) for s in status]), logs)
        if failed is not None:
            failed = _culprit(failed, status, logs)
            raise LaunchError(_format_failure(
                f"rank {failed} of {world_size} failed ({status[failed]}) running "
                f"{getattr(fn, '__name__', fn)}; every rank was stopped", logs, [str(s) for s in status]), logs)
        values = [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(world_size)]
        return LaunchResult(values=values, logs=logs, wall_s=wall_s)


def launch(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0,
           backend: str | None = "gloo", **kwargs: Any) -> list[Any]:
    """``run_ranks`` returning only the per-rank values (the common case in tests)."""
    return run_ranks(fn, world_size, *args, timeout_s=timeout_s, backend=backend, **kwargs).values
