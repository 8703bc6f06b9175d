"""hybridplan profiler: measures this environment and writes a planner.profile.Profile.

``python -m profiler layers``: per-block forward / backward / recompute times of a model, per TP degree
and micro-batch shape. ``python -m profiler links``: collective time curves (alpha-beta fits) over message
sizes, with every rank running at once. It imports torch; it never decides anything (ARCHITECTURE.md).
"""
