"""`redvillm-serve RUN`: a thin click command over ServeConfig and the starlette app."""

from __future__ import annotations

import ipaddress
import logging

import click
from rich.console import Console

from redvillm.cli import config_from, friendly_errors, quiet_libraries
from redvillm.errors import UserError
from redvillm.serve.config import ServeConfig

SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.command(context_settings=SETTINGS)
@click.argument("run_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 lets other machines ask.")
@click.option("--port", default=8000)
@click.option("--model-name", default=None, help="Model id clients send (default: the run directory's name).")
@click.option("--device", default="auto")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto")
@click.option("--max-batch", default=8, help="Requests answered by one generate.")
@click.option("--batch-wait-ms", default=10.0, help="How long a request waits for others to batch with.")
@click.option("--default-max-tokens", default=256, help="Answer length when a request sets none.")
@click.option("--max-tokens", default=1024, help="The most max_tokens a request may ask for.")
@click.option("--max-video-mb", default=200.0, help="Largest video accepted as a download or base64.")
@click.option("--download-timeout", default=60.0, help="Seconds to download an http(s) video.")
@click.option("--decode-workers", default=2, help="Video decoder processes.")
@click.option("--decode-timeout", default=120.0, help="Seconds before a video that hangs the decoder is refused.")
@click.option("--request-timeout", default=600.0, help="Seconds before a request gets a 504.")
@click.option("--max-pending", default=256, help="Queued requests beyond this get a 429.")
@click.option("--local-files/--no-local-files", default=True, help="Accept local paths and file:// URLs.")
@click.option("--remote-urls/--no-remote-urls", default=True, help="Accept http(s) video URLs (downloaded).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Serve the trained video LLM in RUN_DIR behind an OpenAI-compatible /v1/chat/completions."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("redvillm-serve needs the serve extra: pip install 'redvillm[serve]'") from None
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
