"""`ablate` command line, a module per command group (apps: the tree and shared options; entry: main; train; study;
results; generators; ui; data). The only package that imports typer; errors a user can fix exit with code 2."""

from ablation.cli.entry import app, main

__all__ = ["app", "main"]
