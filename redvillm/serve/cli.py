"""`redvillm-serve RUN`: a thin click command over ServeConfig and the starlette app."""

from __future__ import annotations

import ipaddress
import logging

import click
from rich.console import Console

from redvillm.cli import command, config_from, friendly_errors, options_from, quiet_libraries
from redvillm.extras import require
from redvillm.serve.config import ServeConfig



@command()
@options_from(ServeConfig, positional=("run_dir",))
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Serve the trained video LLM in RUN_DIR behind an OpenAI-compatible /v1/chat/completions."""
    require("starlette", "uvicorn", purpose="redvillm-serve")
    import uvicorn

    quiet_libraries()
    cfg = config_from(ctx, ServeConfig, config_file, **flags)
    from redvillm.answerer import VideoAnswerer
    from redvillm.serve.app import build_app

    console = Console(stderr=True)
    if not _is_loopback(cfg.host):
        console.print(f"[yellow]binding {cfg.host}: anyone who reaches port {cfg.port} can ask, make the server "
                      "read local videos and fetch URLs (see --no-local-files, --no-remote-urls)", highlight=False)
    with console.status(f"loading {cfg.run_dir}"):
        answerer = VideoAnswerer.load(cfg.run_dir, cfg.device, cfg.dtype, cfg.decode_workers, cfg.decode_timeout)
    logging.getLogger("redvillm.serve").setLevel(logging.INFO)
    console.print(f"serving {cfg.model_id} ({answerer.name}) at http://{cfg.host}:{cfg.port}/v1", highlight=False)
    with answerer:
        uvicorn.run(build_app(answerer, cfg), host=cfg.host, port=cfg.port, log_level="info")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    main()
