"""Judge backends: any OpenAI-compatible chat-completions server, or a local transformers model.

Both answer ``complete(messages) -> str`` and ``describe() -> dict`` (name, model, parameters;
never a credential). See ``redvillm.evaluate.judge`` for the protocol they serve.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from typing import Protocol

from redvillm.errors import UserError

log = logging.getLogger(__name__)
Message = dict[str, str]

class JudgeUnavailable(UserError):
    """The judge could not be reached or refused the request (after bounded retries)."""


class JudgeBackend(Protocol):
    def complete(self, messages: list[Message]) -> str:
        """The judge's reply text to one chat request."""

    def describe(self) -> dict:
        """name, model, parameters (and volatile details); never a credential."""


def chat_completions_url(url: str) -> str:
    """``http://h:p``, ``.../v1`` or ``.../v1/chat/completions`` -> ``.../v1/chat/completions``.

    A bare host gets ``/v1``; any other path is taken as the API base as given.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"judge URL {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _public_url(url: str) -> str:
    """The URL without user:password or query string (either may carry a credential)."""
    parts = urllib.parse.urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


class OpenAICompatibleJudge:
    """Any server speaking OpenAI's /v1/chat/completions (OpenAI, vLLM, llama.cpp, ...).

    The API key is read from ``api_key_env`` at each request (local servers need none), sent
    as a Bearer header and nowhere else. ``retries`` extra attempts, with delays backoff * 2^k
    (capped by max_backoff, raised to a server's Retry-After), on HTTP 429/5xx, timeouts and
    connection errors; any other 4xx raises JudgeUnavailable at once.
    """

    name = "openai-compatible"

    def __init__(self, url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, seed: int | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0,
                 max_backoff: float = 60.0, sleep: Callable[[float], None] = time.sleep):
        if not model:
            raise UserError("the judge model must be pinned: pass its exact name (e.g. gpt-3.5-turbo-0125)")
        if retries < 0 or timeout <= 0:
            raise UserError("judge retries must be >= 0 and timeout > 0")
        self.endpoint = chat_completions_url(url)
        self.model, self.temperature, self.max_tokens, self.seed = model, temperature, max_tokens, seed
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self._api_key_env, self._sleep = api_key_env, sleep
        self.requests = 0  # HTTP requests sent, retries included
        self._count_lock = threading.Lock()
        self.observed_models: set[str] = set()  # what the server says answered (aliases resolve here)
        host = urllib.parse.urlsplit(self.endpoint).hostname
        proxies = {} if host in ("127.0.0.1", "localhost", "::1") else None  # never proxy loopback
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))

    def describe(self) -> dict:
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}
        return {"name": self.name, "model": self.model, "parameters": params,
                "endpoint": _public_url(self.endpoint),
                "client": {"timeout": self.timeout, "retries": self.retries, "backoff": self.backoff},
                "observed": {"models": sorted(self.observed_models)}}

    def complete(self, messages: list[Message]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        data = json.dumps(body).encode()
        last, retry_after = "no attempt", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                self._sleep(max(delay, min(retry_after, self.max_backoff)))
            status, payload, retry_after = self._post(data)
            if status == 200:
                reply = self._content(payload)
                if reply is not None:
                    return reply
                last = "a 200 response without choices[0].message.content"
            elif status is not None and status != 429 and status < 500:
                raise JudgeUnavailable(f"judge at {_public_url(self.endpoint)} refused the request: "
                                       f"HTTP {status} {self._excerpt(payload)}")
            else:
                last = f"HTTP {status} {self._excerpt(payload)}" if status else payload
        raise JudgeUnavailable(f"judge at {_public_url(self.endpoint)} gave no answer after "
                               f"{self.retries + 1} attempts (last: {last.strip()})")

    def _post(self, data: bytes) -> tuple[int | None, str, float]:
        """(status, body text, Retry-After seconds); status None for a transport failure."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self._api_key_env) if self._api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        with self._count_lock:
            self.requests += 1
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read().decode("utf-8", "replace"), 0.0
        except urllib.error.HTTPError as err:
            try:
                text = err.read().decode("utf-8", "replace")
            except (OSError, HTTPException):
                text = ""
            return err.code, text, _retry_after(err.headers.get("Retry-After") if err.headers else None)
        except (OSError, HTTPException) as err:  # URLError, timeouts, resets, IncompleteRead
            reason = getattr(err, "reason", err)
            return None, f"{type(reason).__name__}: {reason}", 0.0

    def _content(self, payload: str) -> str | None:
        try:
            response = json.loads(payload)
            content = response["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        if isinstance(response.get("model"), str):
            self.observed_models.add(response["model"])
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""  # null (refusal) -> unparseable

    def _excerpt(self, text: str) -> str:
        key = os.environ.get(self._api_key_env) if self._api_key_env else None
        text = " ".join(text.split())[:200]
        return text.replace(key, "***") if key else text


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: ignore, exponential backoff applies


class TransformersJudge:
    """A local causal LM judge (AutoModelForCausalLM + its chat template), greedy decoding."""

    name = "transformers"

    def __init__(self, model_id_or_path: str, device: str = "cpu", dtype: str = "auto",
                 max_new_tokens: int = 64, revision: str | None = None):
        self.model_id, self.device, self.dtype = str(model_id_or_path), device, dtype
        self.max_new_tokens, self.revision = max_new_tokens, revision
        self._model = self._tokenizer = None
        self._lock = threading.Lock()  # one generate at a time if judge_all runs workers

    def describe(self) -> dict:
        params = {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "dtype": self.dtype,
                  "revision": self.revision}
        out = {"name": self.name, "model": self.model_id, "parameters": params, "device": self.device}
        if self._model is not None:
            import transformers
            out["runtime"] = {"transformers": transformers.__version__,
                              "commit": getattr(self._model.config, "_commit_hash", None)}
        return out

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:  # trust_remote_code stays False: a judge never runs code from a model repo
            tokenizer = AutoTokenizer.from_pretrained(self.model_id, revision=self.revision)
            dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
            model = AutoModelForCausalLM.from_pretrained(self.model_id, revision=self.revision, dtype=dtype)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load judge model {self.model_id!r}: {str(err).splitlines()[0]}") from err
        if not tokenizer.chat_template:
            raise UserError(f"judge model {self.model_id!r} has no chat template; use an instruct/chat model")
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()

    def complete(self, messages: list[Message]) -> str:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            inputs = self._encode(messages).to(self.device)
            with torch.inference_mode():
                pad_id = self._tokenizer.pad_token_id
                out = self._model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                           temperature=None, top_p=None, top_k=None,
                                           pad_token_id=self._tokenizer.eos_token_id if pad_id is None else pad_id)
        return self._tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _encode(self, messages: list[Message]):
        from jinja2.exceptions import TemplateError

        kwargs = dict(add_generation_prompt=True, return_tensors="pt", return_dict=True)
        try:
            return self._tokenizer.apply_chat_template(messages, **kwargs)
        except TemplateError:  # templates without a system role: fold it into the user turn
            merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in messages)}]
            return self._tokenizer.apply_chat_template(merged, **kwargs)


