"""Reports: one self-contained report.html (sections, inline figures), predicted_trace.json, runtime exports.

Entry points: ``write_search_report`` (the search's output writer calls it once with its result) and
``write_report`` (any command holding a plan and its estimates). Files: html.py (escaping, page),
sections.py (section contents), plots.py (figures), timeline.py (the cost model's schedule simulation),
trace.py (predicted trace), sensitivity.py (re-estimates), exports.py (torchtitan / Megatron-LM),
compare.py (measured beside predicted), context.py (what a report shows).
"""

from planner.report.context import Rejected, ReportContext
from planner.report.write import REPORT_FILE, TRACE_FILE, write_report, write_search_report

__all__ = ["REPORT_FILE", "TRACE_FILE", "Rejected", "ReportContext", "write_report", "write_search_report"]
