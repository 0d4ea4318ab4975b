"""fakd.spec_yaml and the spec's defensive parsing: hostile or broken files are one line and exit 2, fast, with
nothing echoed at length."""

import copy
import time

import pytest
import yaml
from conftest import TINY_SPEC, write_spec

from fakd.cli import main
from fakd.spec_yaml import MAX_BYTES, MAX_DEPTH

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def refused(capsys, path, *args: str) -> str:
    started = time.perf_counter()
    assert main(["train", str(path), *args]) == 2
    assert time.perf_counter() - started < 60  # a bound on runaway work, not a timing assertion
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600, err[:1000]
    return err


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False) + BOMB.replace("a:", "x_a:", 1) + "name2: *i\n")
    assert "its aliases expand it to more than 10 times" in refused(capsys, path)


def test_a_modest_alias_is_read(tmp_path, capsys):
    """An anchor reused a few times (as an older study's spec.yaml may hold) is read as written out."""
    text = yaml.safe_dump(TINY_SPEC, sort_keys=False).replace("  batch_size: 2\n", "  batch_size: &b 2\n", 1)
    text = text.replace("  eval_batch_size: 4\n", "  eval_batch_size: *b\n", 1)
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    from fakd.spec import load_spec

    assert load_spec(path).defaults.train.eval_batch_size == 2


def test_deep_nesting_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert f"nests deeper than {MAX_DEPTH} levels" in refused(capsys, path)


def test_a_file_that_is_not_utf8_names_the_byte_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(TINY_SPEC, sort_keys=False).encode() + "# caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8 text (byte 0xe9 at line" in refused(capsys, path)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump({**TINY_SPEC, "train": {**TINY_SPEC["train"], "iters": -1}})
                    .encode())
    assert "train.iters" in refused(capsys, bom)  # read past the BOM: the first problem is the value


def test_an_oversized_spec_is_refused_without_reading_it_whole(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False) + "# " + "x" * MAX_BYTES + "\n")
    assert f"a spec is at most {MAX_BYTES:,} bytes" in refused(capsys, path)


def test_duplicate_keys_name_both_lines_at_any_level(tmp_path, capsys):
    text = yaml.safe_dump(TINY_SPEC, sort_keys=False)
    path = tmp_path / "twice.yaml"
    path.write_text(text + "train:\n  iters: 8\n")
    line = text.splitlines().index("train:") + 1
    assert f"duplicate key 'train' at lines {line} and {len(text.splitlines()) + 1}" in refused(capsys, path)
    nested = text.replace("  iters: 4\n", "  iters: 4\n  iters: 6\n", 1)
    path.write_text(nested)
    assert "duplicate key 'iters' at lines" in refused(capsys, path)


def test_set_twice_is_refused(tiny_spec_path, capsys):
    err = refused(capsys, tiny_spec_path, "--set", "train.lr=0.1", "--set", "train.lr=0.2")
    assert "train.lr: --set train.lr is given twice" in err


def test_a_long_value_is_not_echoed_whole(tmp_path, capsys):
    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["lr"] = "fast" * 10_000
    assert "…" in refused(capsys, write_spec(tmp_path, spec))


def test_eval_every_beyond_iters_with_halving_is_refused(tiny_spec_path, capsys):
    err = refused(capsys, tiny_spec_path, "--set", "train.eval_every=10", "--set", "search.scheduler=asha")
    assert "train.eval_every: 10 is above train.iters (4)" in err


@pytest.mark.parametrize("key", ["teacher.checkpoint", "student.pretrained"])
def test_a_directory_where_a_file_belongs_says_so(tiny_spec_path, tmp_path, capsys, key):
    assert "is a directory" in refused(capsys, tiny_spec_path, "--set", f"{key}={tmp_path}")


@pytest.mark.driver
@pytest.mark.parametrize("command", ["sweep", "demo"])
def test_a_bad_spec_is_refused_before_torch_ray_or_timm_is_imported(tiny_spec_path, tmp_path, command):
    import subprocess
    import sys

    args = [command, str(tiny_spec_path), "--storage", str(tmp_path)] + (["--set", "train.iters=-5"]
                                                                         if command == "sweep" else [])
    if command == "demo":
        tiny_spec_path.write_text(tiny_spec_path.read_text().replace("iters: 4", "iters: -5", 1))
    probe = ("import sys; from fakd.cli import main; code = main(sys.argv[1:]); "
             "print([m for m in ('torch', 'ray', 'timm') if m in sys.modules]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "iters" in result.stderr, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
