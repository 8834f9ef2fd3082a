"""Concurrent requests answered together: one thread collects them for a few milliseconds
(up to a batch size), decodes their videos in parallel and answers those with the same sampling
settings in one generate. Each request hears back through its own event queue:

    ("start",)            its video is decoded, generation begins
    ("text", str)         the next piece of its answer
    ("done", Answer)      the answer, finish reason and token counts
    ("error", ApiError)   its video cannot be read, or generation failed

One bad video fails only its own request; an unexpected error fails the batch it hit, never
the thread, so the server keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from redvillm.errors import UserError
from redvillm.serve.protocol import ApiError, ChatRequest
from redvillm.serve.videos import FetchedVideo

log = logging.getLogger("redvillm.serve")


@dataclass
class Job:
    request: ChatRequest
    video: FetchedVideo
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the client went away: skip it if it has not started

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is stopping
            pass


class Batcher:
    def __init__(self, answerer, max_batch: int = 8, wait_ms: float = 10.0, max_pending: int = 256):
        self.answerer, self.max_batch, self.wait = answerer, max_batch, wait_ms / 1000
        self.max_pending = max_pending
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="redvillm-batcher", daemon=True)
        self.batches: list[int] = []  # sizes of the generates run, for tests and benchmarks

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        if self._queue.qsize() >= self.max_pending:
            raise ApiError(429, f"the server has {self.max_pending} requests waiting; retry later",
                           type="rate_limit_error", code="server_busy")
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.request.sampling_key, []).append(job)
            for group in groups.values():
                try:
                    self._answer(group)
                except Exception as err:  # noqa: BLE001 - any failure fails this batch, not the server
                    log.exception("generation failed for a batch of %d", len(group))
                    for job in group:
                        job.emit("error", ApiError(500, f"generation failed: {type(err).__name__}: {err}",
                                                   type="server_error"))
                finally:
                    for job in group:
                        job.video.discard()

    def _collect(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs, deadline = [first], time.monotonic() + self.wait
        while len(jobs) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        live = [job for job in jobs if not job.cancelled]
        for job in jobs:
            if job.cancelled:
                job.video.discard()
        return live

    def _answer(self, jobs: list[Job]) -> None:
        ready = []
        videos = self.answerer.tokens_each([job.video.path for job in jobs],
                                           remember=[not job.video.temporary for job in jobs])
        for job, tokens in zip(jobs, videos):
            if isinstance(tokens, UserError):
                message = str(tokens).replace(str(job.video.path), job.video.label, 1)
                job.emit("error", ApiError(422, message, param=job.request.video_param, code="video_unreadable"))
            else:
                ready.append((job, tokens))
                job.emit("start")
        if not ready:
            return
        requests = [job.request for job, _ in ready]
        self.batches.append(len(ready))
        answers = self.answerer.generate(
            [(tokens, r.question) for (_, tokens), r in zip(ready, requests)],
            max_new_tokens=[r.max_tokens for r in requests], stop=[r.stop for r in requests],
            do_sample=requests[0].do_sample, temperature=requests[0].temperature, top_p=requests[0].top_p,
            batch_size=len(ready), on_text=lambda i, text: ready[i][0].emit("text", text),
            cancelled=lambda i: ready[i][0].cancelled)
        for (job, _), answer in zip(ready, answers):
            job.emit("done", answer)
