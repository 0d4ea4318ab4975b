"""Ablation tables of a real study (Ray, tiny models): values checked against the trials' own files, and every
format exported without changing the study."""

import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from fakd.cli import main
from fakd.export.render import WIDTH
from fakd.export.wandb_table import log_ablation_table
from fakd.results import read_trials

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


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
    assert header[:7] == ["student", "arm", "budget", "n", "miou_mean", "miou_ci_low", "miou_ci_high"]
    assert "cpu_hours" in header and {"delta_vs_base", "p_value", "p_holm", "mde", "seeds_needed", "diverged"} <= set(
        header)
    assert {r["budget"] for r in rows[1:]} == {"equal-iters"} and "repeat_sd" not in header
    assert sum(h.startswith("iou_") for h in header) == 4
    # effective batch: train.batch_size × train.accumulate of the retrain runs' own configurations
    trains = [json.loads(p.read_text())["run"]["train"] for p in study.root.glob("trials/retrain/*/trial.json")]
    (effective,) = {t["batch_size"] * t.get("accumulate", 1) for t in trains}
    assert rows[0]["effective_batch"] == "" and {r["effective_batch"] for r in rows[1:]} == {str(effective)}

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
    # Holm over the study's two comparisons (kd vs baseline, kd+fakd vs kd), from scipy's paired t-tests
    base = retrain_scores(study.root, "baseline")
    p_kd = stats.ttest_rel([kd[s] for s in sorted(kd)], [base[s] for s in sorted(kd)]).pvalue
    p_fakd = stats.ttest_rel([fakd[s] for s in sorted(kd)], [kd[s] for s in sorted(kd)]).pvalue
    low, high = sorted([p_kd, p_fakd])
    holm = {low: min(1, 2 * low), high: min(1, max(2 * low, high))}
    for arm, p_value in (("kd", p_kd), ("kd+fakd", p_fakd)):
        if math.isnan(p_value):  # two seeds with an identical difference: no test
            assert by_arm[arm]["p_holm"] == ""
        else:
            assert float(by_arm[arm]["p_value"]) == pytest.approx(p_value, rel=1e-9)
            assert float(by_arm[arm]["p_holm"]) == pytest.approx(holm[p_value], rel=1e-9)

    assert main(["export", str(study.root)]) == 0
    compact = capsys.readouterr().out
    assert "p (Holm)" in compact and "Holm-adjusted" in compact and "iou_" not in compact
    assert max(len(line) for line in compact.splitlines()) <= WIDTH

    for fmt, marker in (("md", "**"), ("latex", "\\textbf{"), ("html", "<b>")):
        out = tmp_path / f"table.{fmt}"
        assert main(["export", str(study.root), "--format", fmt, "--out", str(out)]) == 0
        text = out.read_text()
        assert marker in text and ("iou\\_" if fmt == "latex" else "iou_") in text  # every column
    plots = {p.name for p in tmp_path.glob("*.png")}
    assert {"miou_vs_strength.png", "importances.png", "best_so_far.png", "retrain_curves.png"} <= plots
    report = (tmp_path / "table.html").read_text()
    assert report.count('src="data:image/png;base64,') == len(plots) and "kd+fakd vs kd: " in report
    assert f"<th>Effective batch</th><td>{effective} (train.batch_size" in report and "retrain finished 2" in report
    assert "<th>Compute, spent of planned</th><td>baseline: " in report

    # the plan the sweep stored, set against what each arm spent
    plan = json.loads((study.root / "study.json").read_text())["plan"]
    iters = trains[0]["iters"]
    assert set(plan["arms"]) == {"baseline", "kd", "kd+fakd"} and plan["unit"] == "cpu"
    assert {arm: parts["retrain"]["iterations"] for arm, parts in plan["arms"].items()} == dict.fromkeys(
        plan["arms"], 2 * iters)
    assert main(["status", str(study.root)]) == 0
    shown = capsys.readouterr().out
    for arm in plan["arms"]:
        done = sum(r.iterations for r in read_trials(study) if r.arm == arm)
        planned = sum(part["iterations"] for part in plan["arms"][arm].values())
        assert f"  {arm}: " in shown and f"({done:,} of {planned:,.0f} iterations)" in shown, shown
    assert tree_digest(study.root) == before, "export changed the study directory"


def test_export_refuses_to_write_into_the_study(searched_study, capsys, tmp_path):
    _, study = searched_study
    before = tree_digest(study.root)
    other = tmp_path / "other-study"
    shutil.copytree(study.root, other)
    refused = (study.root / "study.json", study.root / "trials" / "t.md", study.root, tmp_path,
               study.exports,  # the folder itself: it would become a file, with the plots in the study root
               other / "study.json", other / "exports" / "a.md")  # another study's files, even its exports
    for out in refused:
        assert main(["export", str(study.root), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out:" in err, err
    assert tree_digest(study.root) == before and not (other / "exports" / "a.md").exists()
    assert main(["export", str(study.root), "--out", str(study.exports / "ablation.md")]) == 0
    assert (study.exports / "ablation.md").is_file()


def test_the_ablation_table_goes_to_wandb_once_a_study_has_retrain_runs(searched_study, tmp_path):
    """In a process of its own, as the CLI does after a driver: a W&B service started in the test process would be
    inherited (WANDB_SERVICE) by the drivers that later tests start."""
    _, study = searched_study
    copy = tmp_path / "tracked"
    shutil.copytree(study.root, copy)
    spec = (copy / "spec.yaml").read_text().replace("wandb: false", "wandb: true\n  project: fakd-test")
    (copy / "spec.yaml").write_text(spec)
    script = f"from fakd.export.wandb_table import log_ablation_table; print(log_ablation_table({str(copy)!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}

    def logged() -> str:
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return result.stdout.strip().splitlines()[-1]

    assert logged() == "True"
    (run,) = (copy / "wandb").glob("offline-run-*-tiny-ablation")
    (table,) = run.glob("files/media/table/ablation_*.table.json")
    data = json.loads(table.read_text())
    assert "kd+fakd" in json.dumps(data["data"]) and "miou_mean" in data["columns"]
    meta = json.loads((copy / "study.json").read_text())
    (copy / "study.json").write_text(json.dumps({**meta, "no_wandb": True}))
    assert logged() == "False", "a study run with --no-wandb logs nothing"
    assert log_ablation_table(copy) is False  # in this process too: it returns before W&B is imported
