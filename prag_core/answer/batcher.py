"""The scheduler of `prag serve` (answer/serve.py is its HTTP layer): continuous batching.

Batcher: one thread owns the model and a RunningBatch (answer/running_batch.py). Between two decode steps it takes
the requests waiting, up to max_batch rows in all, prepares each (Pipeline.prepare: a bad request fails alone)
and joins them to the batch after their prefill; a row that finishes leaves at once and is answered, so its
place is free for the next request at the next step. Each row has its own mode and documents (the kernel's
per-row path) and its answer is the one it gets alone. When the batch is empty, the first request waits up to
the batch window for others to prefill with it. `update: merge` requests with pairs run alone, one after the
other (merging changes the weights every row sees): the requests behind one wait until the batch has drained
and it has run. At most max_queue requests are admitted at once (queued or being answered); more get Busy (503).

A streamed row whose client disconnects is cancelled and leaves at the next step; its batch-mates go on.
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prag_core.answer.config import PAIR_MODES
from prag_core.answer.requests import PipelineError, Request
from prag_core.answer.running_batch import RunningBatch
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
    stream_at_end: bool = False  # a stream whose answer a later hop may change: sent whole when final
    spent_s: float = 0.0  # the latency of its earlier hops

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
        self._held = deque()  # taken from the queue but not joined yet: a merge Job or the stop, and what follows
        self.running = RunningBatch(pipeline)
        self._hops = []  # (job, Row) of questions whose next hop joins at the next step
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
        job = Job(
            request, update, asyncio.get_running_loop(), stream_at_end=stream and self.pipeline.config.max_hops > 1
        )
        request.cancel = threading.Event()
        if stream and not job.stream_at_end:
            request.on_text = lambda piece: job.emit("text", piece)
        self._queue.put(job)
        return job

    def _loop(self):
        jobs = {}  # id(Row) -> its Job, for the rows in the running batch
        while (taken := self._take()) is not None:
            if taken and taken[0].merges:
                self._merge(taken[0])
                continue
            prepared = [p for job in taken if (p := self._prepared(job)) is not None]
            if self._hops and self.running.can_join():  # questions going on to their next hop join first
                prepared = [*self._hops, *prepared]
                self._hops.clear()
            jobs.update((id(row), job) for job, row in prepared)
            try:
                if prepared:
                    joined = self.running.join([row for _, row in prepared])
                    self._answered(jobs, joined, f"joined {len(prepared)} rows")
                self._answered(jobs, self.running.step())
            except Exception as err:  # not the requests' fault (they were prepared): every row gets a 500
                log.exception("decode step of %d rows failed", len(self.running))
                self.running.clear()
                for job in jobs.values():
                    self._finish(job, "error", err)
                jobs.clear()

    def _take(self):
        """The jobs to join the running batch now ([] for none), [a merge job] to run alone, or None when closing
        (once nothing runs). With rows running it waits for nothing; with none, for the first job, then up to
        the batch window for more. A merge job, or the stop, waits until the batch has drained."""
        taken = []
        deadline = None
        while len(self.running) + len(self._hops) + len(taken) < self.max_batch and self.running.can_join():
            busy = len(self.running) > 0 or self._hops or taken
            if self._held:
                job = self._held.popleft()
            else:
                try:
                    wait = None if not busy else 0 if deadline is None else max(0.0, deadline - time.monotonic())
                    job = self._queue.get(timeout=wait) if wait != 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            if job is None or job.merges:
                if busy:
                    self._held.appendleft(job)
                    break
                return None if job is None else [job]
            taken.append(job)
            if len(self.running) == 0 and deadline is None:
                deadline = time.monotonic() + self.window_s
        return taken

    def _prepared(self, job):
        """(job, row) if the job prepares, else None (it is answered with its error now)."""
        try:
            row = self.pipeline.prepare(job.request)
        except Exception as err:  # the request's own error (a 4xx), or a bug (a 500, logged); it fails alone
            if not isinstance(err, REQUEST_ERRORS):
                log.exception("preparing a request failed")
            self._finish(job, "error", err)
            return None
        job.emit("ready", row)
        return job, row

    def _answered(self, jobs, finished, event=None):
        """Answer the Jobs of rows that `finished` ([(Row, Answer)]), or send them on to their next hop; log
        `event` and each finish."""
        if event:
            log.info("%s: %d running", event, len(self.running) + len(finished))
        for row, answer in finished:
            job = jobs.pop(id(row))
            answer.latency_s += job.spent_s
            try:
                later = None if answer.finish == "cancelled" else self.pipeline.next_hop(row, answer)
            except Exception as err:  # the retrieval of the next hop failed: not the request's fault
                log.exception("the next hop of a row failed")
                self._finish(job, "error", err)
                continue
            if later is not None:
                job.spent_s = answer.latency_s
                self._hops.append((job, later))
                continue
            log.info(
                "row done (%s): %d tokens, %d hops, %.2f s, %d running",
                answer.finish,
                answer.tokens,
                len(answer.hops),
                answer.latency_s,
                len(self.running),
            )
            if job.stream_at_end and answer.prediction:
                job.emit("text", answer.prediction)
            self._finish(job, "done", answer)

    def _merge(self, job):
        """A merge job, alone (the batch is empty: merging changes the weights every row sees)."""
        prepared = self._prepared(job)
        if prepared is None:
            return
        try:
            answer = self.pipeline.run([prepared[1]], "merge")[0]
        except Exception as err:  # not the request's fault: a 500
            log.exception("a merged row failed")
            self._finish(job, "error", err)
            return
        log.info("merged row done (%s): %d tokens, %.2f s", answer.finish, answer.tokens, answer.latency_s)
        self._finish(job, "done", answer)

    def _finish(self, job, kind, value):
        with self._lock:
            self.admitted -= 1
        job.emit(kind, value)


# ---- the HTTP layer ----
