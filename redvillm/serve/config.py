"""ServeConfig: what `redvillm-serve` is started with (flags, or a JSON/TOML --config file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from redvillm.settings import setting


@dataclass
class ServeConfig:
    run_dir: str = setting(path=True)  # a redvillm-train output directory
    host: str = setting("127.0.0.1", "Address to bind; 0.0.0.0 lets other machines ask.")
    port: int = 8000
    model_name: str | None = setting(None, "Model id clients send (default: the run directory's name).")
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch: int = setting(8, "Requests answered by one generate.")
    batch_wait_ms: float = setting(10.0, "How long a request waits for others to batch with.")
    default_max_tokens: int = setting(256, "Answer length when a request sets none.")
    max_tokens: int = setting(1024, "The most max_tokens a request may ask for.")
    max_video_mb: float = setting(200.0, "Largest video accepted as a download or base64.")
    download_timeout: float = setting(60.0, "Seconds to download an http(s) video.")
    decode_workers: int = setting(2, "Video decoder processes.")
    decode_timeout: float = setting(120.0, "Seconds before a video that hangs the decoder is refused.")
    request_timeout: float = setting(600.0, "Seconds before a request gets a 504.")
    max_pending: int = setting(256, "Queued requests beyond this get a 429.")
    local_files: bool = setting(True, "Accept local paths and file:// URLs.")
    remote_urls: bool = setting(True, "Accept http(s) video URLs (downloaded).")

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
