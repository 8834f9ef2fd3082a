"""`redvillm-train`: not implemented yet (stage two lands in its own issue)."""

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def main() -> None:
    """Train the projector + temporal module on a token cache (not implemented yet)."""
    click.echo("redvillm-train: not yet implemented (stage two is a separate issue)", err=True)
    sys.exit(2)
