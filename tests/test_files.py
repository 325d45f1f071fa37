"""Safe outputs: replaced whole and atomically, only when datamixer wrote them, one writer at a time."""

import json
import os
import subprocess
import sys

import pytest

from mixer.files import (
    MARKER,
    OutputLocked,
    OutputRefused,
    YamlRefused,
    atomic_path,
    output_lock,
    read_table,
    read_yaml,
    safe_load_yaml,
    write_json,
)


def _write_dir(target, name="new.txt"):
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / name).write_text(name)


def test_atomic_path_replaces_its_own_directory_whole(tmp_path):
    target = tmp_path / "out"
    _write_dir(target, "stale.txt")
    assert (target / MARKER).is_file()
    inode = target.stat().st_ino
    _write_dir(target, "new.txt")
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"]
    assert target.stat().st_ino != inode  # a new directory was moved into place
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or lock left beside it


def test_a_directory_datamixer_did_not_write_is_never_replaced(tmp_path):
    target = tmp_path / "corpus"
    target.mkdir()
    (target / "data.jsonl").write_text("{}\n")
    with pytest.raises(OutputRefused, match="did not write"):
        _write_dir(target)
    with pytest.raises(OutputRefused, match="did not write"):
        write_json(target, {"a": 1})
    assert (target / "data.jsonl").read_text() == "{}\n"


def test_a_file_output_never_replaces_a_directory(tmp_path):
    target = tmp_path / "out"
    _write_dir(target)
    with pytest.raises(OutputRefused, match="never replaces a directory"):
        write_json(target, {"a": 1})
    assert (target / "new.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_outputs_equal_to_holding_or_inside_an_input_are_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    data = corpus / "a.jsonl"
    data.write_text("{}\n")
    for target, inputs in ((data, [data]), (tmp_path, [data]), (corpus / "out", [corpus])):
        with pytest.raises(OutputRefused, match="input"), atomic_path(target, inputs=inputs):
            pass
    assert data.read_text() == "{}\n"


def test_atomic_path_keeps_the_old_output_when_writing_fails(tmp_path):
    target = write_json(tmp_path / "law.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["law.json"]


def test_a_second_writer_fails_clearly_and_a_dead_owner_lock_is_taken_over(tmp_path):
    target = tmp_path / "out"
    with output_lock(target) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            _write_dir(target)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    _write_dir(target)
    assert not lock.exists() and (target / "new.txt").is_file()


def test_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}-abc123"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / "part.parquet").write_text("partial")
    unrelated = tmp_path / ".out.keep"
    unrelated.mkdir()
    _write_dir(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.keep", "out"]


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    pairs = zip("bcdefgh", "cdefghi", strict=True)
    bomb += "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in pairs)
    with pytest.raises(YamlRefused, match="aliases"):
        safe_load_yaml(bomb, "bomb.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(YamlRefused, match="bad.yaml.*line"):
        read_yaml(path)
    assert safe_load_yaml("web: 0.5\ncode: 0.5\n") == {"web": 0.5, "code": 0.5}


def test_read_table_names_an_unknown_format(tmp_path):
    path = tmp_path / "runs.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="unsupported table format"):
        read_table(path)
