"""One table across studies (`launch.py export A B ...`), from synthetic studies written straight to disk (no Ray,
no training): every cell and mark checked against values computed here from the retrain trials' own files; the
LaTeX compiled with a real pdflatex; refusals."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats
from test_report import ARMS, expected_comparison, holm_by_hand, make_study, runs_from_files, tree_digest

from fakd.cli import main
from fakd.results.sequential import verdict
from fakd.vocab import ARM_TABLE

STUDENT = "mobilenetv3_small_050"


def cross_rows(capsys, *args: str) -> list[dict[str, str]]:
    assert main(["export", *args, "--format", "csv"]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


@pytest.fixture
def two_studies(tmp_path):
    """Two studies of the same task with other seeds: 4 and 3 retrained seeds per arm."""
    return (make_study(tmp_path / "first", seed=0), make_study(tmp_path / "second", seed=1, seeds=(1, 2, 3)))


def test_every_cell_and_mark_is_computed_from_the_trials_files(two_studies, capsys):
    first, second = two_studies
    before = [tree_digest(s.root) for s in two_studies]
    rows = cross_rows(capsys, str(first.root), str(second.root))
    by_cell = {(row["study"], row["arm"]): row for row in rows}
    assert [row["arm"] for row in rows] == ["teacher", *ARMS] * 2
    expected_p: list[tuple[tuple[str, str], float, float]] = []
    for study in two_studies:
        runs = runs_from_files(study.root)
        means = {}
        for arm in ARMS:
            scores = list(runs[(STUDENT, arm, "equal-iters")].values())
            row = by_cell[(str(study.root), arm)]
            n = len(scores)
            half = stats.t.ppf(0.975, n - 1) * np.std(scores, ddof=1) / math.sqrt(n)
            assert int(row["n"]) == n
            assert float(row["miou_mean"]) == pytest.approx(np.mean(scores), abs=1e-12)
            assert float(row["ci_half_width"]) == pytest.approx(half, rel=1e-9)
            assert float(row["seed_sd"]) == pytest.approx(np.std(scores, ddof=1), rel=1e-9)
            means[arm] = np.mean(scores)
            base = ARM_TABLE[arm].base
            if base in ARMS:
                found = expected_comparison(runs[(STUDENT, arm, "equal-iters")], runs[(STUDENT, base, "equal-iters")])
                expected_p.append(((str(study.root), arm), found["p_value"], found["delta_vs_base"]))
        best = max(means, key=means.get)
        assert [arm for arm in ARMS if by_cell[(str(study.root), arm)]["best"] == "true"] == [best]
        assert by_cell[(str(study.root), "teacher")]["miou_mean"] == "0.6123"
    adjusted = holm_by_hand([p for _, p, _ in expected_p])  # over both studies' comparisons together
    better = {key for (key, _, delta), p in zip(expected_p, adjusted, strict=True) if p < 0.05 and delta > 0}
    assert {key for key, row in by_cell.items() if row["better_than_base"] == "true"} == better
    assert better, "the synthetic effects of 1-3 points go undetected"
    assert [tree_digest(s.root) for s in two_studies] == before, "export changed a study"

    assert main(["export", str(first.root), str(second.root)]) == 0
    text = capsys.readouterr().out
    header = [cell.strip() for cell in text.splitlines()[0].split("|")[1:-1]]
    assert header == ["arm", f"synthetic · {STUDENT}", f"synthetic · {STUDENT}"]
    assert "Holm-adjusted over the table's 8 comparisons" in text and "(n=3)" in text
    assert text.count("**") == 2 * 2  # one bold cell per column


def test_a_sequential_study_marks_by_confidence_sequences_over_the_whole_table(tmp_path, capsys):
    first, second = make_study(tmp_path / "first", seed=0), make_study(tmp_path / "second", seeds=tuple(range(1, 9)))
    second.update_metadata(retrain_mode="sequential")
    two_studies = (first, second)
    rows = cross_rows(capsys, str(first.root), str(second.root))
    better = set()
    for study in two_studies:
        runs = runs_from_files(study.root)
        for arm in ARMS:
            base = ARM_TABLE[arm].base
            if base in ARMS:
                mine, theirs = runs[(STUDENT, arm, "equal-iters")], runs[(STUDENT, base, "equal-iters")]
                diffs = [mine[key] - theirs[key] for key in sorted(set(mine) & set(theirs), key=lambda k: (k[1], k[0]))]
                if verdict(diffs, margin=0.01, alpha=0.05 / 8, max_n=20).decision == "better":
                    better.add((str(study.root), arm))
    assert {(row["study"], row["arm"]) for row in rows if row["better_than_base"] == "true"} == better
    assert better, "8 seeds of a 1.8-point effect go undecided"
    assert main(["export", str(first.root), str(second.root), "--spread", "sd"]) == 0
    text = capsys.readouterr().out
    assert "anytime-valid" in text and "over the table's 8 comparisons (0.05/8 each)" in text
    assert "± the SD over seeds" in text


def test_labels_name_the_columns_and_must_match_them(two_studies, capsys):
    first, second = two_studies
    assert main(["export", str(first.root), str(second.root), "--labels", "Cityscapes,VOC"]) == 0
    header = [cell.strip() for cell in capsys.readouterr().out.splitlines()[0].split("|")[1:-1]]
    assert header == ["arm", "Cityscapes", "VOC"]
    assert main(["export", str(first.root), str(second.root), "--labels", "Cityscapes,VOC", "--format", "csv"]) == 0
    assert [row["column"] for row in csv.DictReader(io.StringIO(capsys.readouterr().out))][::6] == ["Cityscapes",
                                                                                                   "VOC"]
    assert main(["export", str(first.root), str(second.root), "--labels", "only-one"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--labels: 1 labels for 2 columns" in err


def test_bad_input_is_one_line_and_writes_nothing(two_studies, tmp_path, capsys):
    first, second = two_studies
    out = tmp_path / "table.md"
    other = tmp_path / "other-classes"
    shutil.copytree(second.root, other)
    meta = json.loads((other / "study.json").read_text())
    meta["data"]["class_names"] = ["road", "car", "sky"]
    (other / "study.json").write_text(json.dumps(meta))
    empty = tmp_path / "no-retrain"
    shutil.copytree(first.root, empty)
    shutil.rmtree(empty / "trials" / "retrain")
    cases = [
        ([str(first.root), str(first.root)], "is given twice"),
        ([str(first.root), str(other)], "scores other classes of synthetic (3) than"),
        ([str(first.root), str(empty)], "has no retrain runs"),
        ([str(first.root), str(tmp_path / "missing")], "no such directory"),
        ([str(first.root), str(second.root), "--out", str(first.exports / "x.md")], "outside every study"),
        ([str(first.root), str(second.root), "--spread", "iqr"], "invalid choice"),
    ]
    for args, expected in cases:
        assert main(["export", *args, "--out", str(out)] if "--out" not in args else ["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (args, err)
        assert not out.exists() and not first.exports.exists()


def test_the_latex_table_compiles_with_booktabs(two_studies, tmp_path, capsys):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base and texlive-latex-recommended)")
    first, second = two_studies
    table = tmp_path / "table.tex"
    assert main(["export", str(first.root), str(second.root), "--format", "latex", "--out", str(table),
                 "--labels", "Synthetic A,Synthetic B_2"]) == 0
    text = table.read_text()
    assert "\\toprule" in text and "\\textbf{" in text and "$\\pm$" in text and "Synthetic B\\_2" in text
    document = tmp_path / "paper.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                        "\\begin{table}\\centering\n\\input{table.tex}\n\\end{table}\n\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", document.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Overfull" not in log and "Missing character" not in log, log[-2000:]


def test_the_html_table_is_one_offline_page(two_studies, capsys):
    first, second = two_studies
    assert main(["export", str(first.root), str(second.root), "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!doctype html>") and page.count("<table>") == 1
    assert "http://" not in page and "https://" not in page and " src=" not in page
    assert page.count("<b>") == 2 and "<sup>*</sup>" in page
