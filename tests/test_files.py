"""Atomic outputs: a target is replaced whole, and a failure leaves the old one untouched."""

import pytest

from mixer.files import atomic_path, read_table, write_json


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left beside it


def test_atomic_path_keeps_the_old_output_when_writing_fails(tmp_path):
    target = write_json(tmp_path / "law.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["law.json"]


def test_read_table_names_an_unknown_format(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="unsupported table format"):
        read_table(path)
