"""Exports of a study directory (read-only): ablation tables, the HTML report and plots."""

from fakd.export.render import FORMATS, compact_markdown, render
from fakd.export.study import export_study
from fakd.results.sequential import decide

__all__ = ["FORMATS", "compact_markdown", "decide", "export_study", "render"]
