"""`prag serve`: an OpenAI-compatible HTTP server over one work directory.

create_app is the HTTP layer (FastAPI) over the scheduler (answer/batcher.py): OpenAI's chat-completion schema
(answer/schema.py) in and out, server-sent events for `stream: true`, OpenAI's error JSON ({"error": {message,
type, param, code}}) for every error, the optional API key, the request body limit (413 before a byte of a larger
body is parsed).
"""

import hmac
import json
import logging
import signal
import time
import uuid
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from prag_core.answer.batcher import REQUEST_ERRORS, Batcher, Busy
from prag_core.answer.config import AnswerConfig, ServeConfig
from prag_core.answer.pipeline import Pipeline
from prag_core.answer.requests import PipelineError, PromptTooLong, Request, UnknownDocument, check_request
from prag_core.answer.schema import ChatRequest, PragOptions, RetrieveRequest
from prag_core.model.load import EMBEDDED
from prag_core.retrieval.bm25 import RetrievalError

log = logging.getLogger("prag.serve")


def error(status, message, param=None, code=None, headers=None):
    """OpenAI's error JSON."""
    kind = {401: "authentication_error", 503: "server_error", 500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers=headers
    )


def _request_error(err):
    """The response for an error a request caused (PipelineError and friends)."""
    field = getattr(err, "field", None)
    param = "messages" if field == "question" else f"prag.{field}" if field else None
    if isinstance(err, UnknownDocument):
        return error(404, str(err), param, "document_not_found")
    if isinstance(err, PromptTooLong):
        return error(413, str(err), "max_tokens" if field == "max_new_tokens" else param, "context_length_exceeded")
    if isinstance(err, RetrievalError):
        return error(400, f"messages: {err}", "messages")
    if isinstance(err, PipelineError) and field is None:  # the knowledge base itself is broken
        return error(500, str(err))
    return error(400, str(err), param)


class ApiKey:
    """ASGI middleware: /v1/ routes need `Authorization: Bearer KEY` (checked before the body is read)."""

    def __init__(self, app, key):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request whose body is over `limit` bytes gets 413 before any of it is parsed: at once
    when its Content-Length says so, else as soon as the bytes streamed in pass the limit. The body (at most
    `limit` bytes) is read here and handed on whole."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        body, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body.append(message.get("body", b""))
            size, more = size + len(body[-1]), message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(scope, receive, send)
        whole = {"type": "http.request", "body": b"".join(body), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is None:
                return await receive()  # after the body: http.disconnect, which streaming responses wait for
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"request body: more than the server's limit of {self.limit} bytes (prag serve --max-body-bytes)"
        await error(413, message, code="request_too_large", headers={"Connection": "close"})(scope, receive, send)


def _sse(obj):
    return f"data: {json.dumps(obj)}\n\n"


def create_app(pipeline, config=ServeConfig()):
    """The FastAPI app serving `pipeline` as `config` says (batching, queue, API key, body limit), listed and
    answered as served_names(...) gives; its Batcher runs while the app does."""
    batcher = Batcher(pipeline, config.max_batch, config.window_ms / 1000, config.max_queue)
    model_id, aliases = served_names(pipeline.kb.workdir, config.served_model_names)
    names = {model_id, *aliases}

    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="prag", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key:  # added last: outermost, so a request without the key is refused before its body is read
        app.add_middleware(ApiKey, key=config.api_key)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return error(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first['msg'])}")
        loc = [str(part) for part in first["loc"] if part != "body"]
        param = ".".join(loc) or None
        return error(400, f"{param or 'body'}: {first['msg']}", param)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request, exc):
        log.exception("internal error")
        return error(500, "internal server error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "admitted": batcher.admitted}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "prag"}]}

    @app.post("/v1/retrieve")
    def retrieve(body: RetrieveRequest):
        try:
            check_request(question=body.question)
            ids, scores = pipeline.retrieve(body.question, body.top_k)
        except REQUEST_ERRORS as err:
            return _request_error(err)
        return {"object": "list", "data": [{"id": i, "score": s} for i, s in zip(ids, scores)]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model is not None and body.model not in names:
            return error(
                404,
                f"model: {body.model!r} is not served here; GET /v1/models lists {model_id!r}",
                "model",
                "model_not_found",
            )
        if body.temperature not in (None, 0):
            return error(
                400, f"temperature: prag answers greedily, only 0 is supported (got {body.temperature})", "temperature"
            )
        questions = [m.text() for m in body.messages if m.role == "user"]
        if not questions:
            return error(400, "messages: no user message (the last one is the question)", "messages")
        options = body.prag or PragOptions()
        request = Request(
            questions[-1],
            options.mode or "prag",
            options.top_k,
            options.documents,
            body.max_completion_tokens or body.max_tokens,
        )
        try:
            job = batcher.submit(request, options.update or "fused", body.stream)
        except Busy:
            return error(503, "the server is full; retry shortly", code="overloaded", headers={"Retry-After": "1"})
        kind, row = await job.events.get()
        if kind == "error":
            return _request_error(row) if isinstance(row, REQUEST_ERRORS) else error(500, "internal server error")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        prag = _prag(request, job, row.docs, row.scores)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_chunks(job, head, prag, usage), media_type="text/event-stream")
        while (event := await job.events.get())[0] == "text":
            pass
        kind, answer = event
        if kind == "error":
            return error(500, "internal server error")
        prag = _prag(request, job, answer.docs, answer.scores, answer.hops)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.prediction},
                    "finish_reason": answer.finish,
                }
            ],
            "usage": _usage(answer),
            "prag": prag,
        }

    return app


def _prag(request, job, docs, scores, hops=None):
    """The reply's `prag` object: mode, update, the documents used with their scores, and (once answered) each
    hop: its documents, scores, weights and answer."""
    prag = {
        "mode": request.mode,
        "update": job.update,
        "documents": [{"id": d, "score": s} for d, s in zip(docs, scores)],
    }
    if hops is not None:
        prag["hops"] = [h.to_dict() for h in hops]
    return prag


def _usage(answer):
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.tokens,
        "total_tokens": answer.prompt_tokens + answer.tokens,
    }


async def _chunks(job, head, prag, usage):
    """Server-sent events in OpenAI's chunk format; a client that goes away cancels the row."""

    def chunk(delta, finish=None, **extra):
        return _sse(
            {
                **head,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    try:
        yield chunk({"role": "assistant", "content": ""}, prag=prag)
        while (event := await job.events.get())[0] == "text":
            yield chunk({"content": event[1]})
        kind, answer = event
        if kind == "error":
            yield _sse(
                {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}}
            )
        else:
            yield chunk({}, answer.finish, prag=_prag(job.request, job, answer.docs, answer.scores, answer.hops))
            if usage:
                yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(answer)})
        yield "data: [DONE]\n\n"
    finally:
        job.request.cancel.set()  # a no-op once the row is done


def served_names(workdir, names=()):
    """(the name the server lists and answers as, the other names requests may give): the first of `names`
    (`--served-model-name`), else the work directory's model as `prag build` got it, a folder by its name only
    (not its path, which says where the server's files are); requests naming that model in any of those ways are
    answered too. workdir: a storage.workdir.Workdir, or None for a knowledge base built in memory, which must be
    given its names."""
    if workdir is None:
        if not names:
            raise ValueError("served_model_names: a knowledge base without a work directory needs a name to serve as")
        return names[0], tuple(names[1:])
    model = workdir.read_config().get("model") or EMBEDDED
    own = Path(model).name if Path(model).is_absolute() else model
    names = tuple(names) or (own,)
    return names[0], tuple(dict.fromkeys((*names[1:], own, model)))


def open_app(workdir, answering=AnswerConfig(), config=ServeConfig()):
    """The app (create_app) serving the work directory as `config` says, on config.threads torch threads; its
    Batcher starts with the app's lifespan (or app.state.batcher.start())."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    return create_app(Pipeline.open(workdir, answering), config)


def serve(workdir, answering=AnswerConfig(), config=ServeConfig()):
    """Load the work directory once and serve it until SIGINT/SIGTERM (then finish what is in flight)."""
    import uvicorn

    app = open_app(workdir, answering, config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the previous handler;
    # the default ones would end a clean shutdown with status 143 or a KeyboardInterrupt, so those do nothing.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
