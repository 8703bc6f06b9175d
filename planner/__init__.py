"""hybridplan planner: model and cluster specs, layer graph, cost model, search, plans and reports.

Imports no torch: the planner runs on any machine.
"""

__version__ = "0.1.0"
