"""Rendering an ablation table: the full table (Markdown, CSV, LaTeX, HTML: every column, best mean per student
and budget in bold; in HTML also the significant comparisons' Δ and Holm p, marked) and the compact decision
table (mIoU and Δ in percent, Holm p, compute hours; lines of at most `WIDTH` characters) with its footnotes and
plain-words decisions."""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fakd.export.table import ALPHA, POWER, TARGET_DELTA, AblationTable

FORMATS = ("md", "csv", "latex", "html")
BOLD = {"md": "**{}**", "latex": "\\textbf{{{}}}", "html": "<b>{}</b>"}
SIGNIFICANT = "*"
"""The HTML tables' mark of a significant comparison (Holm-adjusted p < ALPHA), next to bold type."""
WIDTH = 120
"""The widest line of the compact table and its footnotes."""
MIN_NAME = 8
"""A student name is never cut shorter than this to fit `WIDTH`."""
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"$<$", ">": r"$>$"}


def missing(value: Any) -> bool:
    """None, NaN and pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def significant(row: pd.Series) -> bool:
    """Whether a row's comparison with its base arm is significant: Holm-adjusted p below `ALPHA`."""
    p_holm = row.get("p_holm")
    return not missing(p_holm) and float(p_holm) < ALPHA


def mark_significant(cell: str) -> str:
    """An (escaped) HTML cell in bold with the significance mark."""
    return f'<b class="sig">{cell}<sup>{SIGNIFICANT}</sup></b>' if cell else cell


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


# the full table


def _text(value: object) -> str:
    if missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _best_rows(frame: pd.DataFrame) -> set[int]:
    """Index of the best miou_mean among each (student, budget)'s arms (the teacher is not an arm)."""
    best = set()
    arms = frame[frame["arm"] != "teacher"]
    for _, group in arms.groupby(["student", "budget"], dropna=False):
        if group["miou_mean"].notna().any():
            best.add(int(group["miou_mean"].idxmax()))
    return best


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The full table in `fmt`: CSV unrounded, the others with four decimals (fractions, not percent); HTML
    marks the Δ and Holm p of significant comparisons (`mark_significant`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "csv":
        return frame.to_csv(index=False)
    escape = {"md": str, "html": html.escape, "latex": latex_escape}[fmt]
    best = _best_rows(frame)
    cells = [[escape(_text(row[column])) for column in frame.columns] for _, row in frame.iterrows()]
    mean = list(frame.columns).index("miou_mean")
    for position, index in enumerate(frame.index):
        if index in best and cells[position][mean]:
            cells[position][mean] = BOLD[fmt].format(cells[position][mean])
    if fmt == "html":
        marked = [list(frame.columns).index(c) for c in ("delta_vs_base", "p_holm") if c in frame.columns]
        for position, (_, row) in enumerate(frame.iterrows()):
            if significant(row):
                for column in marked:
                    cells[position][column] = mark_significant(cells[position][column])
    header = [escape(str(column)) for column in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
    if fmt == "md":
        return markdown_table(header, cells, numeric)
    if fmt == "html":
        return html_table(header, cells, numeric, css_class="full")
    return latex_table(header, cells, numeric)


def markdown_table(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    """A pipe table with padded columns (readable as plain text)."""
    widths = [max([len(header[i])] + [len(row[i]) for row in rows] + [3]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1)) for w, r in zip(widths, right,
                                                                                                   strict=True))
    return "\n".join([line(header), rule + "|", *(line(row) for row in rows)])


def html_table(header: list[str], rows: list[list[str]], right: list[bool], css_class: str) -> str:
    """An HTML table of already escaped cells."""
    def cell(tag: str, text: str, align_right: bool) -> str:
        return f'<{tag} class="num">{text}</{tag}>' if align_right else f"<{tag}>{text}</{tag}>"

    head = "".join(cell("th", h, r) for h, r in zip(header, right, strict=True))
    body = "\n".join("<tr>" + "".join(cell("td", c, r) for c, r in zip(row, right, strict=True)) + "</tr>"
                     for row in rows)
    return f'<table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def latex_table(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    """A booktabs tabular of already escaped cells."""
    spec = "".join("r" if r else "l" for r in right)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(row) + " \\\\" for row in rows]
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"


# the compact table


def percent(value: Any, decimals: int = 1) -> str:
    return "-" if missing(value) else f"{100 * float(value):.{decimals}f}"


def score_cell(mean: Any, low: Any, high: Any) -> str:
    """"41.2 [38.9, 43.5]": a mean mIoU fraction and its interval in percent."""
    if missing(mean):
        return "-"
    if missing(low) or missing(high):
        return percent(mean)
    return f"{percent(mean)} [{percent(low)}, {percent(high)}]"


def delta_cell(delta: Any, low: Any, high: Any, minus: str = "-") -> str:
    """"+1.2 [-0.3, 2.7]": a difference of mIoU fractions in percentage points (two decimals below 1 point)."""
    if missing(delta):
        return "-"
    values = [100 * float(v) for v in (delta, low, high) if not missing(v)]
    decimals = 2 if max(abs(v) for v in values) < 1 else 1

    def number(value: float, sign: bool = False) -> str:
        text = f"{value:{'+' if sign else ''}.{decimals}f}"
        return text.replace("-", minus)

    head = number(100 * float(delta), sign=True)
    if missing(low) or missing(high):
        return head
    return f"{head} [{number(100 * float(low))}, {number(100 * float(high))}]"


def p_cell(value: Any) -> str:
    if missing(value):
        return "-"
    value = float(value)
    if value < 0.001:
        return "<0.001"
    return f"{value:.3f}" if value < 0.01 else f"{value:.2f}"


def hours_cell(value: Any) -> str:
    if missing(value):
        return ""
    value = float(value)
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.01 else "<0.01"


def mde_cell(value: Any) -> str:
    """A minimum detectable effect (a fraction) in percentage points."""
    return "-" if missing(value) else delta_cell(value, None, None)[1:]


def decision_cell(row: pd.Series) -> str:
    """"better at 6": a comparison's sequential verdict and the pairs it was reached at."""
    if missing(row.get("decision")):
        return ""
    at = row.get("decided_at")
    return str(row["decision"]) + ("" if missing(at) else f" at {int(at)}")


def seeds_text(row: pd.Series) -> str:
    """Seeds that would detect a 1-mIoU difference, or why that is unknown."""
    if missing(row["paired_n"]) or int(row["paired_n"]) < 2:
        return "unknown"
    if missing(row["seeds_needed"]):
        return f">{10_000}"
    return str(int(row["seeds_needed"]))


@dataclass(frozen=True)
class Compact:
    """The compact table's cells and what goes under it (each part fits `WIDTH` characters in Markdown)."""

    header: list[str]
    rows: list[list[str]]
    right: list[bool]
    footnotes: list[str]
    blocks: list[tuple[str, list[str], list[list[str]], list[bool]]]  # title, header, rows, right-aligned


def comparisons(table: AblationTable) -> pd.DataFrame:
    """The rows of the table that compare an arm with its base arm."""
    frame = table.frame
    return frame[frame["base_arm"].notna() & (frame["arm"] != "teacher")]


def _label(row: pd.Series, students: bool, budgets: bool, prefix: bool = True) -> str:
    """"kd+fakd vs kd", qualified by student and budget when the study has several."""
    parts = [str(row["student"])] if students and prefix else []
    parts.append(f"{row['arm']} vs {row['base_arm']}")
    if budgets:
        parts.append(f"({row['budget']})")
    return " ".join(parts)


def compact(table: AblationTable) -> Compact:
    """The decision columns of every row, the footnotes, and the MDE and stability blocks."""
    frame = table.frame
    arms = frame[frame["arm"] != "teacher"]
    several_budgets = len(table.budgets) > 1
    several_students = arms["student"].nunique() > 1
    unit = "GPU" if table.hours_column.startswith("gpu") else "CPU"
    sequential = table.sequential
    header = ["student", "arm"] + (["budget"] if several_budgets else [])
    header += ["n", "mIoU % [95% CI]", f"Δ vs base, pp [{'CS' if sequential else 'CI'}]"]
    header += ([] if sequential else ["p (Holm)"]) + ["decision", f"{unit} hours"]
    right = [False, False] + ([False] if several_budgets else []) + [True, False, False]
    right += ([] if sequential else [False]) + [False, True]
    rows = []
    for _, row in frame.iterrows():
        budget = "" if missing(row["budget"]) else str(row["budget"])
        cells = [str(row["student"]), str(row["arm"])] + ([budget] if several_budgets else [])
        has_base = not missing(row["base_arm"])
        low, high = ("delta_cs_low", "delta_cs_high") if sequential else ("delta_ci_low", "delta_ci_high")
        cells += [str(int(row["n"])), score_cell(row["miou_mean"], row["miou_ci_low"], row["miou_ci_high"]),
                  delta_cell(row["delta_vs_base"], row[low], row[high]) if has_base else ""]
        cells += [] if sequential else [p_cell(row["p_holm"]) if has_base else ""]
        cells += [decision_cell(row) if has_base else "", hours_cell(row[table.hours_column])]
        rows.append(cells)

    tests = comparisons(table)
    tested = int(tests["p_value"].notna().sum())
    untested = f"; {len(tests) - tested} untested: under two pairs or no spread" if tested < len(tests) else ""
    runs = f"{table.repeats} selection repeats × seeds" if table.repeats > 1 else "seeds"
    shared = "repeat and seed" if table.repeats > 1 else "seed"
    search = " (search shared by its budgets)" if several_budgets else ""
    hours = f"{unit} hours: the compute of the row's arm: its search, confirmation and retrain{search}."
    interval = ("its anytime-valid confidence sequence (CS) where the decision was reached, else at the last pair"
                if sequential else "95% CI")
    footnotes = [
        f"mIoU: validation mIoU in %, mean [95% Student-t CI] over the n retrained runs ({runs}). Δ: paired "
        f"difference from the base arm in percentage points over the runs both have (same {shared}), {interval}.",
    ]
    if sequential:
        why = ("the seeds were raised after a retrain had finished (its table could be looked at), so the fixed-n "
               "p-values no longer apply" if table.seeds_raised else "the seeds were added in rounds until decided")
        footnotes.append(f"{table.method} Decision at n: the pairs it was reached at; {why}. {hours}")
    else:
        footnotes.append(
            f"p (Holm): two-sided paired t-test, Holm-adjusted across the study's {tested} tested comparison"
            f"{'s' if tested != 1 else ''} (all arms with a base arm, all students and budgets{untested}). {hours}")
        footnotes.append(f"{table.method} Decision at n: the pairs it was reached at.")
    diverged = [f"{_label(r, several_students, several_budgets).split(' vs ')[0]} {int(r['diverged'])}"
                for _, r in arms.iterrows() if not missing(r["diverged"]) and int(r["diverged"]) > 0]
    if diverged:
        footnotes.append("diverged trials (search and retrain): " + ", ".join(diverged))
    if table.out_of_memory:
        footnotes.append("out of memory (failed, not retried): " + ", ".join(table.out_of_memory))
    blocks = []
    parts = [f"{_label(r, several_students, several_budgets)} {mde_cell(r['mde'])} pp / {seeds_text(r)}"
             for _, r in tests.iterrows()]
    line = f"MDE (α = {ALPHA:g}, power {POWER:g}) / seeds for {100 * TARGET_DELTA:g} mIoU: " + "; ".join(parts)
    if parts and not (tests["paired_n"] >= 2).any():
        footnotes.append("MDE and seeds needed: known once a comparison has two paired runs.")
    elif parts and len(line) <= WIDTH:
        footnotes.append(line)
    elif parts:
        title = (f"Power at α = {ALPHA:g} and power {POWER:g}, from the observed paired spread. MDE: the smallest Δ "
                 f"the comparison detects with its pairs; seeds: paired seeds that would detect Δ = "
                 f"{100 * TARGET_DELTA:g} mIoU.")
        block_header = (["student"] if several_students else []) + ["comparison", "pairs", "MDE, pp",
                                                                    f"seeds for {100 * TARGET_DELTA:g} mIoU"]
        block_rows = [([str(r["student"])] if several_students else [])
                      + [_label(r, several_students, several_budgets, prefix=False), str(int(r["paired_n"])),
                         mde_cell(r["mde"]), seeds_text(r)] for _, r in tests.iterrows()]
        blocks.append((title, block_header, block_rows, ([False] if several_students else []) + [False] + [True] * 3))
    if table.repeats > 1:
        block_header = ["student", "arm"] + (["budget"] if several_budgets else [])
        block_header += ["repeats", "n", "SD across repeats", "SD across seeds"]
        block_rows = [[str(r["student"]), str(r["arm"])] + ([str(r["budget"])] if several_budgets else [])
                      + [str(int(r["repeats"])), str(int(r["n"])), percent(r["repeat_sd"], 2),
                         percent(r["seed_sd"], 2)] for _, r in arms.iterrows()]
        blocks.append(("Selection stability: SD of the per-repeat mean mIoU across the repeated searches, next to "
                       "the mean within-repeat SD across training seeds (percentage points).", block_header, block_rows,
                       [False, False] + ([False] if several_budgets else []) + [True, True, True, True]))
    return Compact(header, rows, right, footnotes, blocks)


def _fit(header: list[str], rows: list[list[str]], right: list[bool]) -> list[list[str]]:
    """Rows whose first column (the student) is cut with "…" just enough for the table to fit `WIDTH`."""
    over = max(len(line) for line in markdown_table(header, rows, right).splitlines()) - WIDTH
    if over <= 0:
        return rows
    longest = max(len(row[0]) for row in rows)
    keep = max(MIN_NAME, longest - over, len(header[0]))
    return [[row[0] if len(row[0]) <= keep else row[0][: keep - 1] + "…", *row[1:]] for row in rows]


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, break_long_words=False, break_on_hyphens=False) or [""]


def compact_markdown(table: AblationTable) -> str:
    """The compact table as Markdown, its footnotes and blocks below it: what `export` prints by default."""
    parts = compact(table)
    lines = [markdown_table(parts.header, _fit(parts.header, parts.rows, parts.right), parts.right), ""]
    for footnote in parts.footnotes:
        lines += _wrap(footnote)
    for title, header, rows, right in parts.blocks:
        lines += ["", *_wrap(title), "", markdown_table(header, _fit(header, rows, right), right)]
    return "\n".join(lines)


def compact_latex(table: AblationTable) -> str:
    """The compact table as a booktabs tabular, footnotes and blocks as comments below it (ready to paste)."""
    parts = compact(table)
    header = [latex_escape(h).replace("Δ", "$\\Delta$") for h in parts.header]
    body = latex_table(header, [[latex_escape(c) for c in row] for row in parts.rows], parts.right)
    comments = [f"% {line}" for footnote in parts.footnotes for line in _wrap(footnote)]
    for title, block_header, rows, _ in parts.blocks:
        comments += [f"% {line}" for line in _wrap(title)]
        comments += ["%   " + " | ".join(block_header)] + ["%   " + " | ".join(row) for row in rows]
    return body + "\n".join(comments) + "\n"


def decisions(table: AblationTable) -> list[str]:
    """One plain-words sentence per comparison: which arm beats its base, by how much, how sure, and what
    more seeds would resolve."""
    frame = table.frame
    arms = frame[frame["arm"] != "teacher"]
    students, budgets = arms["student"].nunique() > 1, len(table.budgets) > 1
    sentences = []
    for _, row in comparisons(table).iterrows():
        label = _label(row, students, budgets)
        pairs = 0 if missing(row["paired_n"]) else int(row["paired_n"])
        if pairs == 0:
            sentences.append(f"{label}: no paired runs yet.")
            continue
        if table.sequential:
            sentences.append(_sequential_sentence(row, label, pairs))
            continue
        delta = delta_cell(row["delta_vs_base"], row["delta_ci_low"], row["delta_ci_high"], minus="−")
        delta = delta.replace(" [", " mIoU [", 1) if "[" in delta else f"{delta} mIoU"
        if pairs < 2 or missing(row["p_holm"]):
            why = "one pair, no test" if pairs < 2 else "no spread to test"
            sentences.append(f"{label}: {delta} ({why}): not resolved; retrain more seeds.")
            continue
        p_holm = float(row["p_holm"])
        if p_holm < ALPHA:
            verdict = f"{row['arm']} {'beats' if row['delta_vs_base'] > 0 else 'is worse than'} {row['base_arm']}"
        else:
            verdict = "not resolved"
        p_text = p_cell(p_holm)
        p_text = f"p < {p_text[1:]}" if p_text.startswith("<") else f"p = {p_text}"
        mde = mde_cell(row["mde"])
        seeds = seeds_text(row)
        target = f"{100 * TARGET_DELTA:g} mIoU"
        need = (f"{seeds} seeds would detect {target}" if not seeds.startswith(">")
                else f"more than {seeds[1:]} seeds would be needed to detect {target}")
        sentences.append(f"{label}: {delta}, {p_text} (Holm): {verdict}; with {pairs} pairs the smallest "
                         f"detectable Δ is {mde} mIoU; {need}.")
    return sentences


def _sequential_sentence(row: pd.Series, label: str, pairs: int) -> str:
    """The plain-words verdict of a comparison whose seed count was not fixed in advance."""
    delta = delta_cell(row["delta_vs_base"], row["delta_cs_low"], row["delta_cs_high"], minus="−")
    delta = delta.replace(" [", " mIoU [CS ", 1) if "[" in delta else f"{delta} mIoU"
    arm, base, decision = row["arm"], row["base_arm"], row["decision"]
    at = f" at {int(row['decided_at'])} pairs" if not missing(row["decided_at"]) else ""
    verdict = {"better": f"{arm} beats {base}{at}", "worse": f"{arm} is worse than {base}{at}",
               "equivalent": f"{arm} and {base} are equivalent within the margin{at}"}.get(
        decision, f"undecided after {pairs} pairs; more seeds could still decide it")
    return f"{label}: {delta}: {verdict} (anytime-valid)."
