"""The `prag` command line. Each subcommand is a thin wrapper over a prag_core module.

Errors the user can fix (bad files, unknown ids, missing model) end in one line
on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys

from prag_core import __version__, commands
from prag_core.commands import STORE_DTYPES
from prag_core.errors import PragError

EXPERIMENTAL = "experimental variants"
EXPERIMENTAL_HELP = (
    "kept for research: at these flags' non-default values each measured below the defaults on the "
    "dev set (docs/decisions.md)"
)
BUILT_WORKDIR_HELP = "work directory written by `prag build`"
DEVICE_HELP = "cpu or cuda (default: cuda when available)"
WARMUP_DEFAULT = "shipped"  # `prag build --warmup` (docs/decisions.md, Warm-up pair)


def _add_build(sub):
    from prag_core.offline.train_config import DTYPE_NAMES, OBJECTIVES, TrainConfig
    from prag_core.pairs.choices import INITS
    from prag_core.retrieval.retrievers import RETRIEVER, RETRIEVERS

    p = sub.add_parser("build", help="index + augment + encode a corpus into a work directory (resumable)")
    p.add_argument("--corpus", required=True, help="corpus.jsonl: {id, text, title?} per line")
    p.add_argument("--workdir", required=True, help="work directory to create or resume")
    p.add_argument("--model", default=None, help="model name or path (default: embedded SmolLM2-135M)")
    p.add_argument("--rank", type=_positive_int, default=TrainConfig.rank, help="LoRA rank r per document")
    p.add_argument("--alpha", type=float, default=TrainConfig.alpha, help="α per document")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="AdamW learning rate")
    p.add_argument(
        "--epochs", type=_positive_int, default=TrainConfig.epochs, help="passes over a document's sequences"
    )
    p.add_argument("--targets", default=None, help="FFN projections to train, comma-separated (default: all)")
    p.add_argument("--dtype", default=TrainConfig.dtype, choices=list(DTYPE_NAMES), help="model and pair dtype")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of the B init")
    p.add_argument(
        "--warmup",
        default=WARMUP_DEFAULT,
        metavar="PATH|none",
        help=f"a corpus.jsonl of documents outside the knowledge base to train the warm-up pair on, "
        f"'shipped' for prag's own, or none (default {WARMUP_DEFAULT})",
    )
    p.add_argument(
        "--construction",
        default=TrainConfig.construction,
        choices=["prag", "cross"],
        help="training sequences: prag (PRAG's 5) or cross (every version x every QA pair)",
    )
    p.add_argument("--batch-docs", type=_positive_int, default=4, help="documents trained together in one batch")
    p.add_argument("--n-rewrites", type=int, default=1, help="rewrites per document")
    p.add_argument("--n-qa", type=_positive_int, default=3, help="question/answer pairs per document")
    p.add_argument(
        "--retriever",
        default=RETRIEVER,
        choices=list(RETRIEVERS),
        help=f"bm25, dense (sentence embeddings) or hybrid (their reciprocal rank fusion); default "
        f"{RETRIEVER}, measured best (docs/decisions.md)",
    )
    p.add_argument(
        "--passage-words",
        type=_positive_int,
        default=None,
        metavar="N",
        help="split documents into passages of about N words on sentence boundaries, each retrieved "
        "and trained on its own as ID#1, ID#2, ... (default: whole documents)",
    )
    p.add_argument(
        "--embedder",
        default=None,
        metavar="PATH_OR_NAME",
        help="sentence-transformers model of dense and hybrid (default: the shipped all-MiniLM-L6-v2)",
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--store-dtype",
        default=None,
        choices=list(STORE_DTYPES),
        help="dtype of the stored pairs (a new store; default fp32): bf16 or fp16 halve the size",
    )
    p.add_argument(
        "--shard-size",
        type=_positive_int,
        default=None,
        help="pack this many documents per shard file (a new store; default: one file per document)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="allow settings other than the work directory's config.json records: every stored "
        "document is encoded again (without it such a rebuild is refused)",
    )
    _add_ray(p, "augment and train")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="Ray workers (default: one per GPU of the cluster, else one per CPU)",
    )
    x = p.add_argument_group(EXPERIMENTAL, EXPERIMENTAL_HELP)
    x.add_argument(
        "--init",
        default=TrainConfig.init,
        choices=list(INITS),
        help=f"how each document's B starts: shared (one seeded init for all, PRAG), document (seeded "
        f"by the document's text), orthogonal (orthonormal columns, per document); default "
        f"{TrainConfig.init}",
    )
    x.add_argument(
        "--objective",
        default=TrainConfig.objective,
        choices=list(OBJECTIVES),
        help=f"training loss: ntp (next-token, PRAG), distill (KL to the model reading the passage), "
        f"both; default {TrainConfig.objective}",
    )
    x.add_argument(
        "--augmenter",
        default="fallback",
        choices=["model", "fallback"],
        help="who writes rewrites and QA pairs: the deterministic fallback (cloze pairs; default, "
        "measured best on SmolLM2), or an LLM (see --augment-model), its pairs filtered",
    )
    x.add_argument(
        "--augment-model",
        default=None,
        help="the LLM that writes them, a name or path (default: the model being trained)",
    )
    p.set_defaults(func=commands.cmd_build)


def _add_ask(sub):
    p = _workdir_command(sub, "ask", help="answer one question from a work directory")
    p.add_argument("--mode", default="prag", help="vanilla, rag, prag (default) or combine")
    p.add_argument("--update", default="fused", help="fused (default, the kernel) or merge (the baseline)")
    p.add_argument("--explain", action="store_true", help="show each hop: its documents, scores, weights and answer")
    _add_answer_options(p)
    p.add_argument("question")
    p.set_defaults(func=commands.cmd_ask)


def _add_eval(sub):
    p = _workdir_command(
        sub, "eval", help="answer a qa.jsonl file in several modes; EM/F1/acc/latency table, results.json"
    )
    p.add_argument("--questions", required=True, help="qa.jsonl: {id, question, answers} per line")
    p.add_argument("--modes", default="vanilla,rag,prag,combine", help="comma-separated (default: all four)")
    p.add_argument("--update", default="fused", help="fused (default) or merge")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="questions per generate call (fused)")
    _add_answer_options(p)
    p.add_argument("--out", required=True, help="results.json to write (rewritten per answer: a stop keeps them)")
    p.set_defaults(func=commands.cmd_eval)


def _add_ray(p, does):
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help=f"{does} on the Ray cluster at ADDRESS, or on a new local one without it (prag[ray])",
    )


def _add_serve(sub):
    from prag_core.answer.config import MAX_BODY_BYTES

    p = _workdir_command(sub, "serve", help="an OpenAI-compatible HTTP API over a work directory (prag[serve])")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--max-batch", type=_positive_int, default=16, help="requests per generate call (default 16)")
    p.add_argument(
        "--batch-window-ms",
        type=_positive_float,
        default=10.0,
        help="how long a batch waits for more requests after its first (default 10)",
    )
    p.add_argument(
        "--max-queue",
        type=_positive_int,
        default=64,
        help="requests admitted at once, queued or being answered; more get 503 (default 64)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("PRAG_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1/ routes (default $PRAG_API_KEY, else none)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=MAX_BODY_BYTES,
        metavar="N",
        help=f"a request whose body is larger gets 413 before it is read (default {MAX_BODY_BYTES}, 1 MiB)",
    )
    p.add_argument(
        "--served-model-name",
        nargs="+",
        default=(),
        metavar="NAME",
        help="the model name(s) clients may send, as vLLM's flag: the first is listed by /v1/models and answered "
        "as (default: the model folder's name); requests naming the model folder are answered too",
    )
    _add_answer_options(p)
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: torch's; on a machine shared with other jobs 1 is fastest)",
    )
    _add_ray(p, "serve from replicas")
    p.add_argument(
        "--replicas",
        type=_positive_int,
        default=None,
        metavar="N",
        help="--ray: copies of the server, each with its own model and batch, each on --threads CPUs (default 1)",
    )
    p.set_defaults(func=commands.cmd_serve)


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job: the shipped demo corpus, end to end, on the embedded model")
    p.add_argument("--workdir", default=None, help="where to build (default: $PRAG_CACHE/demo)")
    p.add_argument("--model", default=None, help="model name or path (default: embedded SmolLM2-135M)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.set_defaults(func=commands.cmd_demo)


def _add_export_peft(sub):
    p = _workdir_command(sub, "export-peft", help="write documents' pairs as a standard PEFT LoRA adapter folder")
    p.add_argument("--docs", required=True, help="ID[,ID...]: one document, or several concatenated along rank")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--force", action="store_true", help="overwrite an adapter already in --out")
    p.set_defaults(func=commands.cmd_export_peft)


def _add_store(sub):
    p = sub.add_parser("store", help="the parameter store of a work directory")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = _workdir_command(
        actions,
        "verify",
        help="check every document of the catalog against its bytes; print every problem; exit 1 if any",
    )
    v.add_argument(
        "--repair",
        action="store_true",
        help="drop the documents concerned, so `prag build` encodes them again; list the payload "
        "files in a new catalog if it is lost or unreadable",
    )
    v.set_defaults(func=commands.cmd_store_verify)


def _workdir_command(sub, name, help):
    """A subcommand that reads a built work directory (--workdir, required)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--workdir", required=True, help=BUILT_WORKDIR_HELP)
    return p


def _add_answer_options(p):
    """The flags of pipeline.AnswerConfig (commands._answer_config reads them back)."""
    from prag_core.answer.config import COMBINATION, MAX_HOPS, TEMPERATURE, TOP_K
    from prag_core.pairs.choices import SCHEMES
    from prag_core.retrieval.retrievers import RETRIEVERS

    p.add_argument(
        "--retriever",
        default=None,
        choices=list(RETRIEVERS),
        help="override the work directory's retriever (its indexes must have been built)",
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=TOP_K, help=f"documents retrieved per question (default {TOP_K})"
    )
    p.add_argument_group(EXPERIMENTAL, EXPERIMENTAL_HELP).add_argument(
        "--combination",
        default=COMBINATION,
        choices=list(SCHEMES),
        help=f"how the k documents' pairs combine: sum (PRAG, α each), mean (α/k each), score (α times "
        f"a softmax of the retrieval scores / --temperature), dyprag (one pair: mean A, mean B); "
        f"default {COMBINATION}",
    )
    p.add_argument(
        "--temperature",
        type=_positive_float,
        default=TEMPERATURE,
        help=f"softmax temperature of --combination score, in units of the retriever's score scale "
        f"(BM25: its scores; default {TEMPERATURE:g})",
    )
    p.add_argument(
        "--max-hops",
        type=_positive_int,
        default=MAX_HOPS,
        help="Retrieve-Update-Generate rounds per question: the next round retrieves with the question and the "
        "answers so far, and a question stops when its retrieval brings no new document or its answer does not "
        f"change (default {MAX_HOPS})",
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--pool-slots",
        type=int,
        default=0,
        metavar="P",
        help="keep up to P documents' pairs loaded in a fixed pool and decode over a static KV cache (fixed "
        "shapes; CUDA graphs on a GPU); at most 64 // rank; default 0: stack each batch's documents",
    )


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _port(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port, 1-65535, got {text!r}")
    return int(text)


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line refusal: `prag <cmd>: error: ...` and where to look, not the usage
    block (exit status 2, as argparse's)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if "_parser" not in vars(namespace):  # the innermost (sub)command's parser parses first
            namespace._parser = self
        return namespace, extra

    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        parser = vars(namespace).pop("_parser", self)
        if extra:  # a subcommand's unknown arguments reach the top parser: blame the subcommand
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nsee `{self.prog} --help`\n")


def build_parser():
    parser = _Parser(prog="prag", description="Parametric RAG: documents as LoRA pairs, applied by one fused kernel.")
    parser.add_argument("--version", action="version", version=f"prag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_build(sub)
    _add_demo(sub)
    _add_ask(sub)
    _add_eval(sub)
    _add_export_peft(sub)
    _add_store(sub)
    _add_serve(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        status = args.func(args)
    except PragError as err:
        print(f"prag: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the user gave that cannot be written or read (a file, read-only, full)
        where = f"{err.filename}: " if err.filename else ""
        print(f"prag: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prag: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
