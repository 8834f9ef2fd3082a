"""The OpenAI chat-completions wire format: checking a request, building replies and errors.

A request holds exactly one user message whose content is a list of parts: one
``{"type": "video_url", "video_url": {"url": ...}}`` and one or more ``{"type": "text"}`` parts
(joined by a newline: the question). Anything this server cannot honour exactly (a second video,
images, several messages, n > 1, logprobs, tools, penalties) is refused with an error body, never
silently ignored. Greedy decoding unless the request sets temperature > 0 or top_p < 1.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redvillm.generation import Answer

MAX_STOPS = 16
# Fields whose meaning this server cannot honour: refused when set to anything but their default.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "tool_choice": (None, "none"),
               "functions": (None, []), "function_call": (None, "none"), "presence_penalty": (None, 0, 0.0),
               "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "audio": (None,),
               "modalities": (None, ["text"]), "response_format": (None, {"type": "text"}), "n": (None, 1)}


class ApiError(Exception):
    """An error reply: HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    question: str
    video_url: str
    video_param: str  # where the url sits in the request, for error messages
    max_tokens: int
    stop: tuple[str, ...]
    do_sample: bool
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool

    @property
    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one generate."""
        return (self.do_sample, self.temperature, self.top_p) if self.do_sample else (False,)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})", code="invalid_json") from None


def parse_chat(body: Any, model_id: str, default_max_tokens: int, max_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if body.get("model") != model_id:
        if not isinstance(body.get("model"), str):
            raise ApiError(400, "model is required: a string", param="model")
        raise ApiError(404, f"The model `{body['model']}` does not exist; this server answers with `{model_id}`",
                       param="model", code="model_not_found")
    _refuse_unsupported(body)
    question, url, param = _question_and_video(body.get("messages"))
    temperature, top_p = _number(body, "temperature", 0.0, 2.0), _number(body, "top_p", 0.0, 1.0)
    do_sample = (temperature is not None and temperature > 0) or (top_p is not None and top_p < 1)
    if do_sample and top_p == 0:
        raise ApiError(400, "top_p must be > 0 when sampling", param="top_p")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (stream and isinstance(options, dict)):
        raise ApiError(400, "stream_options is an object, and only allowed with stream: true", param="stream_options")
    return ChatRequest(question, url, param, _max_tokens(body, default_max_tokens, max_tokens), _stop(body),
                       do_sample, 1.0 if temperature is None or not do_sample else temperature,
                       1.0 if top_p is None else top_p, stream, bool((options or {}).get("include_usage")))


def _refuse_unsupported(body: dict) -> None:
    for name, defaults in UNSUPPORTED.items():
        if name in body and body[name] not in defaults:
            what = "n > 1 (one answer per request)" if name == "n" else name
            raise ApiError(400, f"{what} is not supported by this server", param=name, code="unsupported_parameter")


def _question_and_video(messages: Any) -> tuple[str, str, str]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise ApiError(400, "exactly one message, from the user, is supported (one video and its question; no "
                            "system prompt, no earlier turns)", param="messages")
    content = messages[0].get("content")
    if not isinstance(content, list):
        raise ApiError(400, "the message has no video: its content must be a list with one video_url part and "
                            "a text part", param="messages[0].content")
    texts, videos = [], []
    for i, part in enumerate(content):
        where = f"messages[0].content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url":
            videos.append((_video_url(part, where), f"{where}.video_url.url"))
        else:
            raise ApiError(400, f"unsupported content part {kind!r}: only 'video_url' and 'text' parts are "
                                "accepted", param=f"{where}.type", code="unsupported_content")
    if len(videos) != 1:
        raise ApiError(400, f"the message has {len(videos)} videos; exactly one video_url part is supported",
                       param="messages[0].content")
    question = "\n".join(t.strip() for t in texts if t.strip())
    if not question:
        raise ApiError(400, "the message has no question: add a non-empty text part", param="messages[0].content")
    return question, *videos[0]


def _video_url(part: dict, where: str) -> str:
    video = part.get("video_url")
    url = video.get("url") if isinstance(video, dict) else video
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "video_url needs a url: a local path, file://, http(s):// or data:video/...;base64,",
                       param=f"{where}.video_url.url")
    return url.strip()


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false", param=name)
    return value


def _max_tokens(body: dict, default: int, most: int) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"{name} must be a whole number >= 1", param=name)
    if value > most:
        raise ApiError(400, f"{name}={value} exceeds this server's limit of {most} (redvillm-serve --max-tokens)",
                       param=name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", param="stop")
    return tuple(stops)


class Reply:
    """Bodies of one completion: the whole of it, or its stream of chunks."""

    def __init__(self, model_id: str):
        self.id, self.model, self.created = f"chatcmpl-{uuid.uuid4().hex}", model_id, int(time.time())

    def completion(self, answer: Answer) -> dict:
        message = {"role": "assistant", "content": answer.text}
        return self._body("chat.completion", [{"index": 0, "message": message, "finish_reason": answer.finish_reason,
                                                "logprobs": None}], usage=_usage(answer))

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _sse(self._body("chat.completion.chunk", [choice]))

    def usage_chunk(self, answer: Answer) -> str:
        return _sse(self._body("chat.completion.chunk", [], usage=_usage(answer)))

    def _body(self, kind: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}


def error_event(err: ApiError) -> str:
    """An error after a stream has begun (the status line is already sent)."""
    return _sse(err.body())


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
