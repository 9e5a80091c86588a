"""The scheduler of `prag serve` (answer/serve.py is its HTTP layer).

Batcher: one thread owns the model. It takes the oldest request, prepares it (Pipeline.prepare: a bad request
fails alone, before it joins a batch), adds every fused request that arrives within the batch window, up to
max_batch, and answers them in one Pipeline.run call, each row with its own mode and documents (the kernel's
per-row path). `update: merge` requests with pairs run alone, one after the other: merging changes the weights
every row sees. At most max_queue requests are admitted at once (queued or being answered); more get Busy (503).

A batch is fixed once it starts (no rows join a running generate call); a streamed row whose client
disconnects is cancelled and stops at the next step, its batch-mates go on.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prag_core.answer.requests import PAIR_MODES, PipelineError, Request
from prag_core.pairs.doc_params import DocParamsError
from prag_core.retrieval.bm25 import RetrievalError
from prag_core.storage.store import StoreError

log = logging.getLogger("prag.serve")
REQUEST_ERRORS = (PipelineError, RetrievalError, DocParamsError, StoreError)  # a request's own fault: a 4xx


class Busy(Exception):
    """The server holds max_queue requests already."""


@dataclass
class Job:
    """One admitted request and the events the batcher sends back to its HTTP handler:
    ("ready", Row), then ("text", piece)... (streams only), then ("done", Answer); or ("error", exception)."""

    request: Request
    update: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    @property
    def merges(self):
        return self.update == "merge" and self.request.mode in PAIR_MODES

    def emit(self, kind, value):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class Batcher:
    """Answers submitted Requests in batches on its own thread (see the module docstring)."""

    def __init__(self, pipeline, max_batch=16, window_s=0.01, max_queue=64):
        self.pipeline, self.max_batch, self.window_s, self.max_queue = pipeline, max_batch, window_s, max_queue
        self.admitted = 0  # requests queued or being answered
        self._lock = threading.Lock()
        self._queue = queue.Queue()  # Jobs, then None to stop
        self._held = deque()  # taken from the queue while a fused batch formed, for later: merge Jobs, the stop
        self._thread = threading.Thread(target=self._loop, name="prag-batcher", daemon=True)

    def start(self):
        self._thread.start()

    def close(self):
        """Answer what was submitted, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit(self, request, update="fused", stream=False):
        """The Job for `request` (call from the event loop); Busy when max_queue requests are admitted."""
        with self._lock:
            if self.admitted >= self.max_queue:
                raise Busy(f"{self.admitted} requests in flight")
            self.admitted += 1
        job = Job(request, update, asyncio.get_running_loop())
        request.cancel = threading.Event()
        if stream:
            request.on_text = lambda piece: job.emit("text", piece)
        self._queue.put(job)
        return job

    def _loop(self):
        while (batch := self._next_batch()) is not None:
            if batch:
                self._answer(batch)

    def _next_batch(self):
        """(job, row) pairs to answer together ([] if every job taken failed to prepare), or None when closing:
        the oldest job (held merge jobs first), alone if it merges, else with every fused job that arrives
        within the window, up to max_batch; merge jobs met meanwhile wait for the batches after it."""
        first = self._held.popleft() if self._held else self._queue.get()
        if first is None:
            return None
        batch = self._prepared(first)
        if first.merges:
            return batch
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None or job.merges:
                self._held.append(job)
                if job is None:  # closing: nothing comes after the stop
                    break
            else:
                batch += self._prepared(job)
        return batch

    def _prepared(self, job):
        """[(job, row)] if the job prepares, else [] (it is answered with its error now)."""
        try:
            row = self.pipeline.prepare(job.request)
        except Exception as err:  # the request's own error (a 4xx), or a bug (a 500, logged); it fails alone
            if not isinstance(err, REQUEST_ERRORS):
                log.exception("preparing a request failed")
            self._finish(job, "error", err)
            return []
        job.emit("ready", row)
        return [(job, row)]

    def _answer(self, batch):
        update = "merge" if batch[0][0].merges else "fused"
        start = time.perf_counter()
        try:
            answers = self.pipeline.run([row for _, row in batch], update)
        except Exception as err:  # not the requests' fault (they were prepared): every row gets a 500
            log.exception("batch of %d rows failed", len(batch))
            for job, _ in batch:
                self._finish(job, "error", err)
            return
        cancelled = sum(a.finish == "cancelled" for a in answers)
        log.info(
            "batch of %d rows (%s): %d steps, %d cancelled, %.2f s",
            len(batch),
            update,
            max(a.tokens for a in answers),
            cancelled,
            time.perf_counter() - start,
        )
        for (job, _), answer in zip(batch, answers):
            self._finish(job, "done", answer)

    def _finish(self, job, kind, value):
        with self._lock:
            self.admitted -= 1
        job.emit(kind, value)


# ---- the HTTP layer ----
