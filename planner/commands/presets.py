"""`python -m planner presets`: the built-in models and clusters, one line each."""

from __future__ import annotations

import argparse
import json

from planner.cluster_spec import CLUSTER_PRESETS
from planner.model_presets import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full specs as JSON")


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"models": {k: v.to_dict() for k, v in PRESETS.items()},
                          "clusters": {k: v.to_dict() for k, v in CLUSTER_PRESETS.items()}}, indent=2))
        return 0
    print("models:")
    for name, m in sorted(PRESETS.items()):
        kind = f"MoE {m.num_experts}x top-{m.moe_top_k}" if m.is_moe else "dense"
        print(f"  {name:16s} {m.total_params() / 1e9:9.2f}B params  L={m.num_layers:<4d} h={m.hidden_size:<6d} "
              f"{kind:18s} {m.notes}")
    print("clusters:")
    for name, c in sorted(CLUSTER_PRESETS.items()):
        print(f"  {name:16s} {c.device.name:18s} {c.devices_per_node} per node, "
              f"{c.device.memory_bytes / 2**30:.0f} GiB, links: "
              + ", ".join(f"{l.name} {l.bandwidth_bytes_per_s / 1e9:g} GB/s" for l in c.links))
    return 0
