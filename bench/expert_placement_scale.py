"""Benchmark: the expert placement optimiser at DeepSeek-V3 scale, and what one shared placement costs.

    python bench/expert_placement_scale.py [--experts 256] [--ep 64] [--layers 58] [--seed 0]

Synthetic routing counts: per layer and expert, 1e5 x Pareto(1.5) tokens, independent across layers
(a heavy-tailed, worst-case skew; real routing is more correlated across layers). Printed, per memory
budget (slots per rank: E/ep = no copy, E/ep + 1 = one spare slot): wall time of
``planner.expert_placement.solve_placement``, its solver status, and the step-time proxy (sum over layers
of the busiest rank's tokens) relative to the contiguous default placement; then the same ratio when
every layer may have its own placement (greedy per layer), which ``Plan.expert_placement`` (one placement
for all layers) cannot express today. Not a unit test.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.expert_placement import (greedy_placement, improve_replicas, replica_counts,  # noqa: E402
                                      solve_placement, step_proxy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--ep", type=int, default=64)
    ap.add_argument("--layers", type=int, default=58)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=5.0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    per_layer = [[int(1e5 * rng.paretovariate(1.5)) for _ in range(a.experts)] for _ in range(a.layers)]
    per = a.experts // a.ep
    contiguous = [list(range(i * per, (i + 1) * per)) for i in range(a.ep)]
    base = step_proxy(contiguous, per_layer)
    print(f"{a.layers} layers x {a.experts} experts on ep={a.ep}; proxy relative to the contiguous placement")
    for slots in (per, per + 1):
        t0 = time.perf_counter()
        r = solve_placement(per_layer, a.ep, slots, time_limit_s=a.time_limit, current=contiguous)
        wall = time.perf_counter() - t0
        own = 0.0
        for layer in per_layer:
            reps = improve_replicas([layer], a.ep, slots, replica_counts(layer, a.ep, slots))
            own += step_proxy(greedy_placement(layer, a.ep, slots, reps), [layer])
        print(f"slots {slots}: one placement {r.proxy_after / base:.3f} ({r.status}, {sum(r.replicas)} copies, "
              f"{wall:.1f} s); a placement per layer (greedy) {own / base:.3f}")


if __name__ == "__main__":
    main()
