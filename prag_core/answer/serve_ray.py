"""`prag serve --ray`: N copies of the single-process server on Ray Serve, behind one HTTP entry point.

Replica (N of them): the app of answer/serve.py (open_app: its own model, Pipeline, document pool and Batcher),
called in-process as an ASGI app. `forward` hands it one HTTP request and yields what it sends: (status,
headers) first, then each body chunk as it comes, so streams stay streams; closed early (the client went away),
the app sees http.disconnect and cancels the row, as in one process. Every response carries the replica's id in
`x-prag-replica`.

Router (one, the ingress): forwards every request as it came, bytes and headers, to a replica and relays the
answer chunk by chunk. It validates nothing (a malformed body gets the replica's 4xx), but checks the API key
and the body limit first, with serve.py's own middleware, so a refused request costs no retrieval. It opens the
work directory's retriever only, for the routing key: the request's document set, its `prag.documents` or else
the ids the retriever ranks top for its question at its top_k (sorted, as JSON); none for vanilla mode or a
body without a question. A replica lost before its answer's status (killed, its node gone, silent for
REPLY_TIMEOUT_S) gives a 503 in OpenAI's JSON; lost mid-stream, the stream ends with an error event.

Routing is Ray Serve's model multiplexing, the key as the model id: a replica that answers a key records it
(`_hold`, an LRU of HELD_SETS keys, pushed to the controller every 0.1 s and from there to the router). Ray
2.60's router (ray/serve/_private/request_router/: pow_2_router.py, request_router.py apply_multiplex_routing)
picks, for a request with a key, among these candidates: for the first 1-2 s of routing (random; env
RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S = 1, times 1 to 2) the replicas that hold the key; when none
does, or once those were tried and were full, the replicas that hold the fewest keys; after that time, once the
fewest-keys replicas, then all replicas. Of the candidates two are drawn at random and the request goes to the
one with fewer requests in flight that is under max_ongoing_requests (else it backs off and repeats). A request
without a key: two random replicas, the less loaded. So the same documents go to the replica that holds them
unless it is full; a new set goes to the replicas holding the fewest sets whatever their load (a burst of new
sets can land on one replica); the load decides between equals.

A replica takes max_batch requests at once (a full batch: the next request goes to another replica or waits
in the router); max_queue more wait in the router, beyond that 503 + Retry-After as in one process. SIGINT or
SIGTERM deletes the application (serve.shutdown would kill the proxy under the requests in flight): new
requests get Serve's 404 and each replica and the router answer what they hold (up to DRAIN_S) before they exit.
"""

import asyncio
import contextlib
import json
import logging
import signal
import threading

import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from prag_core.answer.knowledge_base import open_index
from prag_core.answer.schema import ChatRequest, PragOptions
from prag_core.answer.serve import ApiKey, BodyLimit, error, open_app
from prag_core.errors import PragError

log = logging.getLogger("prag.serve")
HELD_SETS = 64  # document sets a replica is routed by: about what its store's cache of 256 documents holds
REPLY_TIMEOUT_S = 300  # a replica that sends nothing for this long is taken for lost
DRAIN_S = 120  # how long a stopping replica may take to answer what it holds
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
APP = "prag"  # the Serve application's name
LOST = (RayError, RayServeException, TimeoutError)  # a replica that died, was lost or went silent


@serve.deployment
class Replica:
    """One single-process server (serve.open_app) with its batcher, answering forwarded requests."""

    def __init__(self, workdir, answering, config):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        self.app = open_app(workdir, answering, config)
        self.app.state.batcher.start()  # the app's lifespan, which would start it, does not run here
        self.id = serve.get_replica_context().replica_id.unique_id

    def __del__(self):
        if hasattr(self, "app"):  # Serve calls this once the requests in flight are answered
            self.app.state.batcher.close()

    @serve.multiplexed(max_num_models_per_replica=HELD_SETS)
    async def _hold(self, key):
        """Records `key` (a document set) as held here, for the router; the pairs are cached by the store."""
        return key

    async def forward(self, method, path, query, headers, body):
        """The app's answer to one HTTP request: (status, headers), then the body chunks as they are sent."""
        if key := serve.get_multiplexed_model_id():
            await self._hold(key)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": headers,
            "client": None,
            "server": None,
        }
        gone = asyncio.Event()
        request = {"type": "http.request", "body": body, "more_body": False}
        sent = asyncio.Queue()

        async def receive():
            nonlocal request
            if request is None:  # after the body: wait for the client to go away
                await gone.wait()
                return {"type": "http.disconnect"}
            message, request = request, None
            return message

        async def run():
            with contextlib.suppress(Exception):  # answered and logged by the app (500); Starlette re-raises it
                await self.app(scope, receive, sent.put)
            sent.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (message := await sent.get()) is not None:
                if message["type"] == "http.response.start":
                    yield message["status"], [*message.get("headers", []), (b"x-prag-replica", self.id.encode())]
                elif message.get("body"):
                    yield message["body"]
        finally:  # done, or closed early: the client went away (a stream's row is then cancelled)
            gone.set()
            await task


@serve.deployment
@serve.ingress()
class Router:
    """The entry point: routes each request by its document set (module docstring) and relays the answer."""

    def __init__(self, replicas, workdir, answering, config):
        self.replicas, self.config, self.top_k = replicas, config, answering.top_k
        self.index = open_index(workdir, "cpu", answering.retriever)[2]

    def __serve_build_asgi_app__(self):
        app = Starlette(routes=[Route("/{path:path}", self.forward, methods=METHODS)])
        app.add_middleware(BodyLimit, limit=self.config.max_body_bytes)
        if self.config.api_key:  # outermost, as in serve.create_app
            app.add_middleware(ApiKey, key=self.config.api_key)
        return _Disconnects(app)

    def key(self, path, body):
        """The document set a chat completion is answered with, sorted, as JSON; "" for none or a bad body."""
        if path != "/v1/chat/completions":
            return ""
        try:
            request = ChatRequest.model_validate_json(body)
            options = request.prag or PragOptions()
            if options.mode == "vanilla":
                return ""
            question = [m.text() for m in request.messages if m.role == "user"][-1]
            ids = options.documents or [i for i, _ in self.index.search(question, k=options.top_k or self.top_k)]
        except (ValueError, IndexError, PragError):  # the replica answers what is wrong with the request
            return ""
        return json.dumps(sorted(set(ids))) if ids else ""

    async def forward(self, request):
        body = await request.body()
        path = request.scope["path"]
        key = await asyncio.to_thread(self.key, path, body)  # retrieval may embed: off the event loop
        reply = self.replicas.options(stream=True, multiplexed_model_id=key).forward.remote(
            request.method, path, request.scope["query_string"], request.headers.raw, body
        )
        try:
            status, headers = await asyncio.wait_for(reply.__anext__(), REPLY_TIMEOUT_S)
        except BackPressureError:
            return error(503, "the server is full; retry shortly", code="overloaded", headers={"Retry-After": "1"})
        except LOST as err:
            reply.cancel()
            log.warning("a replica was lost before answering: %s", err)
            message = "the replica answering this request was lost; retry"
            return error(503, message, code="replica_lost", headers={"Retry-After": "1"})
        stream = (b"content-type", b"text/event-stream") in [(k.lower(), v.split(b";")[0]) for k, v in headers]
        response = StreamingResponse(self._relay(reply, stream), status)
        response.raw_headers = headers
        return response

    async def _relay(self, reply, stream):
        """The body chunks as the replica sends them; a replica lost mid-body ends it (a stream, with an error
        event as serve.py's); a client that goes away cancels the request on the replica."""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reply.__anext__(), REPLY_TIMEOUT_S)
                except StopAsyncIteration:
                    return
                yield chunk
        except LOST as err:
            reply.cancel()
            log.warning("a replica was lost mid-answer: %s", err)
            if stream:
                yield b"data: " + error(503, "the replica answering this request was lost").body + b"\n\n"
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            reply.cancel()
            raise


class _Disconnects:
    """Once a client has gone, Ray's proxy cancels its request and Serve's receive() raises (TaskCancelledError)
    where an ASGI app waits for http.disconnect (a StreamingResponse does, to the end): it gets that message."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def disconnect_when_cancelled():
            try:
                return await receive()
            except RayError:
                return {"type": "http.disconnect"}

        await self.app(scope, disconnect_when_cancelled, send)


def application(workdir, answering, config):
    """The Serve application: Router over config.replicas Replicas, each on config.threads CPUs (one GPU with
    --device cuda)."""
    cuda = (answering.device or "").startswith("cuda")
    replicas = Replica.options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_batch,
        max_queued_requests=config.max_queue,
        graceful_shutdown_timeout_s=DRAIN_S,
        ray_actor_options={"num_cpus": config.threads or 1, "num_gpus": 1 if cuda else 0},
    ).bind(workdir, answering, config)
    # The router holds what the replicas take and the queue, and as many again, refused at once with 503.
    held = 2 * (config.replicas * config.max_batch + config.max_queue)
    return Router.options(
        max_ongoing_requests=held, graceful_shutdown_timeout_s=DRAIN_S, ray_actor_options={"num_cpus": 0}
    ).bind(replicas, workdir, answering, config)


def serve_ray(workdir, answering, config):
    """Serve the work directory from config.replicas replicas on the Ray cluster at config.ray ("": a new local
    one) until SIGINT/SIGTERM, then shut Serve down once what is in flight is answered."""
    open_index(workdir, "cpu", answering.retriever)  # a work directory that cannot serve: one line, before Ray
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        ray.init(address=config.ray or None, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as err:
        raise PragError(f"--ray {config.ray}: {err}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        try:
            serve.run(application(workdir, answering, config), name=APP, route_prefix="/")
        except RuntimeError:  # a replica could not start (Ray has logged its traceback): the error's last line
            failed = [d.message for d in serve.status().applications[APP].deployments.values() if d.message]
            raise PragError(f"a replica could not start: {failed[-1].strip().splitlines()[-1]}") from None
        log.info("serving on http://%s:%d from %d replicas", config.host, config.port, config.replicas)
        stop.wait()
        log.info("shutting down: answering the requests in flight")
    finally:  # deleting the app drains it (serve.shutdown would kill the proxy under the requests in flight)
        serve.delete(APP)
        ray.shutdown()
