"""The `prag` command line. Each subcommand is a thin wrapper over a prag_core module.

Errors the user can fix (bad files, unknown ids, missing model) end in one line
on stderr and exit status 2, never a traceback.
"""
import argparse
import sys

from . import __version__


class UserError(Exception):
    """An error caused by input; printed as one line, exit status 2."""


def _add_ask(sub):
    p = sub.add_parser("ask", help="answer one question from a work directory")
    p.add_argument("--workdir", required=True, help="work directory written by `prag build`")
    p.add_argument("--mode", default="prag", help="vanilla, rag, prag (default) or combine")
    p.add_argument("--update", default="fused", help="fused (default, the kernel) or merge (the baseline)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("question")
    p.set_defaults(func=cmd_ask)


def cmd_ask(args):
    from .pipeline import Pipeline, check_request

    check_request(args.question, args.mode, args.update)
    answer = Pipeline.open(args.workdir, device=args.device).answer([args.question], args.mode, args.update)[0]
    print(answer.prediction)
    print(f"documents: {', '.join(answer.docs) or '(none)'}")
    print(f"time: {answer.latency_s:.2f}s")


def _add_eval(sub):
    p = sub.add_parser("eval", help="answer a qa.jsonl file in several modes; EM/F1/acc/latency table, results.json")
    p.add_argument("--workdir", required=True, help="work directory written by `prag build`")
    p.add_argument("--questions", required=True, help="qa.jsonl: {id, question, answers} per line")
    p.add_argument("--modes", default="vanilla,rag,prag,combine", help="comma-separated (default: all four)")
    p.add_argument("--update", default="fused", help="fused (default) or merge")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="questions per generate call (fused)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, help="results.json to write")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
    from .evaluate import run

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run(args.workdir, args.questions, modes, args.update, args.batch_size, args.out, args.device)


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job: the shipped demo corpus, end to end, on the embedded model")
    p.add_argument("--workdir", default=None, help="where to build (default: $PRAG_CACHE/demo)")
    p.add_argument("--model", default=None, help="model name or path (default: embedded SmolLM2-135M)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from .demo import run

    run(workdir=args.workdir, model=args.model, device=args.device)


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="prag", description="Parametric RAG: documents as LoRA pairs, applied by one fused kernel.")
    parser.add_argument("--version", action="version", version=f"prag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_ask(sub)
    _add_eval(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    from .corpus import CorpusError
    from .doc_params import DocParamsError
    from .model import ModelLoadError
    from .pipeline import PipelineError
    from .retrieval import RetrievalError
    try:
        args.func(args)
    except (UserError, ModelLoadError, CorpusError, DocParamsError, PipelineError, RetrievalError) as err:
        print(f"prag: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
