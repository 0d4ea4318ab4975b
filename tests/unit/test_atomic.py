"""fakd.atomic: a file appears whole or not at all, and a failed write leaves no temporary file behind."""

import pytest

from fakd.atomic import atomic_file, copy_atomic, write_atomic


def test_a_write_replaces_the_target_whole(tmp_path):
    target = tmp_path / "deep" / "study.json"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second" and sorted(p.name for p in target.parent.iterdir()) == ["study.json"]


def test_a_failed_write_leaves_the_target_as_it_was_and_no_temporary_file(tmp_path):
    target = tmp_path / "trial.json"
    target.write_text("kept")
    with pytest.raises(OSError, match="No space left"), atomic_file(target) as handle:
        handle.write("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["trial.json"]


def test_copy_is_whole(tmp_path):
    source = tmp_path / "teacher.pt"
    source.write_bytes(bytes(range(256)) * 100)
    copy_atomic(source, tmp_path / "given" / "teacher.pt")
    assert (tmp_path / "given" / "teacher.pt").read_bytes() == source.read_bytes()
