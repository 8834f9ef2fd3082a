"""The starlette app: routes, streaming, and OpenAI-style error bodies for every failure.

starlette + uvicorn (the ``serve`` extra): an HTTP/1.1 server with keep-alive (the openai client
pools connections), chunked server-sent events and client-disconnect detection, which the
standard library's http.server does not give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from redvillm.serve.batcher import Batcher, Job
from redvillm.serve.config import ServeConfig
from redvillm.serve.protocol import ApiError, Reply, error_event, parse_chat, parse_json
from redvillm.serve.videos import VideoFetcher

log = logging.getLogger("redvillm.serve")


def build_app(answerer, cfg: ServeConfig) -> Starlette:
    """The server for one loaded VideoAnswerer; the batching thread runs while the app does."""
    batcher = Batcher(answerer, cfg.max_batch, cfg.batch_wait_ms, cfg.max_pending)
    fetcher = VideoFetcher(cfg.max_video_bytes, cfg.download_timeout, cfg.local_files, cfg.remote_urls)
    body_limit = cfg.max_video_bytes * 4 // 3 + (1 << 20)  # a base64 video at the cap, and the rest

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)
            fetcher.close()

    async def chat(request: Request):
        try:
            parsed = parse_chat(parse_json(await _body(request, body_limit)), cfg.model_id, cfg.default_max_tokens,
                                cfg.max_tokens)
            video = await run_in_threadpool(fetcher.fetch, parsed.video_url, parsed.video_param)
        except ApiError as err:
            return error_response(err)
        except ClientDisconnect:
            return error_response(ApiError(400, "the client went away before its request arrived"))
        job = Job(parsed, video, asyncio.get_running_loop())
        try:
            batcher.submit(job)
        except ApiError as err:
            video.discard()
            return error_response(err)
        first = await _next(job, cfg.request_timeout)
        if first[0] == "error":
            return error_response(first[1])
        if parsed.stream:
            return StreamingResponse(_stream(job, cfg), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        while (event := await _next(job, cfg.request_timeout))[0] == "text":
            pass
        if event[0] == "error":
            return error_response(event[1])
        return JSONResponse(Reply(cfg.model_id).completion(event[1]))

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [_model_card(cfg)]})

    async def model(request: Request):
        if request.path_params["name"] != cfg.model_id:
            return error_response(ApiError(404, f"The model `{request.path_params['name']}` does not exist",
                                           param="model", code="model_not_found"))
        return JSONResponse(_model_card(cfg))

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": cfg.model_id})

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models),
              Route("/v1/models/{name:path}", model), Route("/health", health)]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.batcher = batcher
    return app


async def _body(request: Request, limit: int) -> bytes:
    """The request body; past `limit` bytes a 413, after reading on (up to a bound) so that the
    client, still sending, gets to read the error instead of a broken connection."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 8 * limit:
            break
    if size > limit:
        raise ApiError(413, f"the request body is larger than this server accepts ({limit} bytes; "
                            "redvillm-serve --max-video-mb)", code="request_too_large")
    return b"".join(chunks)


async def _stream(job: Job, cfg: ServeConfig) -> AsyncIterator[str]:
    """Deltas as the batch decodes them, then the finish reason, usage if asked, [DONE]."""
    reply = Reply(cfg.model_id)
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            kind, *rest = await _next(job, cfg.request_timeout)
            if kind == "text":
                yield reply.chunk({"content": rest[0]})
            elif kind == "done":
                yield reply.chunk({}, rest[0].finish_reason)
                if job.request.include_usage:
                    yield reply.usage_chunk(rest[0])
                break
            elif kind == "error":
                yield error_event(rest[0])
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True


async def _next(job: Job, timeout: float) -> tuple:
    try:
        return await asyncio.wait_for(job.events.get(), timeout)
    except asyncio.TimeoutError:
        job.cancelled = True
        return ("error", ApiError(504, f"no answer within {timeout:g}s (redvillm-serve --request-timeout)",
                                  type="server_error", code="timeout"))


def _model_card(cfg: ServeConfig) -> dict:
    return {"id": cfg.model_id, "object": "model", "created": 0, "owned_by": "redvillm"}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind))


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", "server_error"))
