"""The cost model: step time and memory of a ParallelConfig (see planner/cost/step.py).

Interface (stable; the search and the reports code against it)::

    from planner.cost import CostModel, Estimate
    cm = CostModel(model, cluster, profile=None)   # profile: optional planner.profile.Profile
    cm.capacity_bytes                              # device memory minus the safety margin
    est = cm.estimate(config)                      # Estimate; ConfigError if invalid, never for does-not-fit
    mem = cm.memory(config)                        # MemoryEstimate: the memory half alone, cheap
    est = cm.estimate(config, expert_placement=plan.expert_placement)  # MoE: price replicated experts
    pin = cm.partition_inputs(config)              # PartitionInputs: per-layer vectors for the partitioner
    dur = cm.pipeline_durations(config)            # PipelineDurations: per-chunk F / B / W s of one micro-batch
                                                   # and the p2p time, what the schedule simulation runs on

Files: efficiency.py (the calibrated constants), compute.py (block times), memory.py (bytes per rank),
sync.py (DP sync, optimizer), durations.py (per-chunk action times), pipeline.py and schedule_dag.py (schedule
simulation), rank_memory.py (bytes per pipeline rank), replicas.py (replicated experts), assemble.py (step time
and breakdown), types.py (the result types).
"""

from planner.cost.durations import ChunkDurations, PipelineDurations
from planner.cost.step import CostModel, CostOptions
from planner.cost.types import BREAKDOWN_TERMS, Estimate, MemoryEstimate, PartitionInputs, StageMemory

__all__ = ["CostModel", "CostOptions", "Estimate", "MemoryEstimate", "PartitionInputs", "StageMemory",
           "BREAKDOWN_TERMS", "ChunkDurations", "PipelineDurations"]
