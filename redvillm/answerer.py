"""``VideoAnswerer``: a trained run loaded once, answering questions about videos in batches.

    from redvillm import VideoAnswerer

    with VideoAnswerer.load("runs/llava-7b") as answerer:
        answerer.answer([("clip.mp4", "What happens first?"), ("clip.mp4", "视频里有几个人？")])

A video given as a path goes through stage one's own code: decoded in a worker process (a file
that hangs is timed out), sampled, resized and encoded exactly as the run's cache was (frame
count, sampling rule, short-video policy and frame size are read from the run), then pooled by
the family, frame batch by frame batch (redvillm.pooled_sets: the same values a raw or a pooled
cache of the video gives). A video may also be given as its pooled tokens, e.g. from a cache of
either store::

    temporal, spatial = answerer.cached(open_cache("out.h5"), "video_id")

Shape letters: T frames, N patches, D vision width.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from redvillm import distributed
from redvillm.errors import UserError
from redvillm.generation import Answer, OnText, generate_rows, row_stops

ENCODE_BATCH = 32  # frames per vision-encoder forward, as redvillm-extract's default
Tokens = tuple[torch.Tensor, torch.Tensor]  # pooled (temporal (T, D'), spatial (N', D')) float32
Video = "str | os.PathLike | Tokens"


class VideoAnswerer:
    """Answers (video, question) pairs with one trained run. Safe to share between threads:
    calls take turns. ``close()`` (or ``with``) stops the decoder processes."""

    def __init__(self, model, family, decode_workers: int = 1, decode_timeout: float = 120.0,
                 remember_videos: int = 32):
        self.model, self.family = model, family
        self.decode_workers, self.decode_timeout = decode_workers, decode_timeout
        self.remember_videos = remember_videos
        self._recent: OrderedDict[tuple, Tokens] = OrderedDict()  # file identity -> pooled tokens
        self._encoder = None
        self._pool = None
        self._lock = threading.RLock()

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "auto",
             decode_workers: int = 1, decode_timeout: float = 120.0, remember_videos: int = 32) -> VideoAnswerer:
        """Load a `redvillm-train` output directory; the frame encoder loads on the first video.
        The pooled tokens of the last `remember_videos` files are kept, so more questions about
        the same file skip decoding (a file whose size or modification time changed is read anew)."""
        from redvillm.families.registry import family_for_cache
        from redvillm.model_io import load_model

        if decode_workers < 1 or decode_timeout <= 0:
            raise UserError(f"decode_workers must be >= 1 and decode_timeout > 0 (got {decode_workers}, "
                            f"{decode_timeout})")
        torch_device = distributed.resolve_device(str(device), distributed.DistInfo())
        torch_dtype = dtype if isinstance(dtype, torch.dtype) else distributed.resolve_dtype(dtype, torch_device)
        model = load_model(run_dir, torch_device, torch_dtype)
        family = family_for_cache(model.config.model, model.config.revision, model.config.extra.get("cache", {}))
        return cls(model, family, decode_workers, decode_timeout, remember_videos)

    @property
    def name(self) -> str:
        """The run's base model with its pooling, e.g. for logs."""
        return f"{self.model.config.model} ({self.model.config.pooling})"

    def tokens(self, video: str | os.PathLike) -> Tokens:
        """One video file -> its pooled (temporal, spatial) tokens; UserError if it cannot be read."""
        result = self.tokens_each([video])[0]
        if isinstance(result, UserError):
            raise result
        return result

    def tokens_each(self, videos: Sequence[str | os.PathLike],
                    remember: bool | Sequence[bool] = True) -> list[Tokens | UserError]:
        """Pooled tokens per video file, or the UserError saying why that file cannot be read
        (one bad file does not cost the others their answers). Decoding runs in parallel; a file
        seen recently is not decoded again unless `remember` is False for it (e.g. a temporary file)."""
        from redvillm.extract.decode import DecodeJob

        flags = [remember] * len(videos) if isinstance(remember, bool) else list(remember)
        with self._lock:
            keys = [_file_key(v) if keep and self.remember_videos > 0 else None for v, keep in zip(videos, flags)]
            out: list[Tokens | UserError | None] = [self._recall(key) for key in keys]
            first = {}  # one decode per file, however often it is asked about
            for i, key in enumerate(keys):
                if out[i] is None:
                    first.setdefault(key if key is not None else ("unkeyed", i), i)
            jobs = [DecodeJob(str(i), Path(videos[i])) for i in first.values()]
            for result in self._decode_pool().imap(jobs) if jobs else ():
                i = int(result.job.video_id)
                if result.error is not None:
                    out[i] = UserError(f"{result.job.path}: cannot read this video ({result.error})")
                else:
                    out[i] = self._encode(result.frames, resize=not result.resized)
                    self._remember(keys[i], out[i])
            return [out[i] if out[i] is not None else out[first[keys[i]]] for i in range(len(keys))]

    def answer(self, items: Sequence[tuple[Video, str]], *, max_new_tokens: int | Sequence[int] = 64,
               stop: Sequence[str] | Sequence[Sequence[str]] = (), do_sample: bool = False, temperature: float = 1.0,
               top_p: float = 1.0, batch_size: int = 8, on_text: OnText | None = None) -> list[str]:
        """Answers in the order of `items`, each (video path or pooled tokens, question).

        Greedy unless `do_sample`. `max_new_tokens`: one limit, or one per item. `stop`: strings
        for every item, or one list per item; an answer ends before its first stop string (its
        row stops generating there). `on_text(i, text)` receives item i's answer piece by piece
        as it is generated; the pieces add up to the answer."""
        return [a.text for a in self.generate(items, max_new_tokens=max_new_tokens, stop=stop, do_sample=do_sample,
                                              temperature=temperature, top_p=top_p, batch_size=batch_size,
                                              on_text=on_text)]

    def generate(self, items: Sequence[tuple[Video, str]], *, max_new_tokens: int | Sequence[int] = 64,
                 stop: Sequence[str] | Sequence[Sequence[str]] = (), do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8,
                 on_text: OnText | None = None, cancelled: Callable[[int], bool] | None = None) -> list[Answer]:
        """`answer` with each answer's finish reason ("stop" or "length") and token counts;
        `cancelled(i)` returning True ends item i's answer at its next token."""
        limits = [max_new_tokens] * len(items) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        _check_request(items, limits, batch_size, do_sample, temperature, top_p)
        try:
            stops = row_stops(stop, len(items))
        except ValueError as err:
            raise UserError(str(err)) from None
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else {}
        with self._lock:
            videos = self._videos([video for video, _ in items])
            answers: list[Answer] = []
            for start in range(0, len(items), batch_size):
                end = min(start + batch_size, len(items))
                prompts = [(items[i][1], *videos[i]) for i in range(start, end)]
                rows = None if on_text is None else (lambda row, text, at=start: on_text(at + row, text))
                gone = None if cancelled is None else (lambda row, at=start: cancelled(at + row))
                answers += generate_rows(self.model, prompts, limits[start:end], sampling, stops[start:end], rows,
                                         gone)
            return answers

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> VideoAnswerer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _videos(self, videos: Sequence[Video]) -> list[Tokens]:
        paths = {i: v for i, v in enumerate(videos) if isinstance(v, (str, os.PathLike))}
        decoded = dict(zip(paths, self.tokens_each(list(paths.values())))) if paths else {}
        out = []
        for i, video in enumerate(videos):
            tokens = decoded[i] if i in paths else _as_tokens(video, i)
            if isinstance(tokens, UserError):
                raise tokens
            out.append(tokens)
        return out

    def _recall(self, key) -> Tokens | None:
        if key is None or key not in self._recent:
            return None
        self._recent.move_to_end(key)
        return self._recent[key]

    def _remember(self, key, tokens: Tokens) -> None:
        if key is not None:
            self._recent[key] = tokens
            while len(self._recent) > self.remember_videos:
                self._recent.popitem(last=False)

    def _encode(self, frames, resize: bool) -> Tokens:
        from redvillm.extract.pipeline import encode_pooled

        if self._encoder is None:
            self._encoder = self.family.load_frame_encoder(self.model.device, self.model.dtype)
        pooled = encode_pooled(self._encoder, torch.from_numpy(frames), ENCODE_BATCH, self.model.device,
                               self.model.dtype, self.family.frame_preprocess(), self.family.pool,
                               resize=resize)
        return torch.from_numpy(pooled.temporal).float(), torch.from_numpy(pooled.spatial).float()

    def cached(self, cache, video_id: str) -> Tokens:
        """A cached video's pooled tokens (a raw or a pooled cache, redvillm.cache), to answer about."""
        from redvillm.pooled_sets import cached_tokens

        return cached_tokens(cache, self.family.pool, video_id)

    def _decode_pool(self):
        from redvillm.extract.decode import DecodePool, DecodeSettings, resize_in_workers

        if self._pool is None:
            config = self.model.config
            cache = config.extra.get("cache", {})
            settings = DecodeSettings(config.num_frames, cache.get("sampling_rule", "uniform"),
                                      cache.get("short_videos", "repeat"), self.family.frame_preprocess(),
                                      resize=resize_in_workers(self.model.device))
            self._pool = DecodePool(settings, num_workers=self.decode_workers, timeout=self.decode_timeout)
        return self._pool


def _check_request(items, limits: list[int], batch_size: int, do_sample: bool, temperature: float,
                   top_p: float) -> None:
    if len(limits) != len(items):
        raise UserError(f"max_new_tokens: {len(limits)} limits for {len(items)} questions")
    if any(not isinstance(n, int) or n < 1 for n in limits) or batch_size < 1:
        raise UserError("max_new_tokens and batch_size must be whole numbers >= 1")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise UserError(f"temperature must be > 0 and top_p in (0, 1] (got {temperature}, {top_p})")
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise UserError(f"item {i}: expected (video, question), got {type(item).__name__}")
        if not isinstance(item[1], str) or not item[1].strip():
            raise UserError(f"item {i}: the question is empty; ask something about the video")


def _file_key(video) -> tuple | None:
    """What identifies a file's content cheaply: its real path, size and modification time."""
    try:
        path = Path(video).resolve()
        stat = path.stat()
    except (OSError, RuntimeError):
        return None  # the decoder will say what is wrong with it
    return str(path), stat.st_size, stat.st_mtime_ns


def _as_tokens(video, i: int) -> Tokens:
    if not (isinstance(video, (tuple, list)) and len(video) == 2 and all(torch.is_tensor(t) for t in video)):
        raise UserError(f"item {i}: a video is a file path or a (temporal, spatial) pair of pooled token "
                        f"tensors, got {type(video).__name__}")
    temporal, spatial = video
    if temporal.ndim != 2 or spatial.ndim != 2 or temporal.shape[-1] != spatial.shape[-1]:
        raise UserError(f"item {i}: pooled tokens must be temporal (T, D) and spatial (N, D), got "
                        f"{tuple(temporal.shape)} and {tuple(spatial.shape)}")
    return temporal, spatial
