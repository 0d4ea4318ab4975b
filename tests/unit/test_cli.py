"""The command line answers quickly: commands that only read a study, `--help` and every refusal load none of
torch, Ray or timm (`benchmarks/bench_cli.py` times them)."""

import ast
import subprocess
import sys

import pytest
from test_report import make_study

HEAVY = ("torch", "ray", "timm")
PROBE = ("import sys; from fakd.cli import main\n"
         "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
         f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr); sys.exit(code)")


def loaded_heavy_modules(args: list[str]) -> tuple[int, list[str]]:
    """Exit code and the heavy modules loaded by one `launch.py ARGS` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return result.returncode, ast.literal_eval(result.stderr.strip().splitlines()[-1])  # the probe's last line


@pytest.mark.driver
def test_reading_commands_help_and_refusals_import_no_torch_ray_or_timm(tmp_path):
    study = make_study(tmp_path / "study", arms=["baseline", "kd"], seeds=(1, 2))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nteacher: [unclosed\n")
    cases = {
        "status": (["status", str(study.root)], 0),
        "status --json": (["status", str(study.root), "--json"], 0),
        "export md": (["export", str(study.root)], 0),
        "export csv": (["export", str(study.root), "--format", "csv"], 0),
        "--help": (["--help"], 0),
        "bad YAML": (["sweep", str(bad_yaml), "--storage", str(tmp_path / "s")], 2),
        "bad --seeds": (["retrain", str(study.root), "--seeds", "0"], 2),
        "export, not a study": (["export", str(tmp_path)], 2),
        "resume, not a study": (["resume", str(tmp_path)], 2),
        "unknown command": (["sweeep"], 2),
    }
    for name, (args, expected) in cases.items():
        code, heavy = loaded_heavy_modules(args)
        assert (code, heavy) == (expected, []), name
