"""The `prag` command line. Each subcommand is a thin wrapper over a prag_core module.

Errors the user can fix (bad files, unknown ids, missing model) end in one line
on stderr and exit status 2, never a traceback.
"""
import argparse
import sys

from . import __version__


class UserError(Exception):
    """An error caused by input; printed as one line, exit status 2."""


def cmd_demo(args):
    import time

    import torch

    from .model import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    print(f"prag {__version__}, torch {torch.__version__}, model {model.config.model_type} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), "
          f"loaded in {time.perf_counter() - start:.1f}s")
    question = "What is the capital of France?"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    print(f"Q: {question}\nA: {tokenizer.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True)}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="prag", description="Parametric RAG: documents as LoRA pairs, applied by one fused kernel.")
    parser.add_argument("--version", action="version", version=f"prag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job: the shipped demo corpus, end to end, on the embedded model")
    demo.add_argument("--model", default=None, help="model name or path (default: embedded SmolLM2-135M)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    from .model import ModelLoadError
    try:
        args.func(args)
    except (UserError, ModelLoadError) as err:
        print(f"prag: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
