"""The search: which configuration trains a model fastest on a cluster, and how to split its layers.

* ``space`` / ``constraints``: generators that yield only valid configurations (``--fix`` pins dimensions).
* ``bounds``: lower bounds that prune before estimating (relaxed memory-aware bottleneck, fill/drain,
  sync variants), each argued valid for every layer split.
* ``partition_problem`` / ``partition`` / ``partition_greedy`` / ``partition_brute``: the inner problem
  (uneven layer split + full-recompute layers per chunk) with CP-SAT, its warm start and its reference.
* ``solver``: branch and bound over the space with the cost model; ``records``: what it returns.
* ``outputs``: plan.json, candidates.csv and launch files, written atomically.

Entry point: ``solver.search(SearchSpace(...), CostModel(...), SearchOptions(...))``; the CLI is
``planner/commands/search.py``.
"""
