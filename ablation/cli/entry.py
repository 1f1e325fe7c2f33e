"""`ablate`'s entry point: the command tree with every command registered, and how its errors exit."""

from __future__ import annotations

import sys

import typer

from ablation.cli.apps import app
from ablation.errors import EXIT_USER_ERROR, UserError
from ablation.process import configure_process

# importing a command group registers its commands, in this order: `ablate --help` lists them so
# isort: off
from ablation.cli import train, study, results, generators, ui, data  # noqa: E402, F401
# isort: on


def main() -> None:
    configure_process()  # this process is ablate's own; library imports stay side-effect free
    try:
        # without standalone mode click *returns* the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False, prog_name="ablate")  # also when run as python -m ablation.cli
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except _usage_errors() as exc:  # a bad option, argument or command: a user error too
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `ablate` or `ablate data`: the help is the answer
            exc.show()
        else:
            print(_usage_line(exc), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The base classes of the parser's usage errors: typer >= 0.29 raises those of its own vendored click
    (typer.TyperException), older typer those of click itself (click.ClickException)."""
    bases: list[type[Exception]] = []
    vendored = getattr(typer, "TyperException", None)
    if isinstance(vendored, type) and issubclass(vendored, Exception):
        bases.append(vendored)
    try:
        import click
    except ImportError:  # typer >= 0.29 does not need click, and nothing else may have installed it
        pass
    else:
        bases.append(click.ClickException)
    return tuple(bases)


def _usage_line(exc: Exception) -> str:
    """`error: No such option: --bogus (ablate run --help)`: the parser's message on one line, and where the
    command's help is (the parser's own display is the usage block, a hint and the message on three lines)."""
    format_message = getattr(exc, "format_message", None)
    text = " ".join((format_message() if callable(format_message) else str(exc)).split())
    context = getattr(exc, "ctx", None)
    command = getattr(context, "command_path", None)
    return f"error: {text} ({command} --help)" if command else f"error: {text}"
