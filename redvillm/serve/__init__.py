"""``redvillm-serve RUN``: an OpenAI-compatible chat server for a trained video LLM.

    POST /v1/chat/completions   one user message: one video part + text (streaming or not)
    GET  /v1/models             the one model this server answers with

Layout: config (ServeConfig), protocol (request checks, response bodies, error bodies),
videos (a video_url -> a local file: path, file://, http(s) download, base64 data URL),
batcher (a thread collecting requests for a few milliseconds into one generate), app (the
starlette routes), cli (the console script). Only app and cli need the ``serve`` extra.
"""

from redvillm.serve.config import ServeConfig

__all__ = ["ServeConfig"]
