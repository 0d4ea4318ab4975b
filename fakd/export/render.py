"""Rendering an ablation table as Markdown, CSV, LaTeX or HTML, best values per student in bold."""

from __future__ import annotations

import math

import pandas as pd

FORMATS = ("md", "csv", "latex", "html")
BOLD = {"md": "**{}**", "latex": "\\textbf{{{}}}", "html": "<b>{}</b>"}


def _text(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _best_rows(frame: pd.DataFrame) -> set[int]:
    """Index of the best miou_mean among each student's distilled and baseline arms."""
    best = set()
    arms = frame[frame["arm"] != "teacher"]
    for _, group in arms.groupby("student"):
        if group["miou_mean"].notna().any():
            best.add(int(group["miou_mean"].idxmax()))
    return best


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "csv":
        return frame.to_csv(index=False)
    best = _best_rows(frame)
    text = frame.copy().astype(object)
    for index, row in frame.iterrows():
        for column in frame.columns:
            cell = _text(row[column])
            if column == "miou_mean" and index in best and cell:
                cell = BOLD[fmt].format(cell)
            text.at[index, column] = cell
    if fmt == "md":
        return text.to_markdown(index=False)
    if fmt == "html":
        return text.to_html(index=False, escape=False)
    latex = text.copy()
    latex.columns = [c.replace("_", "\\_") for c in latex.columns]
    latex = latex.map(lambda c: c.replace("_", "\\_") if "\\textbf" not in c else c)
    return latex.style.hide(axis="index").to_latex(hrules=True)
