"""`redvillm-eval`: not implemented yet (evaluation lands in its own issue)."""

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def main() -> None:
    """Answer and judge video questions (not implemented yet)."""
    click.echo("redvillm-eval: not yet implemented (evaluation is a separate issue)", err=True)
    sys.exit(2)
