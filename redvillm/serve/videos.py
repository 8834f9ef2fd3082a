"""A request's video_url -> a local file the decoder can open.

Accepted: a local path or a file:// URL (when local files are allowed), an http(s) URL
(downloaded to a temporary file, refused past a size cap or a time limit), and a base64 data
URL (``data:video/mp4;base64,...``). Temporary files live in one private directory that the
server removes when it stops.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from redvillm.serve.protocol import ApiError

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                      re.IGNORECASE)
CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchedVideo:
    path: Path
    label: str  # what error messages call it: the path or URL as given (data URLs shortened)
    temporary: bool  # delete after use

    def discard(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


class VideoFetcher:
    def __init__(self, max_bytes: int, timeout: float, local_files: bool = True, remote_urls: bool = True):
        self.max_bytes, self.timeout = max_bytes, timeout
        self.local_files, self.remote_urls = local_files, remote_urls
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="redvillm-serve-"))

    def fetch(self, url: str, param: str) -> FetchedVideo:
        """The video behind `url` as a file; ApiError (400, 413 or 422) when it cannot be had."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if url[:5].lower() == "data:":
            return self._from_data_url(url, param)
        if scheme in ("http", "https"):
            if not self.remote_urls:
                raise ApiError(400, "this server does not fetch http(s) URLs (started with --no-remote-urls); "
                                    "send the video as a base64 data URL", param=param)
            return self._download(url, param)
        if scheme == "file" or scheme == "" or re.match(r"^[a-zA-Z]$", scheme):  # C:\... on Windows
            return self._local(url, scheme, param)
        raise ApiError(400, f"unsupported video URL scheme {scheme!r}: use a local path, file://, http(s):// or a "
                            "base64 data URL", param=param)

    def close(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _local(self, url: str, scheme: str, param: str) -> FetchedVideo:
        if not self.local_files:
            raise ApiError(400, "this server does not read local files (started with --no-local-files); send the "
                                "video as a base64 data URL", param=param)
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)) if scheme == "file" else Path(url)
        if not path.is_file():
            raise ApiError(422, f"{url}: no such video file on the server", param=param, code="video_not_found")
        return FetchedVideo(path, url, temporary=False)

    def _from_data_url(self, url: str, param: str) -> FetchedVideo:
        match = DATA_URL.match(url)
        if match is None or not match["b64"]:
            raise ApiError(400, "a data URL video must be base64: data:video/mp4;base64,...", param=param)
        payload = url[match.end():]
        if len(payload) * 3 // 4 > self.max_bytes:
            raise self._too_large("the base64 video", param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "the data URL's base64 payload does not decode", param=param) from None
        subtype = (match["mime"] or "video/mp4").split("/")[-1]
        path = self._new_file(re.sub(r"[^\w]", "", subtype) or "mp4")
        path.write_bytes(data)
        return FetchedVideo(path, f"data:{match['mime'] or ''};base64,... ({len(data)} bytes)", temporary=True)

    def _download(self, url: str, param: str) -> FetchedVideo:
        path = self._new_file(Path(urllib.parse.urlsplit(url).path).suffix.lstrip(".") or "mp4")
        deadline = time.monotonic() + self.timeout
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "redvillm-serve"})
            with urllib.request.urlopen(request, timeout=self.timeout) as response, open(path, "wb") as out:
                if int(response.headers.get("Content-Length") or 0) > self.max_bytes:
                    raise self._too_large(url, param)
                size = 0
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large(url, param)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not complete after {self.timeout:g}s")
                    out.write(chunk)
        except ApiError:
            path.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, ValueError) as err:
            path.unlink(missing_ok=True)
            reason = err.reason if isinstance(err, urllib.error.URLError) and not isinstance(
                err, urllib.error.HTTPError) else err
            raise ApiError(422, f"{url}: cannot download the video ({reason})", param=param,
                           code="video_download_failed") from None
        return FetchedVideo(path, url, temporary=True)

    def _new_file(self, suffix: str) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.{suffix[:8]}"

    def _too_large(self, what: str, param: str) -> ApiError:
        limit = self.max_bytes / (1 << 20)
        return ApiError(413, f"{what}: the video is larger than this server's limit of {limit:g} MB "
                             "(redvillm-serve --max-video-mb)", param=param, code="video_too_large")
