"""Every rich renderable lives in this package; nothing else in localpeer imports rich.

Computation returns result objects; these functions turn them into terminal output.
"""

from localpeer.report.data import (
    build_progress,
    render_build_summary,
    render_data_stats,
    render_validation,
)
from localpeer.report.score import render_score, render_selftest
from localpeer.report.train import render_memory_estimate, render_train_summary, train_live

__all__ = ["build_progress", "render_build_summary", "render_data_stats",
           "render_memory_estimate", "render_score", "render_selftest", "render_train_summary",
           "render_validation", "train_live"]
