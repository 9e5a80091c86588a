"""How a work directory answers and serves: the modes, the serving defaults, AnswerConfig and ServeConfig, without
importing torch (`prag --help` reads them)."""

from dataclasses import dataclass

MODES = ("vanilla", "rag", "prag", "combine")
PAIR_MODES = ("prag", "combine")  # the modes that apply documents' pairs
UPDATES = ("fused", "merge")
# Serving defaults: documents per question and how their pairs combine (docs/decisions.md, Top-k: 3, combined
# by score at T = 1).
TOP_K = 3
COMBINATION = "score"
TEMPERATURE = 1.0
MAX_HOPS = 2  # Retrieve-Update-Generate rounds per question (docs/decisions.md, Hops)
MAX_BODY_BYTES = 2**20  # `prag serve --max-body-bytes`: a chat request is a few KiB, 1 MiB is far more than fits


@dataclass(frozen=True)
class AnswerConfig:
    """How a work directory answers (`prag ask`, `eval`, `serve`): each request's defaults, and where.
    retriever None: the work directory's; device None: cuda when available. pool_slots > 0: fused batches of
    up to pool_rows rows take their documents from a model.pool.DocumentPool of that many slots, decoding over a
    static KV cache (fixed shapes: on CUDA, Hugging Face's generate compiles the step into CUDA graphs).
    max_hops: Retrieve-Update-Generate rounds a question may take (answer/pipeline.py, Hops)."""

    top_k: int = TOP_K
    combination: str = COMBINATION
    temperature: float = TEMPERATURE
    retriever: str | None = None
    max_new_tokens: int = 32
    device: str | None = None
    pool_slots: int = 0
    pool_rows: int = 16
    max_hops: int = MAX_HOPS


@dataclass(frozen=True)
class ServeConfig:
    """How `prag serve` listens and batches. window_ms: how long a batch waits for more requests after its first;
    max_queue: requests admitted at once (more get 503); threads: torch CPU threads (None: torch's);
    max_body_bytes: a larger request body gets 413 before it is read; served_model_names: the names clients may
    give as `model` (the first is listed and answered as; empty: the model folder's name); ray: None, this process
    serves; else the address of the Ray cluster whose Serve runs `replicas` copies of this server behind one
    entry point ("": a new local cluster; answer/serve_ray.py)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    window_ms: float = 10.0
    max_queue: int = 64
    api_key: str | None = None
    threads: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    served_model_names: tuple = ()
    ray: str | None = None
    replicas: int = 1
