"""The CLI shell: every group listed, usage errors are one line with a non-zero exit code."""

import subprocess
import sys

from datamixer.cli import COMMAND_MODULES, main


def test_help_lists_every_command_group():
    out = subprocess.run([sys.executable, "-m", "datamixer", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("demo", "score", "corpus", "fasttext", "attention-influence", "regmix", "law", "proxy",
                 "report", "export", "budget", "preselect", "priors", "runs"):
        assert name in out, name
    assert len(COMMAND_MODULES) == 12


def test_every_command_has_help(capsys):
    for args in (["regmix", "optimize"], ["law", "fit"], ["proxy", "sweep"], ["attention-influence", "heads"],
                 ["preselect", "label"], ["score"], ["demo"], ["report"], ["export"], ["corpus", "build"],
                 ["priors"], ["runs", "import"]):
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
    assert main(["law", "fit", "--runs", str(tmp_path / "none.parquet"), "--law", "additive",
                 "--out", str(tmp_path / "law.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FileNotFoundError:") and "none.parquet" in err[0]
