"""Ablation tables: statistics checked against independent computations, and a real study exported."""

import csv
import hashlib
import io
import json
import math

import pytest

from fakd.cli import main
from fakd.export.table import mean_ci, paired_delta

pytestmark = pytest.mark.ray


def test_mean_ci_uses_student_t():
    mean, low, high = mean_ci([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) · s / √n
    assert (mean, low, high) == pytest.approx((0.6, 0.6 - half, 0.6 + half))
    assert math.isnan(mean_ci([0.4])[1]) and math.isnan(mean_ci([])[0])


def test_paired_delta_uses_only_shared_seeds():
    arm = {1: 0.60, 2: 0.70, 3: 0.65}
    base = {1: 0.50, 2: 0.65, 3: 0.60, 4: 0.90}
    delta, p_value, pairs = paired_delta(arm, base)
    # differences 0.10, 0.05, 0.05: t = mean / (sd / √3) = 4, and with 2 dof P(|T| > t) = 1 − t / √(2 + t²)
    assert pairs == 3 and delta == pytest.approx(0.2 / 3)
    assert p_value == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-6)
    assert math.isnan(paired_delta({1: 0.5}, {1: 0.4})[1])


def tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def retrain_scores(study_root, arm_slug):
    """seed → final validation mIoU, read straight from the retrain trials' files."""
    scores = {}
    for trial in study_root.glob(f"trials/retrain/{arm_slug}-*"):
        record = json.loads((trial / "trial.json").read_text())
        rows = [json.loads(line) for line in (trial / "results.jsonl").read_text().splitlines()]
        scores[record["seed"]] = rows[-1]["val_miou"]
    return scores


def test_export_of_a_real_study(searched_study, capsys, tmp_path):
    _, study = searched_study
    before = tree_digest(study.root)
    assert main(["export", str(study.root), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert "all 6 retrained runs finished" in captured.err
    assert [r["arm"] for r in rows] == ["teacher", "baseline", "kd", "kd+fakd"]
    header = list(rows[0])
    assert header[:6] == ["student", "arm", "n", "miou_mean", "miou_ci_low", "miou_ci_high"]
    assert "cpu_hours" in header and {"delta_vs_base", "p_value", "diverged"} <= set(header)
    assert sum(h.startswith("iou_") for h in header) == 4

    by_arm = {r["arm"]: r for r in rows}
    for arm, slug in (("baseline", "baseline"), ("kd", "kd"), ("kd+fakd", "kd_fakd")):
        scores = retrain_scores(study.root, slug)
        assert int(by_arm[arm]["n"]) == 2 == len(scores)
        assert float(by_arm[arm]["miou_mean"]) == pytest.approx(sum(scores.values()) / 2)
        assert float(by_arm[arm]["cpu_hours"]) > 0
    kd, fakd = retrain_scores(study.root, "kd"), retrain_scores(study.root, "kd_fakd")
    expected = sum(fakd[s] - kd[s] for s in kd) / 2
    assert by_arm["kd+fakd"]["base_arm"] == "kd"
    assert float(by_arm["kd+fakd"]["delta_vs_base"]) == pytest.approx(expected, abs=1e-9)

    for fmt, marker in (("md", "**"), ("latex", "\\textbf{"), ("html", "<b>")):
        out = tmp_path / f"table.{fmt}"
        assert main(["export", str(study.root), "--format", fmt, "--out", str(out)]) == 0
        assert marker in out.read_text()
    plots = {p.name for p in tmp_path.glob("*.png")}
    assert {"miou_vs_strength.png", "importances.png", "retrain_curves.png"} <= plots
    assert tree_digest(study.root) == before, "export changed the study directory"


def test_export_refuses_to_write_into_the_study(searched_study, capsys, tmp_path):
    _, study = searched_study
    before = tree_digest(study.root)
    for out in (study.root / "study.json", study.root / "trials" / "t.md", study.root, tmp_path):
        assert main(["export", str(study.root), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out:" in err, err
    assert tree_digest(study.root) == before
    assert main(["export", str(study.root), "--out", str(study.exports / "ablation.md")]) == 0
    assert (study.exports / "ablation.md").is_file()
