"""The docs stay true to the tree: README's quickstart is what `.ci/run` runs, and every file path and
dotted Python name quoted in the docs exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("mixer", "pipeline", "scorers", "datamixer")
PATH = re.compile(r"`((?:mixer|pipeline|scorers|datamixer|bench|tests|examples)/[\w./-]*\w)`")
NAME = re.compile(r"`(?:from )?((?:mixer|pipeline|scorers)(?:\.\w+)+)")


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_readme_quickstart_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart") :]
    install, tests = _code_blocks(quickstart, "bash")[:2]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install.splitlines()[0] == " && ".join(line for line in ci if line.startswith("pip install"))
    assert tests.strip() in ci and ci[-1] == tests.strip()  # the tests run last, after the checks


def _quoted(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return sorted({(doc.name, m) for doc in DOCS for m in pattern.findall(doc.read_text())})


@pytest.mark.parametrize(("doc", "path"), _quoted(PATH))
def test_quoted_paths_exist(doc, path):
    assert (ROOT / path).exists() or list(ROOT.glob(path)), f"{doc} names {path}, which is not in the tree"


def _resolve(name: str) -> object:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attr in parts[end:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize(("doc", "name"), _quoted(NAME))
def test_quoted_python_names_exist(doc, name):
    try:
        _resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{doc} names {name}: {exc}")
