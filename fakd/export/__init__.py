"""Exports of a study directory (read-only): ablation tables and plots."""

from fakd.export.render import FORMATS, render
from fakd.export.study import export_study

__all__ = ["FORMATS", "export_study", "render"]
