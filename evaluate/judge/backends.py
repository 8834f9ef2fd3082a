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
    def complete(self, messages: list[Message], deadline: float | None = None) -> str:
        """The judge's reply text to one chat request, by ``deadline`` (time.monotonic()) if given."""

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


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the next hop could be another host, and the key would go there."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = _public_url(urllib.parse.urljoin(req.full_url, newurl))
        raise JudgeUnavailable(f"judge at {_public_url(req.full_url)} answered HTTP {code}, a redirect to {target}: "
                               "not followed (the API key is sent only to --judge-url's host); "
                               "give the final URL as --judge-url")


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class OpenAICompatibleJudge:
    """Any server speaking OpenAI's /v1/chat/completions (OpenAI, vLLM, llama.cpp, ...).

    The API key is read from ``api_key_env`` at each request (local servers need none) and sent
    as a Bearer header to the ``url``'s host only: redirects are never followed. A reply or an
    error text that contains the key has it replaced by ``***`` before anything sees it, so
    it reaches no cache, verdict, result or log. A key sent over plain http to a non-loopback
    host is warned about once.

    ``parameters`` are the request's keywords besides model and messages (default: temperature
    0, max_tokens, and seed when given). ``retries`` extra attempts, with delays backoff * 2^k
    (capped by max_backoff, raised to a server's Retry-After), on HTTP 429/5xx, timeouts,
    connection errors and 200 bodies that are not a chat completion; any other 4xx raises
    JudgeUnavailable at once. ``timeout`` bounds each socket wait; ``complete(deadline=)``
    bounds the whole call, retries and waits included.
    """

    name = "openai-compatible"

    def __init__(self, url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, seed: int | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0,
                 max_backoff: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 parameters: dict | None = None):
        if not model:
            raise UserError("the judge model must be pinned: pass its exact name (e.g. gpt-3.5-turbo-0125)")
        if retries < 0 or timeout <= 0:
            raise UserError("judge retries must be >= 0 and timeout > 0")
        self.endpoint = chat_completions_url(url)
        if parameters is None:
            parameters = {"temperature": temperature, "max_tokens": max_tokens}
            if seed is not None:
                parameters["seed"] = seed
        self.model, self.parameters = model, dict(parameters)
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self._api_key_env, self._sleep = api_key_env, sleep
        self.requests = 0  # HTTP requests sent, retries included
        self._count_lock = threading.Lock()
        self._warned_plain_http = False
        self.observed_models: set[str] = set()  # what the server says answered (aliases resolve here)
        host = urllib.parse.urlsplit(self.endpoint).hostname
        proxies = {} if host in _LOOPBACK else None  # never proxy loopback
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _RefuseRedirects())

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "parameters": dict(self.parameters),
                "endpoint": _public_url(self.endpoint),
                "client": {"timeout": self.timeout, "retries": self.retries, "backoff": self.backoff},
                "observed": {"models": sorted(self.observed_models)}}

    def complete(self, messages: list[Message], deadline: float | None = None) -> str:
        """The reply to one request (key masked); JudgeUnavailable after bounded retries or at ``deadline``."""
        data = json.dumps({"model": self.model, "messages": messages, **self.parameters}).encode()
        last, retry_after = "no attempt", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = max(min(self.backoff * 2 ** (attempt - 1), self.max_backoff), min(retry_after, self.max_backoff))
                self._sleep(min(delay, self._left(deadline, last)))
            status, payload, retry_after = self._post(data, self._left(deadline, last))
            if status == 200:
                reply = self._content(payload)
                if reply is not None:
                    return self.mask(reply)
                last = f"a 200 response that is not a chat completion: {self._excerpt(payload)}"
            elif status is not None and status != 429 and status < 500:
                raise JudgeUnavailable(f"judge at {_public_url(self.endpoint)} refused the request: "
                                       f"HTTP {status} {self._excerpt(payload)}")
            else:
                last = f"HTTP {status} {self._excerpt(payload)}" if status else self.mask(payload)
        raise JudgeUnavailable(f"judge at {_public_url(self.endpoint)} gave no answer after "
                               f"{self.retries + 1} attempts (last: {last.strip()})")

    def _left(self, deadline: float | None, last: str) -> float:
        """Seconds left before ``deadline`` (at most one timeout); JudgeUnavailable when none."""
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise JudgeUnavailable(f"judge at {_public_url(self.endpoint)}: the row's time bound ran out "
                                   f"(last: {last.strip()})")
        return min(self.timeout, left)

    def _key(self) -> str | None:
        return os.environ.get(self._api_key_env) or None if self._api_key_env else None

    def mask(self, text: str) -> str:
        """``text`` with the API key replaced by ***."""
        key = self._key()
        return text.replace(key, "***") if key and isinstance(text, str) else text

    def _post(self, data: bytes, timeout: float) -> tuple[int | None, str, float]:
        """(status, body text, Retry-After seconds); status None for a transport failure."""
        request = urllib.request.Request(self.endpoint, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        key = self._key()
        if key:
            self._warn_plain_http()
            request.add_unredirected_header("Authorization", f"Bearer {key}")  # never carried to a redirect
        with self._count_lock:
            self.requests += 1
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, response.read().decode("utf-8", "replace"), 0.0
        except JudgeUnavailable:
            raise
        except urllib.error.HTTPError as err:
            try:
                text = err.read().decode("utf-8", "replace")
            except (OSError, HTTPException):
                text = ""
            return err.code, text, _retry_after(err.headers.get("Retry-After") if err.headers else None)
        except (OSError, HTTPException) as err:  # URLError, timeouts, resets, IncompleteRead
            reason = getattr(err, "reason", err)
            return None, f"{type(reason).__name__}: {reason}", 0.0

    def _warn_plain_http(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not self._warned_plain_http:
            self._warned_plain_http = True
            log.warning("the API key goes to %s over plain http, readable on the network; use https",
                        parts.hostname)

    def _content(self, payload: str) -> str | None:
        try:
            response = json.loads(payload)
            content = response["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return None
        if isinstance(response.get("model"), str):
            self.observed_models.add(self.mask(response["model"]))
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""  # null (refusal) -> unparseable

    def _excerpt(self, text: str) -> str:
        return self.mask(" ".join(text.split())[:200])


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

    def complete(self, messages: list[Message], deadline: float | None = None) -> str:
        """The reply (greedy). ``deadline`` is not enforced: a local model has no hanging server."""
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


