"""ServeConfig: what `redvillm-serve` is started with (flags, or a JSON/TOML --config file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class ServeConfig:
    run_dir: str  # a redvillm-train output directory
    host: str = "127.0.0.1"  # loopback: only this machine can ask (0.0.0.0 opens it to the network)
    port: int = 8000
    model_name: str | None = None  # the id in /v1/models and requests (default: the run directory's name)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch: int = 8  # requests answered by one generate
    batch_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    default_max_tokens: int = 256  # when a request gives neither max_tokens nor max_completion_tokens
    max_tokens: int = 1024  # the most a request may ask for
    max_video_mb: float = 200.0  # downloads and base64 videos larger than this are refused
    download_timeout: float = 60.0  # seconds for an http(s) video, all of it
    decode_workers: int = 2
    decode_timeout: float = 120.0  # a video that takes longer to decode is refused (worker killed)
    request_timeout: float = 600.0  # a request not answered by then gets a 504
    max_pending: int = 256  # requests queued beyond this get a 429
    local_files: bool = True  # accept local paths and file:// URLs as videos
    remote_urls: bool = True  # accept http(s) URLs (the server downloads them)

    def __post_init__(self):
        if min(self.max_batch, self.default_max_tokens, self.max_tokens, self.decode_workers, self.max_pending) < 1:
            raise ValueError("max_batch, default_max_tokens, max_tokens, decode_workers and max_pending must be >= 1")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens ({self.max_tokens})")
        if min(self.max_video_mb, self.download_timeout, self.decode_timeout, self.request_timeout) <= 0 or \
                self.batch_wait_ms < 0:
            raise ValueError("sizes and timeouts must be > 0 (batch_wait_ms >= 0)")

    @property
    def model_id(self) -> str:
        return self.model_name or Path(self.run_dir).resolve().name

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * (1 << 20))
