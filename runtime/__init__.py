"""hybridplan runtime: executes a Plan with torch.distributed (gloo on CPU, NCCL on GPUs).

One concept per module: ``local_launch`` (multi-process launcher for tests and ``verify``),
``model`` (reference GPT / Llama built from ModelSpec), ``mesh`` (process groups from the
planner's rank order), ``tensor_parallel``, ``pipeline``, ``data_parallel``, ``data``, ``train``,
``checkpoint``, ``trace``, ``verify``, ``cli``. The MoE FFN (``moe``) and DDP communication hooks
(``compression``) plug in through seams documented in ``model`` and ``data_parallel``.
"""
