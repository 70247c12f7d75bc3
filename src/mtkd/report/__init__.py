"""The Table 3 report: what recipes/experiment.py and `mtkd combine` write (a building block, not a recipe).

scores     each system's mean ± std over seeds (aggregate), the paper's questions as numbers (compare),
           the decisive experiment's targets (targets)
intervals  paired bootstrap intervals of the students and the ensemble minus MT-DNN (paired_intervals)
markdown   results.md (results_markdown)
charts     charts/<task>.png and charts/paired_differences.png (plot_charts, plot_paired_differences)
results    results.json + results.md + charts/ (write_results), and several seed runs merged (combine)
"""

from mtkd.report.charts import plot_charts, plot_paired_differences
from mtkd.report.intervals import paired_intervals
from mtkd.report.markdown import results_markdown
from mtkd.report.results import combine, write_results
from mtkd.report.scores import SYSTEM_NAMES, SYSTEMS, aggregate, compare, targets

__all__ = [
    "SYSTEMS",
    "SYSTEM_NAMES",
    "aggregate",
    "combine",
    "compare",
    "paired_intervals",
    "plot_charts",
    "plot_paired_differences",
    "results_markdown",
    "targets",
    "write_results",
]
