"""`prag serve` on tiny models: the official openai client (plain and streamed), 32 concurrent clients batched
with the answers each gets alone, every error case, the API key, the bounded queue, a client that disconnects
mid-stream, and SIGTERM with requests in flight (a `prag serve` subprocess on a work directory)."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import replace
from http.client import HTTPConnection

import openai
import pytest
import uvicorn
from test_cli import built  # noqa: F401  (the fixture: a tiny work directory written by `prag build`)
from test_pipeline import QUESTIONS, TEXTS, make_pipe

from prag_core.answer.config import MODES, ServeConfig
from prag_core.answer.requests import Request
from prag_core.answer.serve import create_app
from prag_core.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "tiny"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """The app served by uvicorn from a thread on a free port of 127.0.0.1; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def http(url, body=None, headers=None):
    """(status, headers, JSON) of a GET, or of a POST of `body` (text, or an object sent as JSON)."""
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, head, text = r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        status, head, text = err.code, err.headers, err.read()
    assert b"Traceback" not in text
    return status, head, json.loads(text)


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


@contextmanager
def gated(batcher, monkeypatch):
    """Hold every prefill of `batcher` until the yielded Event is set (so requests pile up in its queue)."""
    gate, join = threading.Event(), batcher.running.join
    monkeypatch.setattr(batcher.running, "join", lambda rows: gate.wait(30) and join(rows))
    try:
        yield gate
    finally:
        gate.set()


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.fixture(scope="module")
def server(pipe):
    app = create_app(pipe, ServeConfig(served_model_names=(MODEL,), max_batch=16, window_ms=10))
    with running(app) as url:
        yield url, app.state.batcher


def chat(c, question, stream=False, max_tokens=None, **prag):
    """The answer's (content, finish_reason, prag object, usage) through the openai client."""
    extra = {"prag": prag} if prag else None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    if not stream:
        r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, extra_body=extra)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.model_extra["prag"], r.usage
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=max_tokens,
            extra_body=extra,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finish) == 1 and chunks[-1].usage is not None
    return content, finish[0], chunks[0].model_extra["prag"], chunks[-1].usage


def alone(pipe, question, max_tokens=None, mode="prag", top_k=None, documents=None):
    """The Answer the pipeline gives the request by itself (Pipeline.answer for default options)."""
    if (max_tokens, top_k, documents) == (None, None, None):
        return pipe.answer([question], mode)[0]
    return pipe.run([pipe.prepare(Request(question, mode, top_k, documents, max_tokens))])[0]


def test_plain_and_streamed_completions_with_the_openai_client(server, pipe):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list()] == [MODEL]
    expected = pipe.answer([QUESTIONS[0]], "prag")[0]
    for stream in (False, True):
        content, finish, prag, usage = chat(c, QUESTIONS[0], stream)
        assert (content, finish) == (expected.prediction, expected.finish)
        hops = prag.pop("hops", None)  # a stream's first chunk: the documents; its last: the hops too
        assert hops == (None if stream else [h.to_dict() for h in expected.hops]) and len(expected.hops) == 1
        assert prag == {
            "mode": "prag",
            "update": "fused",
            "documents": [{"id": d, "score": s} for d, s in zip(expected.docs, expected.scores)],
        }
        assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, expected.tokens)
    content, finish, prag, usage = chat(c, QUESTIONS[1], max_tokens=2, mode="vanilla")
    assert (finish, usage.completion_tokens, prag["documents"]) == ("length", 2, [])
    merged = chat(c, QUESTIONS[2], mode="combine", update="merge", documents=["mill", "lamp"])
    assert merged[0] == alone(pipe, QUESTIONS[2], mode="combine", documents=["mill", "lamp"]).prediction
    assert http(f"{url}/health")[2]["status"] == "ok"
    hits = http(f"{url}/v1/retrieve", {"question": QUESTIONS[3], "top_k": 3})[2]["data"]
    assert [(h["id"], h["score"]) for h in hits] == [(d, s) for d, s in pipe.kb.index.search(QUESTIONS[3], k=3)]


def request_specs():
    """32 requests, each with its own question and documents (modes, top_k, explicit sets, answer lengths)."""
    ids = list(TEXTS)
    specs = []
    for i in range(32):
        spec = {"question": QUESTIONS[i % 5], "mode": MODES[i % 4]}
        if i % 3 == 0:
            spec["documents"] = [ids[(i + 1) % 5], ids[(i + 3) % 5]][: 1 + i % 2]
        elif i % 3 == 1:
            spec["top_k"] = 1 + i % 3
        if i % 4 == 3:
            spec["max_tokens"] = 3 + i % 5
        specs.append(spec)
    return specs


def test_32_concurrent_clients_are_batched_and_answered_as_alone(server, pipe, monkeypatch, caplog):
    url, batcher = server
    c = client(url)
    specs = request_specs()
    bad = [{"question": QUESTIONS[0], "documents": ["nope"]}, {"question": "why " * 300, "mode": "vanilla"}]
    results, errors = {}, {}

    def ask(i, spec):
        spec = dict(spec)
        question, max_tokens = spec.pop("question"), spec.pop("max_tokens", None)
        try:
            results[i] = chat(c, question, stream=i % 2 == 1, max_tokens=max_tokens, **spec)
        except openai.APIStatusError as err:
            errors[i] = err.status_code

    caplog.set_level(logging.INFO, logger="prag.serve")
    with gated(batcher, monkeypatch) as gate:
        threads = [threading.Thread(target=ask, args=(i, s)) for i, s in enumerate(specs + bad)]
        for t in threads:
            t.start()
        wait_for(lambda: batcher.admitted + len(errors) == len(threads))
        gate.set()
        for t in threads:
            t.join()
    assert errors == {32: 404, 33: 413}  # the bad ones fail alone
    for i, spec in enumerate(specs):
        spec = dict(spec)
        expected = alone(pipe, spec.pop("question"), **spec)
        assert results[i][:2] == (expected.prediction, expected.finish), (i, specs[i])
        assert [d["id"] for d in results[i][2]["documents"]] == expected.docs
    assert len({(s["question"], s["mode"], str(s.get("documents")), s.get("top_k")) for s in specs}) == 32
    # "joined N rows: M running": prefilled in groups, up to --max-batch rows decoding together, and (continuous
    # batching) rows that joined a batch already running, as earlier rows finished
    joins = [re.match(r"joined (\d+) rows: (\d+) running", r.getMessage()) for r in caplog.records]
    joins = [(int(m[1]), int(m[2])) for m in joins if m]
    assert sum(n for n, _ in joins) == 32 and max(m for _, m in joins) == 16, joins
    assert any(m > n for n, m in joins), joins


def user(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ('{"messages": [', 400, None),
        ("[1, 2]", 400, None),
        ({"model": MODEL}, 400, "messages"),
        ({"messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
        ({"messages": user("   ")}, 400, "messages"),
        ({"messages": user("??")}, 400, "messages"),  # no word to retrieve with
        ({"messages": user("Who?"), "prag": {"mode": "magic"}}, 400, "prag.mode"),
        ({"messages": user("Who?"), "prag": {"update": "lazy"}}, 400, "prag.update"),
        ({"messages": user("Who?"), "prag": {"top_k": 0}}, 400, "prag.top_k"),
        ({"messages": user("Who?"), "prag": {"colour": "red"}}, 400, "prag.colour"),
        ({"messages": user("Who?"), "prag": {"documents": ["toad", "nope"]}}, 404, "prag.documents"),
        ({"messages": user("Who?"), "model": "gpt-9"}, 404, "model"),
        ({"messages": user("Who?"), "temperature": 0.7}, 400, "temperature"),
        ({"messages": user("Who?"), "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": user("why " * 300)}, 413, "messages"),
        ({"messages": user("Who?"), "max_tokens": 500}, 413, "max_tokens"),  # no room left for that many answer tokens
        ('{"messages": [{"role": "user", "content": "Who \\ud800?"}]}', 400, "messages"),  # a lone surrogate: no text
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
    code, _, reply = http(f"{server[0]}/v1/chat/completions", body)
    assert code == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and reply["error"]["param"] == param
    assert reply["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_limit_gets_413_at_once(server, pipe):
    """Refused on its Content-Length before a byte of it arrives, or as soon as a streamed (chunked) body passes
    the limit, with OpenAI's error JSON; the server answers the next request as usual."""

    def post(url, body=None, headers=None):
        """(status, JSON, seconds) of a POST of `body` (bytes, or an iterator: sent chunked)."""
        conn = HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=20)
        start = time.monotonic()
        try:
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", **(headers or {})})
            r = conn.getresponse()
            return r.status, json.loads(r.read()), time.monotonic() - start
        finally:
            conn.close()

    status, reply, seconds = post(server[0], headers={"Content-Length": "20000000"})  # 20 MB announced, not sent
    assert (status, reply["error"]["code"], seconds < 10) == (413, "request_too_large", True), reply
    assert "limit of 1048576 bytes (prag serve --max-body-bytes)" in reply["error"]["message"]
    with running(create_app(pipe, ServeConfig(served_model_names=(MODEL,), max_body_bytes=3000))) as url:
        body = json.dumps({"messages": user("why " * 800)}).encode()
        status, reply, _ = post(url, iter([body[i : i + 500] for i in range(0, len(body), 500)]))
        assert (status, reply["error"]["code"]) == (413, "request_too_large"), reply
        assert "limit of 3000 bytes" in reply["error"]["message"]
        assert chat(client(url), QUESTIONS[0])[0] == pipe.answer([QUESTIONS[0]], "prag")[0].prediction


def test_prag_serve_model_names_and_body_limit(built, monkeypatch):  # noqa: F811
    """`prag serve` (uvicorn.run caught): /v1/models gives the model folder's name, not its path; with
    --served-model-name the first name is listed and answered as, and requests naming any of them, the folder or
    its path are answered; --max-body-bytes sets the limit."""
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: apps.append((app, options)))
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # serve's SIGINT/SIGTERM handlers: not in the tests
    argv = ["serve", "--workdir", str(built[0]), "--device", "cpu", "--port", "8123"]
    assert main(argv) == 0
    assert main([*argv, "--served-model-name", "gpt-4o-mini", "mine", "--max-body-bytes", "3000"]) == 0
    (plain, options), (named, _) = apps
    assert options["port"] == 8123
    folder = str(built[0].parent / "model")
    with running(plain) as url:
        status, _, reply = http(f"{url}/v1/models")
        assert [m["id"] for m in reply["data"]] == ["model"] and folder not in json.dumps(reply)
    with running(named) as url:
        assert [m["id"] for m in http(f"{url}/v1/models")[2]["data"]] == ["gpt-4o-mini"]
        c = client(url)
        for name in ("gpt-4o-mini", "mine", "model", folder):
            r = c.chat.completions.create(model=name, messages=user("What color is Tom's kite?"), max_tokens=2)
            assert r.model == "gpt-4o-mini"
        code, _, reply = http(f"{url}/v1/chat/completions", {"model": "gpt-9", "messages": user("Who?")})
        assert (code, reply["error"]["param"]) == (404, "model") and "'gpt-4o-mini'" in reply["error"]["message"]
        code, _, reply = http(f"{url}/v1/chat/completions", {"messages": user("why " * 800)})
        assert (code, reply["error"]["code"]) == (413, "request_too_large")


def test_other_routes_answer_errors_as_json(server):
    url, _ = server
    replies = [
        (http(f"{url}/v1/nothing"), 404),
        (http(f"{url}/v1/retrieve", {"question": " "}), 400),
        (http(f"{url}/v1/retrieve", {"question": "Who?", "top_k": 0}), 400),
    ]
    for (code, _, reply), status in replies:
        assert code == status and set(reply["error"]) == {"message", "type", "param", "code"}


def test_a_bug_is_a_500_without_traceback_and_the_server_goes_on(server, pipe, monkeypatch):
    url, _ = server
    prepare = pipe.prepare
    monkeypatch.setattr(pipe, "prepare", lambda r: 1 / 0 if r.question == "boom?" else prepare(r))
    code, _, reply = http(f"{url}/v1/chat/completions", {"messages": user("boom?")})
    assert (code, reply["error"]["type"], reply["error"]["message"]) == (500, "server_error", "internal server error")
    assert chat(client(url), QUESTIONS[0])[0] == pipe.answer([QUESTIONS[0]], "prag")[0].prediction


def test_api_key_and_a_full_queue(pipe, monkeypatch):
    config = ServeConfig(served_model_names=(MODEL,), max_batch=1, window_ms=10, max_queue=2, api_key="sekret")
    app = create_app(pipe, config)
    with running(app) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            code, _, reply = http(f"{url}/v1/chat/completions", {"messages": user("Who?")}, headers)
            assert code == 401 and reply["error"]["code"] == "invalid_api_key"
        assert http(f"{url}/v1/models")[0] == 401 and http(f"{url}/health")[0] == 200
        c = client(url, key="sekret")
        answers = []
        with gated(app.state.batcher, monkeypatch) as gate:
            threads = [threading.Thread(target=lambda q=q: answers.append(chat(c, q)[0])) for q in QUESTIONS[:2]]
            for t in threads:
                t.start()
            wait_for(lambda: app.state.batcher.admitted == 2)
            code, head, reply = http(
                f"{url}/v1/chat/completions", {"messages": user(QUESTIONS[2])}, {"Authorization": "Bearer sekret"}
            )
            assert (code, head["Retry-After"], reply["error"]["code"]) == (503, "1", "overloaded")
            gate.set()
            for t in threads:
                t.join()
        assert sorted(answers) == sorted(pipe.answer([q], "prag")[0].prediction for q in QUESTIONS[:2])


def test_a_client_that_disconnects_mid_stream_frees_its_row_only(monkeypatch, caplog):
    """A model that never ends an answer: the streamed row would run for 380 tokens unless it is freed."""
    endless = make_pipe()
    # one hop: the stream sends its answer as it settles (with hops, once it is final)
    endless.config = replace(endless.config, max_hops=1)
    tok = endless.kb.tokenizer
    ends = [i for i in range(len(tok)) if tok.decode([i]) in (".", "\n")] + [tok.eos_token_id]
    endless.kb.model.generation_config.suppress_tokens += ends
    caplog.set_level(logging.INFO, logger="prag.serve")
    app = create_app(endless, ServeConfig(served_model_names=(MODEL,), max_batch=4, window_ms=10))
    with running(app) as url:
        c = client(url)
        mate = {}
        with gated(app.state.batcher, monkeypatch) as gate:
            stream = c.chat.completions.create(model=MODEL, messages=user(QUESTIONS[0]), max_tokens=380, stream=True)
            thread = threading.Thread(target=lambda: mate.update(answer=chat(c, QUESTIONS[1], max_tokens=20)))
            thread.start()
            wait_for(lambda: app.state.batcher.admitted == 2)
            gate.set()
            for chunk in stream:
                if chunk.choices[0].delta.content:
                    break
            stream.close()
            thread.join()
            wait_for(lambda: app.state.batcher.admitted == 0)
    assert mate["answer"][:2] == (alone(endless, QUESTIONS[1], max_tokens=20).prediction, "length")
    done = [re.match(r"row done \((\w+)\): (\d+) tokens", r.getMessage()) for r in caplog.records]
    done = sorted((m[1], int(m[2])) for m in done if m)
    assert [f for f, _ in done] == ["cancelled", "length"] and done[0][1] < 380, done


def prag_serve(workdir, port, *flags):
    """A `prag serve` subprocess over `workdir` on `port` (CPU, 1 thread, and `flags`), its output piped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = ["serve", "--workdir", str(workdir), "--port", str(port), "--device", "cpu", "--threads", "1", *flags]
    cmd = [sys.executable, "-m", "prag_core.cli", *argv]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_finishes_requests_in_flight_and_exits_0(built):  # noqa: F811
    workdir = built[0]
    port = free_port()
    proc = prag_serve(workdir, port, "--batch-window-ms", "3000")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _up(url), timeout=120)
        model = http(f"{url}/v1/models")[2]["data"][0]["id"]
        c = client(url)
        answers = []
        threads = [
            threading.Thread(
                target=lambda q=q: answers.append(
                    c.chat.completions.create(model=model, messages=user(q), max_tokens=5).choices[0].finish_reason
                )
            )
            for q in ("What color is Tom's kite?", "How many figs does Bo eat?")
        ]
        for t in threads:
            t.start()
        wait_for(lambda: http(f"{url}/health")[2]["admitted"] == 2)  # waiting in the 3 s batch window
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not _up(url))  # stops accepting at once ...
        for t in threads:
            t.join()
        assert proc.wait(timeout=60) == 0  # ... and exits 0 once the requests in flight are answered
        assert len(answers) == 2 and set(answers) <= {"stop", "length"}
    finally:
        proc.kill()
    log = proc.stdout.read()
    assert "joined 2 rows: 2 running" in log and "Traceback" not in log, log


def _up(url):
    try:
        return http(f"{url}/health")[0] == 200
    except OSError:  # refused: nothing listens
        return False
