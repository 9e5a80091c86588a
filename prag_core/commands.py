"""What each `prag` subcommand does, given its parsed arguments (cli.py defines the arguments): thin wrappers
over prag_core's modules, which are imported only when their command runs (so `prag --help` stays fast)."""

import importlib.util
import sys

from prag_core.errors import PragError

STORE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --store-dtype spellings


def cmd_build(args):
    import warnings

    import torch

    from prag_core.offline.build import BuildConfig, build
    from prag_core.offline.train_config import TrainConfig

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"prag: warning: {message}", file=sys.stderr)

    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise PragError("--ray needs Ray: pip install 'prag[ray]'")
    if args.workers is not None and args.ray is None:
        raise PragError("--workers applies to --ray builds")
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
    try:
        config = _config(TrainConfig, args, targets=targets, warmup=None)  # build sets the warm-up pair's sha
    except ValueError as err:
        raise PragError(str(err)) from None
    options = _config(
        BuildConfig,
        args,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        storage_dtype=STORE_DTYPES.get(args.store_dtype),
        warmup=_warmup_path(args.warmup),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        summary = build(args.corpus, args.workdir, config, options)
    print(summary)


def _warmup_path(value):
    """--warmup: None for 'none', the shipped corpus for 'shipped', else the path as given."""
    from prag_core.offline.warmup import WARMUP_CORPUS

    return None if value == "none" else WARMUP_CORPUS if value == "shipped" else value


def cmd_ask(args):
    from prag_core.answer.pipeline import Pipeline
    from prag_core.answer.requests import check_request

    check_request(args.question, args.mode, args.update, args.combination, args.temperature)
    pipeline = Pipeline.open(args.workdir, _answer_config(args, 1))
    answer = pipeline.answer([args.question], args.mode, args.update)[0]
    print(answer.prediction)
    print(f"documents: {', '.join(answer.docs) or '(none)'}")
    if args.explain:
        for i, hop in enumerate(answer.hops, 1):
            weights = hop.weights or [None] * len(hop.docs)
            print(f"hop {i}: {hop.answer!r}")
            for doc, score, weight in zip(hop.docs, hop.scores, weights):
                score = f"score {score:.3f}" if score is not None else "named"
                print(f"  {doc}  {score}" + (f", weight {weight:.3f}" if weight is not None else ""))
    print(f"time: {answer.latency_s:.2f}s")


def cmd_eval(args):
    from prag_core.answer.evaluate import run

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    run(
        args.workdir,
        args.questions,
        _answer_config(args, args.batch_size),
        modes,
        args.update,
        args.batch_size,
        args.out,
    )


def cmd_serve(args):
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise PragError("prag serve needs FastAPI and uvicorn: pip install 'prag[serve]'")
    if args.replicas is not None and args.ray is None:
        raise PragError("--replicas applies to --ray serving")
    from prag_core.answer.config import ServeConfig
    from prag_core.answer.serve import serve

    answering = _answer_config(args, args.max_batch)
    config = _config(
        ServeConfig,
        args,
        window_ms=args.batch_window_ms,
        served_model_names=tuple(args.served_model_name),
        replicas=args.replicas or 1,
    )
    if config.ray is None:
        return serve(args.workdir, answering, config)
    try:
        from prag_core.answer.serve_ray import serve_ray
    except ImportError:
        raise PragError("prag serve --ray needs Ray Serve: pip install 'prag[ray]'") from None
    serve_ray(args.workdir, answering, config)


def cmd_demo(args):
    from prag_core.demo import run

    run(workdir=args.workdir, model=args.model, device=args.device)


def cmd_export_peft(args):
    from prag_core.storage.workdir import Workdir

    doc_ids = [d.strip() for d in args.docs.split(",") if d.strip()]
    if not doc_ids:
        raise PragError("--docs: no document id given")
    out = Workdir(args.workdir).export_peft(doc_ids, args.out, force=args.force)
    print(f"wrote {out} ({len(doc_ids)} document{'s' if len(doc_ids) > 1 else ''})")


def cmd_store_verify(args):
    from prag_core.storage.verify import run_verify
    from prag_core.storage.workdir import Workdir

    workdir = Workdir(args.workdir)
    with workdir.lock() as lock:
        if args.repair and workdir.root.is_dir():
            lock.acquire()  # --repair writes: not while a build does (another writer is refused, by pid)
        return run_verify(workdir.store_folder, repair=args.repair)


def _config(cls, args, **given):
    """The dataclass `cls` from the parsed flags whose names are its fields' (argparse's dest), `given` (the
    fields whose flag is spelled or typed differently) taking precedence; fields without a flag keep defaults."""
    import dataclasses

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**flags, **given})


def _answer_config(args, rows):
    """The AnswerConfig of cli._add_answer_options' flags, for batches of up to `rows` questions."""
    from prag_core.answer.config import AnswerConfig

    return _config(AnswerConfig, args, pool_rows=rows)
