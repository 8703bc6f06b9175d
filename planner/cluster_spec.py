"""ClusterSpec: devices and the hierarchy of links between them, with presets and a file format.

File format (JSON or YAML), all quantities in SI units named in the key::

    name: my-cluster
    devices_per_node: 8
    num_nodes: 4
    device:
      name: A100-SXM4-80GB
      peak_flops: {bf16: 312e12, fp16: 312e12, fp32: 19.5e12}
      memory_bytes: 85899345920          # 80 GiB
      hbm_bandwidth_bytes_per_s: 2.039e12
    links:                               # innermost level first
      - {name: intra_node, bandwidth_bytes_per_s: 300e9, latency_s: 5e-6}
      - {name: inter_node, bandwidth_bytes_per_s: 25e9,  latency_s: 1e-5}

``bandwidth_bytes_per_s`` is the unidirectional bandwidth one device can drive at that level
while every device of its node communicates at the same time (so a NIC shared by 8 GPUs
gives each 1/8 of it). ``latency_s`` is the per-message start-up cost (alpha in alpha-beta).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import SpecError

GiB = 1024**3


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or one CPU process for the `cpu` preset)."""

    name: str
    peak_flops: dict[str, float]
    """Dense peak FLOP/s by dtype ('bf16', 'fp16', 'fp32', 'fp8')."""
    memory_bytes: int
    """Usable device memory."""
    hbm_bandwidth_bytes_per_s: float
    """Memory bandwidth, for memory-bound terms (optimizer step, norms)."""
    source: str = ""

    def flops(self, dtype: str) -> float:
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        if dtype == "fp16" and "bf16" in self.peak_flops:
            return self.peak_flops["bf16"]
        raise SpecError(f"device {self.name}: no peak FLOP/s for dtype {dtype!r}")


@dataclass(frozen=True)
class LinkLevel:
    """One level of the communication hierarchy (inside a node, between nodes)."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    source: str = ""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    device: DeviceSpec
    devices_per_node: int
    num_nodes: int
    links: tuple[LinkLevel, ...]
    """Innermost first: links[0] joins devices of one node, links[1] joins nodes."""
    backend: str = "nccl"
    """torch.distributed backend the runtime uses on this cluster ('nccl' or 'gloo')."""

    def __post_init__(self) -> None:
        for n in ("devices_per_node", "num_nodes"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SpecError(f"cluster {self.name!r}: {n} must be a positive integer, got {v!r}")
        if self.world_size > 10_000_000:
            raise SpecError(f"cluster {self.name!r}: {self.world_size} devices is implausibly large")
        if not self.links:
            raise SpecError(f"cluster {self.name!r}: needs at least one link level")
        if self.num_nodes > 1 and len(self.links) < 2:
            raise SpecError(f"cluster {self.name!r}: {self.num_nodes} nodes need an inter-node link level")
        for link in self.links:
            for n in ("bandwidth_bytes_per_s", "latency_s"):
                v = getattr(link, n)
                if not _finite(v) or v < 0:
                    raise SpecError(f"cluster {self.name!r}: link {link.name!r} {n} must be a finite number >= 0")
            if link.bandwidth_bytes_per_s <= 0:
                raise SpecError(f"cluster {self.name!r}: link {link.name!r} bandwidth must be positive")
        d = self.device
        if not _finite(d.memory_bytes) or d.memory_bytes <= 0:
            raise SpecError(f"cluster {self.name!r}: device memory_bytes must be positive")
        if not isinstance(d.peak_flops, dict) or not d.peak_flops:
            raise SpecError(f"cluster {self.name!r}: device peak_flops must map dtype to FLOP/s")
        for k, v in d.peak_flops.items():
            if not _finite(v) or v <= 0:
                raise SpecError(f"cluster {self.name!r}: device peak_flops[{k!r}] must be a positive number")
        if not _finite(d.hbm_bandwidth_bytes_per_s) or d.hbm_bandwidth_bytes_per_s <= 0:
            raise SpecError(f"cluster {self.name!r}: device hbm_bandwidth_bytes_per_s must be positive")
        if self.backend not in ("nccl", "gloo"):
            raise SpecError(f"cluster {self.name!r}: backend must be 'nccl' or 'gloo', got {self.backend!r}")

    @property
    def world_size(self) -> int:
        return self.devices_per_node * self.num_nodes

    @property
    def intra_node(self) -> LinkLevel:
        return self.links[0]

    @property
    def inter_node(self) -> LinkLevel:
        return self.links[-1]

    def link_for_group(self, group_span_devices: int) -> LinkLevel:
        """The slowest link a group crosses when its members span ``group_span_devices`` consecutive ranks."""
        return self.intra_node if group_span_devices <= self.devices_per_node else self.inter_node

    def with_world(self, gpus: int | None = None, nodes: int | None = None) -> "ClusterSpec":
        """Resize: ``--gpus N`` fills whole nodes (or one partial node when N < devices_per_node)."""
        if gpus is not None and nodes is not None:
            raise SpecError("give --gpus or --nodes, not both")
        if nodes is not None:
            if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes <= 0:
                raise SpecError(f"--nodes must be a positive integer, got {nodes!r}")
            return dataclasses.replace(self, num_nodes=nodes)
        if gpus is None:
            return self
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
            raise SpecError(f"--gpus must be a positive integer, got {gpus!r}")
        if gpus <= self.devices_per_node:
            return dataclasses.replace(self, devices_per_node=gpus, num_nodes=1)
        if gpus % self.devices_per_node:
            raise SpecError(
                f"cluster {self.name}: {gpus} GPUs is not a whole number of {self.devices_per_node}-GPU nodes")
        return dataclasses.replace(self, num_nodes=gpus // self.devices_per_node)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["links"] = [dataclasses.asdict(l) for l in self.links]
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "cluster file") -> "ClusterSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a mapping, got {type(data).__name__}")
        try:
            dev = data["device"]
            links = data["links"]
            if not isinstance(dev, dict):
                raise SpecError(f"{source}: 'device' must be a mapping")
            if not isinstance(links, list):
                raise SpecError(f"{source}: 'links' must be a list, innermost level first")
            device = DeviceSpec(
                name=str(dev.get("name", "device")),
                peak_flops={str(k): _num(v, f"{source}: device.peak_flops.{k}") for k, v in
                            _mapping(dev["peak_flops"], f"{source}: device.peak_flops").items()},
                memory_bytes=int(_num(dev["memory_bytes"], f"{source}: device.memory_bytes")),
                hbm_bandwidth_bytes_per_s=_num(dev.get("hbm_bandwidth_bytes_per_s", 1e12),
                                               f"{source}: device.hbm_bandwidth_bytes_per_s"),
                source=str(dev.get("source", "")),
            )
            levels = []
            for i, l in enumerate(links):
                l = _mapping(l, f"{source}: links[{i}]")
                levels.append(LinkLevel(name=str(l.get("name", f"level{i}")),
                                        bandwidth_bytes_per_s=_num(l["bandwidth_bytes_per_s"],
                                                                   f"{source}: links[{i}].bandwidth_bytes_per_s"),
                                        latency_s=_num(l.get("latency_s", 0.0), f"{source}: links[{i}].latency_s"),
                                        source=str(l.get("source", ""))))
            return cls(name=str(data.get("name", Path(source).stem)), device=device,
                       devices_per_node=_int(data["devices_per_node"], f"{source}: devices_per_node"),
                       num_nodes=_int(data.get("num_nodes", 1), f"{source}: num_nodes"),
                       links=tuple(levels), backend=str(data.get("backend", "nccl")))
        except KeyError as exc:
            raise SpecError(f"{source}: missing required field {exc.args[0]!r}") from None


def _finite(v: Any) -> bool:
    """A real, finite number within float range (an integer like 10**400 is not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _mapping(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise SpecError(f"{what} must be a mapping")
    return v


def _num(v: Any, what: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise SpecError(f"{what} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"{what} must be a finite number, got {v!r}")
    try:
        v = float(v)
    except OverflowError:  # an integer beyond float range
        raise SpecError(f"{what} must be a finite number, got an integer of {len(str(abs(v)))} digits") from None
    if not math.isfinite(v):
        raise SpecError(f"{what} must be a finite number, got {v!r}")
    return v


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{what} must be an integer, got {v!r}")
    return v


# --------------------------------------------------------------------------------------------
# Presets. Spec-sheet numbers and where they were read: ../shared/data/published_runs_calibration.md
# "Hardware reference". NVLink numbers are bidirectional on the sheets; we store per direction.
# --------------------------------------------------------------------------------------------
_A100_SRC = ("A100 SXM4: 312 TFLOP/s bf16 (Narayanan et al. SC'21 Sec 5), 2,039 GB/s HBM2e, "
             "NVLink3 600 GB/s bidirectional (NVIDIA A100 datasheet)")
_H100_SRC = ("H100 SXM5: 989 TFLOP/s bf16 dense, 1,979 fp8 (NVIDIA DGX Cloud benchmarking README), "
             "3.35 TB/s HBM3, NVLink4 900 GB/s bidirectional")


def _a100(mem_gib: int, hbm: float) -> DeviceSpec:
    return DeviceSpec(name=f"A100-SXM4-{mem_gib}GB", peak_flops={"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
                      memory_bytes=mem_gib * GiB, hbm_bandwidth_bytes_per_s=hbm, source=_A100_SRC)


_H100 = DeviceSpec(name="H100-SXM5-80GB", peak_flops={"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "fp32": 67e12},
                   memory_bytes=80 * GiB, hbm_bandwidth_bytes_per_s=3.35e12, source=_H100_SRC)
_H200 = DeviceSpec(name="H200-SXM-141GB", peak_flops={"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "fp32": 67e12},
                   memory_bytes=141 * 10**9, hbm_bandwidth_bytes_per_s=4.8e12,
                   source="H200 SXM: 141 GB HBM3e, 4.8 TB/s, same Hopper compute as H100 (MLPerf v4.1 system JSON)")
_H800 = dataclasses.replace(_H100, name="H800-SXM-80GB",
                            source="H800: H100 compute assumed; NVLink 160 GB/s usable (DeepSeek-V3 report)")

_NVLINK3 = LinkLevel("intra_node", 300e9, 3e-6, "NVLink3 + NVSwitch: 600 GB/s bidirectional per GPU")
_NVLINK4 = LinkLevel("intra_node", 450e9, 3e-6, "NVLink4 + NVSwitch: 900 GB/s bidirectional per GPU")
_HDR_IB = LinkLevel("inter_node", 25e9, 8e-6, "8x 200 Gb/s HDR InfiniBand per DGX A100 node (1 per GPU)")
_NDR_IB = LinkLevel("inter_node", 50e9, 8e-6, "8x 400 Gb/s NDR InfiniBand per DGX H100 node (1 per GPU)")


def _cluster(name: str, device: DeviceSpec, intra: LinkLevel, inter: LinkLevel, nodes: int = 1) -> ClusterSpec:
    return ClusterSpec(name=name, device=device, devices_per_node=8, num_nodes=nodes, links=(intra, inter))


CLUSTER_PRESETS: dict[str, ClusterSpec] = {
    "dgx-a100-80gb": _cluster("dgx-a100-80gb", _a100(80, 2.039e12), _NVLINK3, _HDR_IB),
    "dgx-a100-40gb": _cluster("dgx-a100-40gb", _a100(40, 1.555e12), _NVLINK3, _HDR_IB),
    "dgx-h100": _cluster("dgx-h100", _H100, _NVLINK4, _NDR_IB),
    "dgx-h200": _cluster("dgx-h200", _H200, _NVLINK4, _NDR_IB),
    "hgx-h800": _cluster("hgx-h800", _H800, LinkLevel("intra_node", 160e9, 3e-6, "DeepSeek-V3 report: 160 GB/s"),
                         LinkLevel("inter_node", 50e9, 8e-6, "DeepSeek-V3 report: IB 50 GB/s per GPU")),
    "a100-25gbe": _cluster("a100-25gbe", _a100(80, 2.039e12), _NVLINK3,
                           # one 25 Gb/s Ethernet port per node, shared by its 8 GPUs: 3.125 GB/s / 8 each
                           LinkLevel("inter_node", 25e9 / 8 / 8, 30e-6,
                                     "one 25 Gb/s Ethernet link per 8-GPU node, shared by all 8 GPUs")),
    # N local CPU processes joined by gloo over loopback / shared memory. Numbers are modest defaults for a
    # laptop-class core; a profile of the machine (`python -m profiler`) replaces them.
    "cpu": ClusterSpec(name="cpu", device=DeviceSpec(
        name="cpu-process", peak_flops={"fp32": 50e9, "bf16": 50e9, "fp16": 50e9}, memory_bytes=2 * GiB,
        hbm_bandwidth_bytes_per_s=10e9, source="default for one CPU process; profile to measure"),
        devices_per_node=2, num_nodes=1, links=(LinkLevel("intra_node", 2e9, 50e-6, "gloo over loopback (default)"),),
        backend="gloo"),
}


def cluster_names() -> list[str]:
    return sorted(CLUSTER_PRESETS)


def resolve_cluster(arg: str, gpus: int | None = None, nodes: int | None = None) -> ClusterSpec:
    """`--cluster` accepts a preset name or a JSON/YAML file; `--gpus` / `--nodes` size it."""
    if arg in CLUSTER_PRESETS:
        base = CLUSTER_PRESETS[arg]
    else:
        path = Path(arg)
        try:
            exists = path.exists()
        except OSError:  # e.g. a name longer than the file system allows: not a file either
            exists = False
        if not exists:
            raise SpecError(f"unknown cluster {arg[:200]!r}: not a preset ({', '.join(cluster_names())}) and no such file")
        from planner.io import read_json_or_yaml

        base = ClusterSpec.from_dict(read_json_or_yaml(path, "cluster file"), str(path))
    if base.name == "cpu" and gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
            raise SpecError(f"--gpus must be a positive integer, got {gpus!r}")
        return dataclasses.replace(base, devices_per_node=gpus, num_nodes=1)
    return base.with_world(gpus=gpus, nodes=nodes)
