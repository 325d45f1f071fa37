"""The CLI shell: every group listed, usage errors are one line with a non-zero exit code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from datamixer.cli import COMMAND_MODULES, main
from datamixer.options import parse_mapping, parse_pairs, split_list

COMMANDS_DIR = Path(__file__).resolve().parents[1] / "datamixer" / "commands"


def test_help_lists_every_command_group():
    out = subprocess.run(
        [sys.executable, "-m", "datamixer", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in (
        "demo",
        "score",
        "corpus",
        "fasttext",
        "attention-influence",
        "regmix",
        "law",
        "proxy",
        "report",
        "export",
        "budget",
        "preselect",
        "priors",
        "runs",
    ):
        assert name in out, name


def test_every_module_with_commands_is_registered():
    """A module in datamixer/commands/ that defines `register` is listed in COMMAND_MODULES, so its commands
    are reachable (a forgotten entry would otherwise leave them silently missing)."""
    defines_register = {
        path.stem
        for path in COMMANDS_DIR.glob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "register"
            for node in ast.parse(path.read_text()).body
        )
    }
    assert defines_register and defines_register == set(COMMAND_MODULES)


def test_every_command_has_help(capsys):
    for args in (
        ["regmix", "optimize"],
        ["law", "fit"],
        ["proxy", "sweep"],
        ["attention-influence", "heads"],
        ["preselect", "label"],
        ["score"],
        ["demo"],
        ["report"],
        ["export"],
        ["corpus", "build"],
        ["priors"],
        ["runs", "import"],
    ):
        assert main([*args, "--help"]) == 0, args
        assert "Usage" in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    assert main(["corpus", "build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: datamixer corpus build: Missing option '--out'."]
    assert main(["law", "predict", "--law", "x.json", "--N", "abc", "--D", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--N" in err[0]


def test_bad_input_is_one_line_with_exit_code_1(tmp_path, capsys):
    assert (
        main(
            [
                "law",
                "fit",
                "--runs",
                str(tmp_path / "none.parquet"),
                "--law",
                "additive",
                "--out",
                str(tmp_path / "law.json"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FileNotFoundError:") and "none.parquet" in err[0]


def test_option_values_parse_one_way_for_every_command(tmp_path):
    assert split_list(["a, b", "c,,"]) == ["a", "b", "c"] and split_list("x") == ["x"]
    assert split_list(None) == []
    assert parse_pairs(["N=config.params", "loss=eval/loss"], "--column") == {
        "N": "config.params",
        "loss": "eval/loss",
    }
    inline = parse_mapping("web=0.5, code=0.2", "--caps")
    (tmp_path / "caps.yaml").write_text("caps:\n  web: 0.5\n  code: 0.2\n")  # `law optimize` style
    (tmp_path / "mix.json").write_text('{"weights": {"web": 0.5, "code": 0.2}}')  # a mixture file
    (tmp_path / "plain.yml").write_text("web: 0.5\ncode: 0.2\n")
    for name in ("caps.yaml", "mix.json", "plain.yml"):
        assert parse_mapping(str(tmp_path / name), "--caps") == inline == {"web": 0.5, "code": 0.2}
    with pytest.raises(ValueError, match="--caps: expected name=value"):
        parse_mapping("web", "--caps")
    with pytest.raises(ValueError, match="'code' is not a number"):
        parse_mapping("code=lots", "--floors")
    with pytest.raises(ValueError, match="--column: expected NAME=VALUE"):
        parse_pairs(["N"], "--column")


class _Config:
    """The parts of `pytest.Config` that `conftest.pytest_configure` reads and writes."""

    def __init__(self, markexpr: str, slow: bool) -> None:
        self.option = type("Option", (), {"markexpr": markexpr})()
        self.stash = pytest.Stash()
        self._slow = slow

    def getoption(self, name: str) -> bool:
        assert name == "slow"
        return self._slow


@pytest.mark.parametrize(
    ("ci", "markexpr", "slow", "expected"),
    [
        ("", "", False, "not slow"),  # a local `pytest -q`
        ("true", "", False, ""),  # CI runs everything
        ("", "", True, ""),  # --slow
        ("", "slow", False, "slow"),  # an explicit -m wins
    ],
)
def test_local_runs_leave_out_slow_tests_and_ci_runs_all(monkeypatch, ci, markexpr, slow, expected):
    from conftest import pytest_configure  # tests/conftest.py, which pytest has put on sys.path

    monkeypatch.setenv("CI", ci)
    config = _Config(markexpr, slow)
    pytest_configure(config)  # type: ignore[arg-type]
    assert config.option.markexpr == expected


def test_a_file_of_an_unquoted_glob_is_refused_before_the_job_not_dropped(tmp_path, capsys):
    """`--input data/*.jsonl` unquoted: the shell passes the second file as an extra argument, which Beam
    would discard with a warning, and the job would never read it."""
    files = [tmp_path / f"d-{i}.jsonl" for i in range(2)]
    for f in files:
        f.write_text('{"id": "a", "text": "some words"}\n')
    out = tmp_path / "out"
    args = ["score", "--input", str(files[0]), str(files[1]), "--domain", "d", "--output", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unexpected argument '{files[1]}'" in err[0] and "quote a glob" in err[0]
    assert not out.exists()
