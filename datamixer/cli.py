"""The `datamixer` command line: a thin shell over `pipeline`, `scorers` and `mixer`.

Each module in `datamixer.commands` registers its commands; heavy libraries (torch, Beam)
are imported inside the command functions so that `datamixer --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

COMMAND_MODULES = (
    "corpus",
    "score",
    "fasttext",
    "attention_influence",
    "regmix",
    "law",
    "proxy",
    "demo",
    "report",
    "export",
    "preselect",
    "swarm",
)

MAX_MESSAGE_CHARS = 2000  # an error quoting a huge input is cut, never expanded in full

app = typer.Typer(
    name="datamixer",
    help="Score and select pretraining documents, and choose domain mixtures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"datamixer.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input ends in one line on stderr and a non-zero exit code."""
    from datamixer.commands._common import quiet_library_warnings

    quiet_library_warnings()
    try:
        app(args=argv, standalone_mode=False, prog_name="datamixer")
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        return int(code or 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's contract is one line per failure
        if os.environ.get("DATAMIXER_DEBUG"):
            raise
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click / typer usage errors
            command = getattr(getattr(exc, "ctx", None), "command_path", "datamixer")
            print(f"error: {command}: {' '.join(exc.format_message().split())}", file=sys.stderr)
            return int(exc.exit_code)
        message = " ".join(str(exc)[:MAX_MESSAGE_CHARS].split()) or type(exc).__name__
        if len(str(exc)) > MAX_MESSAGE_CHARS:
            message += " ..."
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
