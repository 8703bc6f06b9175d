"""hybridplan runtime: executes a Plan with torch.distributed (gloo on CPU, NCCL on GPUs).

One concept per module:

* ``local_launch``: THE multi-process launcher for tests and ``verify`` (forked ranks, free port,
  timeout, kill-all on first failure, every rank's log);
* ``model``: reference GPT / Llama built from ModelSpec with keyed initialisation (MoE FFN seam);
* ``mesh``: DeviceMesh and process groups from planner.rank_order;
* ``tensor_parallel``: torch TP styles, sequence parallelism, vocab-parallel loss, DDP localisation;
* ``pipeline``: torch.distributed.pipelining stages and schedules, precondition checks, stage timer;
* ``data_parallel``: DDP / ZeRO-1 / FSDP2 per the plan (compression-hook seam); ``optim``: optimizers;
* ``grads``: gradient finalisation (TP partial sums, experts over edp, tied embeddings, global clip);
* ``engine``: the parallel training step assembled from a plan; ``train``: the loop;
* ``data``: deterministic samples by global index; ``state`` / ``checkpoint``: DCP, resharding;
* ``trace``: measured timeline (planner.trace_schema); ``reference`` / ``verify``: single-process twin;
* ``cli``: ``python -m runtime train|verify``.
"""
