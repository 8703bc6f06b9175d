"""The launcher itself: values come back in rank order, a failing rank stops all, a hang times out."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from runtime.local_launch import LaunchError, launch, run_ranks


def _all_reduce_rank(scale: float) -> float:
    t = torch.tensor([float(dist.get_rank())]) * scale
    dist.all_reduce(t)
    return t.item()


def test_values_in_rank_order_and_collectives_work() -> None:
    # ranks 0..3 sum to 6; times 2.0
    assert launch(_all_reduce_rank, 4, 2.0) == [12.0] * 4


def test_closure_and_rank_identity() -> None:
    offset = 10

    def worker() -> list[int]:
        return [dist.get_rank() + offset, dist.get_world_size()]

    assert launch(worker, 2) == [[10, 2], [11, 2]]


def _fail_on_rank_one() -> None:
    print(f"hello from rank {dist.get_rank()}")
    if dist.get_rank() == 1:
        raise ValueError("deliberate failure on rank 1")
    dist.barrier()  # rank 0 would wait forever: the launcher must kill it


def test_first_failure_kills_all_ranks_and_shows_every_log() -> None:
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_fail_on_rank_one, 2, timeout_s=60)
    msg = str(info.value)
    assert "rank 1 of 2 failed" in msg
    assert "deliberate failure on rank 1" in msg
    assert "hello from rank 0" in msg and "hello from rank 1" in msg
    assert time.monotonic() - t0 < 50  # did not wait for the timeout


def _hang() -> None:
    if dist.get_rank() == 0:
        dist.barrier()  # rank 1 never joins
    else:
        time.sleep(60)


def test_timeout_kills_a_hung_run() -> None:
    with pytest.raises(LaunchError) as info:
        launch(_hang, 2, timeout_s=2)
    assert "timed out" in str(info.value)


def test_logs_are_returned() -> None:
    def worker() -> int:
        print("step 1 loss 0.5")
        return 0

    res = run_ranks(worker, 2)
    assert all("step 1 loss 0.5" in log for log in res.logs)


def _env_init() -> int:
    dist.init_process_group("gloo", init_method="env://")  # joins the launcher's store as a client
    t = torch.ones(1)
    dist.all_reduce(t)
    return int(t.item())


def test_ranks_may_initialise_themselves_from_the_environment() -> None:
    assert launch(_env_init, 3, init_process_group=False) == [3, 3, 3]
