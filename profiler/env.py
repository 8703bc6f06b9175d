"""The environment header of a profile: device, backend, versions, world, topology, date, host."""

from __future__ import annotations

import datetime
import os
import platform
import socket

import torch

from planner.profile import ProfileHeader


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # the CPU model string, so profiles of different machines do not merge by accident
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} cores)"


def nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version() if torch.cuda.is_available() else None
    except Exception:  # no NCCL in a CPU build
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else (str(v) if v else None)


def make_header(device: torch.device, backend: str, world_size: int, devices_per_node: int, notes: str = "") -> ProfileHeader:
    nodes = max(1, world_size // max(1, devices_per_node))
    return ProfileHeader(
        device=device_name(device), backend=backend, torch_version=torch.__version__, nccl_version=nccl_version(),
        world_size=world_size, nodes=nodes, devices_per_node=min(devices_per_node, world_size),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=socket.gethostname(), notes=notes)


def local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
