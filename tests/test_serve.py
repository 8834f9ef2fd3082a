"""redvillm-serve through the official openai client: answers equal VideoAnswerer's, streamed or
not, batched or not, from a path, a URL or base64; every bad request gets an OpenAI error body."""

import base64
import functools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import uvicorn

from redvillm import VideoAnswerer
from redvillm.serve.app import build_app
from redvillm.serve.config import ServeConfig

TOKENS = 10
MODEL = "tiny-video"


@pytest.fixture(scope="module")
def answerer(trained_run):
    with VideoAnswerer.load(trained_run, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def server(answerer, trained_run):
    cfg = ServeConfig(str(trained_run), model_name=MODEL, batch_wait_ms=150, max_batch=8, max_video_mb=1,
                      default_max_tokens=TOKENS, max_tokens=64, download_timeout=10)
    app = build_app(answerer, cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app
    uv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def files(synthetic_videos):
    """A loopback HTTP server for the sample videos."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(synthetic_videos))
    handler.log_message = lambda *args: None
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}"
    http.shutdown()


def message(url, question):
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def ask(client, url, question, **kw):
    reply = client.chat.completions.create(model=MODEL, messages=message(url, question), **kw)
    return reply.choices[0].message.content


def test_models_lists_the_run(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_answers_equal_the_library_streamed_or_not(client, answerer, synthetic_videos):
    video = str(synthetic_videos / "order_0000.mp4")
    want = answerer.generate([(video, "What color appears first?")], max_new_tokens=TOKENS)[0]
    reply = client.chat.completions.create(model=MODEL, messages=message(video, "What color appears first?"))
    assert reply.choices[0].message.content == want.text and reply.choices[0].finish_reason == want.finish_reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    chunks = list(client.chat.completions.create(model=MODEL, messages=message(video, "What color appears first?"),
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == want.text and sum(bool(d) for d in deltas) > 1  # several real deltas
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.completion_tokens


def test_chinese_question_stop_and_max_tokens(client, answerer, synthetic_videos):
    video = f"file://{synthetic_videos / 'direction_0001.mp4'}"
    question = "方块往哪个方向移动？"
    full = answerer.answer([(str(synthetic_videos / "direction_0001.mp4"), question)], max_new_tokens=TOKENS)[0]
    assert ask(client, video, question) == full
    stop = full[len(full) // 2:][:2]
    assert ask(client, video, question, stop=[stop]) == full[: full.find(stop)].rstrip()
    short = client.chat.completions.create(model=MODEL, messages=message(video, question), max_completion_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_base64_and_http_videos_answer_as_the_file(client, synthetic_videos, files):
    path = synthetic_videos / "order_0001.mp4"
    want = ask(client, str(path), "What happens?")
    encoded = base64.b64encode(path.read_bytes()).decode()
    assert ask(client, f"data:video/mp4;base64,{encoded}", "What happens?") == want
    assert ask(client, f"{files}/order_0001.mp4", "What happens?") == want


def test_concurrent_clients_are_batched_and_answer_as_one_by_one(client, server, synthetic_videos):
    asks = [(str(synthetic_videos / f"{kind}_{i:04d}.mp4"), q) for kind in ("order", "direction") for i in range(3)
            for q in ("What happens?", "这是什么？")][:8]
    alone = [ask(client, video, q) for video, q in asks]
    batches = server[1].state.batcher.batches
    before = len(batches)
    with ThreadPoolExecutor(len(asks) + 1) as pool:
        sampled = pool.submit(ask, client, asks[0][0], "What happens?", temperature=1.5, top_p=0.9)
        together = list(pool.map(lambda a: ask(client, *a), asks))
    assert together == alone  # the sampled request went into a generate of its own
    assert isinstance(sampled.result(), str)
    assert max(batches[before:]) > 1  # really answered together


def http(url, data=None):
    """(status, JSON body) of a raw request, errors included (the client would raise instead)."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def bad(server, body, raw=None):
    status, reply = http(f"{server[0]}/chat/completions", raw if raw is not None else json.dumps(body).encode())
    return status, reply["error"]


def test_bad_requests_get_openai_error_bodies(server, synthetic_videos, tmp_path, files):
    video = str(synthetic_videos / "order_0000.mp4")
    (tmp_path / "bad.mp4").write_text("not a video")
    part = {"type": "video_url", "video_url": {"url": video}}
    text = {"type": "text", "text": "What?"}
    cases = [
        (None, b"{not json", 400, None, "invalid_json"),
        ({"model": "other", "messages": message(video, "What?")}, None, 404, "model", "model_not_found"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "What?"}]}, None, 400, "messages[0].content", None),
        ({"model": MODEL, "messages": [{"role": "user", "content": [part, part, text]}]}, None, 400,
         "messages[0].content", None),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": video}},
                                                                     text]}]}, None, 400,
         "messages[0].content[0].type", "unsupported_content"),
        ({"model": MODEL, "messages": message(video, "What?"), "n": 2}, None, 400, "n", "unsupported_parameter"),
        ({"model": MODEL, "messages": message(video, "  ")}, None, 400, "messages[0].content", None),
        ({"model": MODEL, "messages": message(video, "What?"), "max_tokens": 65}, None, 400, "max_tokens", None),
        ({"model": MODEL, "messages": message(str(tmp_path / "bad.mp4"), "What?")}, None, 422,
         "messages[0].content[0].video_url.url", "video_unreadable"),
        ({"model": MODEL, "messages": message(str(tmp_path / "bad.mp4"), "What?"), "stream": True}, None, 422,
         "messages[0].content[0].video_url.url", "video_unreadable"),
        ({"model": MODEL, "messages": message(str(tmp_path / "gone.mp4"), "What?")}, None, 422,
         "messages[0].content[0].video_url.url", "video_not_found"),
        ({"model": MODEL, "messages": message(f"{files}/gone.mp4", "What?")}, None, 422,
         "messages[0].content[0].video_url.url", "video_download_failed"),
        ({"model": MODEL, "messages": message("data:video/mp4;base64," + "A" * (2 << 20), "What?")}, None, 413,
         "messages[0].content[0].video_url.url", "video_too_large"),
        (None, b"{" + b" " * (3 << 20) + b"}", 413, None, "request_too_large"),
        ({"model": MODEL, "messages": message("data:video/mp4;base64,@@@", "What?")}, None, 400,
         "messages[0].content[0].video_url.url", None),
    ]
    for body, raw, status, param, code in cases:
        got_status, error = bad(server, body, raw)
        assert (got_status, error["param"], error["code"]) == (status, param, code), raw or json.dumps(body)[:300]
        assert error["message"] and error["type"]
    assert "bad.mp4: cannot read this video" in bad(server, cases[8][0])[1]["message"]
    status, missing = http(f"{server[0]}/nowhere")
    assert status == 404 and missing["error"]["type"] == "not_found_error"
    status, good = http(f"{server[0]}/chat/completions",
                        json.dumps({"model": MODEL, "messages": message(video, "What?")}).encode())  # still answering
    assert status == 200 and good["choices"][0]["message"]["role"] == "assistant"


def test_openai_client_raises_its_own_errors(client, tmp_path):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=message("/x.mp4", "What?"))
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL, messages=message(str(tmp_path / "none.mp4"), "What?"))


def test_a_failing_generate_fails_its_batch_not_the_server(client, answerer, synthetic_videos, monkeypatch):
    video = str(synthetic_videos / "order_0000.mp4")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(answerer, "generate", broken)
        with pytest.raises(openai.InternalServerError, match="out of memory"):
            ask(client, video, "What?")
        with pytest.raises(openai.APIError, match="out of memory"):  # a stream already begun ends with an error event
            list(client.chat.completions.create(model=MODEL, messages=message(video, "What?"), stream=True))
    assert ask(client, video, "What?") == answerer.answer([(video, "What?")], max_new_tokens=TOKENS)[0]


def test_the_console_script_serves_and_names_the_missing_extra(trained_run, synthetic_videos, monkeypatch):
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from redvillm.serve.cli import main

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
        result = CliRunner().invoke(main, [str(trained_run)])
    assert result.exit_code == 2 and "pip install 'redvillm[serve]'" in result.output
    assert result.output.strip().count("\n") == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "redvillm.serve.cli", str(trained_run), "--port", str(port), "--device", "cpu",
           "--model-name", MODEL, "--default-max-tokens", "3"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                if http(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert isinstance(ask(client, str(synthetic_videos / "order_0000.mp4"), "What?"), str)
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert f"serving {MODEL}" in output and "127.0.0.1" in output


def test_a_stream_whose_client_leaves_stops_generating(server, answerer, synthetic_videos, monkeypatch):
    import http.client

    video = str(synthetic_videos / "direction_0000.mp4")
    assert answerer.generate([(video, "What?")], max_new_tokens=64)[0].completion_tokens == 64  # would run on
    finished = []
    generate, forward = answerer.generate, answerer.model.backbone.forward
    monkeypatch.setattr(answerer, "generate", lambda *a, **kw: finished.extend(generate(*a, **kw)) or finished)
    monkeypatch.setattr(answerer.model.backbone, "forward", lambda *a, **kw: time.sleep(0.05) or forward(*a, **kw))
    host, port = server[0].split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"model": MODEL, "messages": message(video, "What?"), "max_tokens": 64, "stream": True}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    while not response.readline().startswith(b"data: "):  # the first chunk has come
        pass
    connection.sock.close()  # the client goes away mid-answer
    connection.close()
    for _ in range(300):
        if finished:
            break
        time.sleep(0.1)
    assert finished and finished[0].completion_tokens < 32
