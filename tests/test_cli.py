"""`prag ask` and `prag eval` through prag_core.cli.main on a work directory built by `prag build` with a
tiny model saved to disk: output, results.json, and one-line errors."""

import json
import re
import shutil

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from prag_core.answer.config import MODES
from prag_core.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = [
    {"id": "kite", "title": "Kite", "text": "Tom has a red kite. It flies over Leeds."},
    {"id": "bell", "text": "The bell rings at 9. Ana rings it."},
    {"id": "figs", "text": "Bo eats 3 figs. Figs are sweet in May."},
    {"id": "dog", "text": "Kai's dog is Rex. Rex barks at Lulu."},
]
QA = [
    {"id": "q1", "question": "What color is Tom's kite?", "answers": ["red"]},
    {"id": "q2", "question": "When does the bell ring?", "answers": ["at 9", "9"]},
    {"id": "q3", "question": "How many figs does Bo eat?", "answers": ["3", "three"]},
    {"id": "q4", "question": "What is the name of Kai's dog?", "answers": ["Rex"]},
]


def save_tiny(folder, seed):
    tiny_llama(seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(work directory, qa.jsonl) built once by `prag build`: tiny model, fallback augmentation, 1 epoch."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write(root / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in DOCS))
    model = save_tiny(root / "model", seed=0)
    assert (
        main(
            [
                "build",
                "--corpus",
                str(corpus),
                "--workdir",
                str(root / "W"),
                "--model",
                str(model),
                "--epochs",
                "1",
                "--batch-docs",
                "4",
                "--augmenter",
                "fallback",
                "--warmup",
                "none",
                "--retriever",
                "bm25",
            ]
        )
        == 0
    )  # the rankings asserted below are BM25's
    return root / "W", write(root / "qa.jsonl", "".join(json.dumps(q) + "\n" for q in QA))


@pytest.fixture
def workdir(built, tmp_path):
    """A private copy of the built work directory, free to damage."""
    return shutil.copytree(built[0], tmp_path / "W")


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `prag argv...`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("prag: error: "), err
    for fragment in fragments:
        assert fragment in last, last


def test_unknown_workdir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path / "nowhere"), "Who built it?")
    assert_one_line_error(code, err, "nowhere", "no such work directory")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(tmp_path / "empty"),
        "--questions",
        str(write(tmp_path / "qa.jsonl", '{"id": "1", "question": "Who?", "answers": ["x"]}\n')),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert_one_line_error(code, err, "empty", "not a prag work directory")


def test_empty_question(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path), "   ")
    assert_one_line_error(code, err, "question: empty")


@pytest.mark.parametrize(
    "line, fragment",
    [
        (
            '{"id": "1", "question": "Who?", "answers": ["x"]}\n{"id": "2", "question": "Who?"\n',
            "qa.jsonl:2: malformed JSON",
        ),
        ('{"id": "1", "question": "", "answers": ["x"]}\n', "qa.jsonl:1: field 'question' is empty"),
        ('{"id": "1", "question": "Who?", "answers": []}\n', "qa.jsonl:1: field 'answers' is an empty list"),
    ],
)
def test_malformed_questions_file(capsys, tmp_path, line, fragment):
    code, _, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(tmp_path),
        "--questions",
        str(write(tmp_path / "qa.jsonl", line)),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r.json").exists()


def test_unknown_mode_and_update(capsys, tmp_path):
    qa = write(tmp_path / "qa.jsonl", '{"id": "1", "question": "Who?", "answers": ["x"]}\n')
    code, _, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(tmp_path),
        "--questions",
        str(qa),
        "--modes",
        "rag,psychic",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert_one_line_error(code, err, "mode: unknown 'psychic'")
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path), "--update", "lazy", "Who?")
    assert_one_line_error(code, err, "update: unknown 'lazy'")


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_ask_prints_answer_documents_and_time(capsys, built, mode):
    code, out, err = run_cli(capsys, "ask", "--workdir", str(built[0]), "--mode", mode, "What color is Tom's kite?")
    assert code == 0, err
    answer, documents, took = out.rstrip("\n").split("\n")[-3:]
    assert "\n" not in answer
    assert documents == ("documents: (none)" if mode == "vanilla" else "documents: kite, dog, bell")
    assert re.fullmatch(r"time: \d+\.\d\ds", took)


def test_eval_writes_results_json_and_prints_the_table(capsys, built, tmp_path):
    work, qa = built
    out_file = tmp_path / "results.json"
    code, out, err = run_cli(
        capsys, "eval", "--workdir", str(work), "--questions", str(qa), "--batch-size", "4", "--out", str(out_file)
    )
    assert code == 0, err
    results = json.loads(out_file.read_text())
    assert list(results["modes"]) == list(MODES)
    for mode, summary in results["modes"].items():
        assert set(summary) == {"em", "f1", "acc", "latency_s", "ungrounded", "recall", "n", "hops"}
        assert summary["n"] == len(QA)
        rows = [r for r in results["questions"] if r["mode"] == mode]
        assert summary["f1"] == pytest.approx(sum(r["f1"] for r in rows) / len(QA))
    assert len(results["questions"]) == len(MODES) * len(QA)
    first = results["questions"][len(QA) * MODES.index("prag")]
    fields = {"id", "mode", "prediction", "em", "f1", "acc", "docs", "latency_s", "ungrounded", "recall", "hops"}
    assert set(first) == fields | {"type"} and first["hops"] == 1
    assert first["id"] == "q1" and first["docs"][0] == "kite" and len(first["docs"]) == 3
    table = out.splitlines()
    header = table.index(next(line for line in table if line.split()[:4] == ["mode", "EM", "F1", "acc"]))
    assert [line.split()[0] for line in table[header + 1 : header + 5]] == list(MODES)
    assert f"wrote {out_file}" in out


def test_eval_with_merge_updates(capsys, built, tmp_path):
    # fused == merge answers are tested in float64 in test_pipeline; here (fp32, a random model whose logits
    # nearly tie) only that the merge path serves every question with its documents.
    work, qa = built
    code, out, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(work),
        "--questions",
        str(qa),
        "--modes",
        "prag,vanilla",
        "--update",
        "merge",
        "--batch-size",
        "3",
        "--out",
        str(tmp_path / "merge.json"),
    )
    assert code == 0, err
    results = json.loads((tmp_path / "merge.json").read_text())
    assert [r["docs"][0] for r in results["questions"] if r["mode"] == "prag"] == ["kite", "bell", "figs", "dog"]
    assert results["modes"]["prag"]["n"] == results["modes"]["vanilla"]["n"] == len(QA)


def test_store_of_another_model(capsys, workdir, tmp_path):
    config = json.loads((workdir / "config.json").read_text())
    config["model"] = str(save_tiny(tmp_path / "other_model", seed=1))
    (workdir / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "ask", "--workdir", str(workdir), "What color is Tom's kite?")
    assert_one_line_error(code, err, "store", "built for another model")


def test_corpus_changed_after_the_index(capsys, workdir):
    (workdir / "corpus.jsonl").write_text((workdir / "corpus.jsonl").read_text().replace("red kite", "blue kite"))
    code, _, err = run_cli(capsys, "ask", "--workdir", str(workdir), "What color is Tom's kite?")
    assert_one_line_error(code, err, "index.safetensors was built from another corpus")


def test_retrieved_document_missing_from_the_store(capsys, workdir):
    from prag_core.storage.store import Store

    store = Store(workdir / "store")
    store.retain(set(store) - {"dog"})
    code, out, err = run_cli(capsys, "ask", "--workdir", str(workdir), "--mode", "rag", "Kai's dog?")
    assert code == 0, err
    code, _, err = run_cli(capsys, "ask", "--workdir", str(workdir), "Kai's dog?")
    assert_one_line_error(code, err, "document 'dog' was retrieved but is not in the parameter store")


def test_export_peft_writes_the_documents_concatenated_along_rank(capsys, built, tmp_path):
    from safetensors.torch import load_file

    from prag_core.storage.store import Store

    code, out, _ = run_cli(
        capsys, "export-peft", "--workdir", str(built[0]), "--docs", "kite,dog", "--out", str(tmp_path / "adapter")
    )
    assert code == 0 and "2 documents" in out
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    kite, dog = (Store(built[0] / "store")[d] for d in ("kite", "dog"))
    assert config["r"] == kite.rank + dog.rank
    assert config["lora_alpha"] == pytest.approx(kite.alpha * config["r"])  # PEFT scaling lora_alpha/r = α
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    path = "model.layers.1.mlp.down_proj"
    a_cat = torch.cat([kite.pairs[path][0], dog.pairs[path][0]], dim=1)
    b_cat = torch.cat([kite.pairs[path][1], dog.pairs[path][1]], dim=1)
    assert torch.equal(tensors[f"base_model.model.{path}.lora_B.weight"], a_cat)
    assert torch.equal(tensors[f"base_model.model.{path}.lora_A.weight"], b_cat.T)


def test_export_peft_unknown_document(capsys, built, tmp_path):
    code, _, err = run_cli(
        capsys, "export-peft", "--workdir", str(built[0]), "--docs", "kite,nope", "--out", str(tmp_path / "adapter")
    )
    assert_one_line_error(code, err, "'nope'")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("k", [1, 2])
def test_ask_top_k_sets_how_many_documents_are_used(capsys, built, k):
    code, out, _ = run_cli(capsys, "ask", "--workdir", str(built[0]), "--top-k", str(k), "What color is Tom's kite?")
    assert code == 0
    used = re.search(r"^documents: (.*)$", out, re.M).group(1).split(", ")
    assert len(used) == k and used[0] == "kite"


@pytest.mark.parametrize("combination", ["sum", "mean", "score", "dyprag"])
def test_ask_and_eval_take_every_combination(capsys, built, tmp_path, combination):
    code, out, err = run_cli(
        capsys,
        "ask",
        "--workdir",
        str(built[0]),
        "--combination",
        combination,
        "--temperature",
        "0.5",
        "What color is Tom's kite?",
    )
    assert code == 0, err
    assert re.search(r"^documents: kite, ", out, re.M)
    code, out, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(built[0]),
        "--questions",
        str(built[1]),
        "--modes",
        "prag",
        "--combination",
        combination,
        "--out",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["modes"]["prag"]["n"] == len(QA)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--combination", "max"], "invalid choice: 'max'"),
        (["--temperature", "0"], "expected a positive number"),
        (["--temperature", "inf"], "expected a positive number"),
    ],
)
def test_bad_combination_or_temperature(capsys, built, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["ask", "--workdir", str(built[0]), *argv, "Who?"])
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_eval_checks_out_before_answering(capsys, built):
    qa = built[1]
    code, out, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(built[0]),
        "--questions",
        str(qa),
        "--modes",
        "vanilla",
        "--out",
        str(qa / "results.json"),
    )
    assert_one_line_error(code, err, str(qa))
    assert "vanilla" not in out  # refused before the first question


def test_eval_stopped_midway_keeps_its_answers(capsys, built, tmp_path, monkeypatch):
    from prag_core.answer.pipeline import Pipeline

    answer, calls = Pipeline.answer, []

    def stop_at_the_third(self, questions, mode="prag", update="fused"):
        calls.append(questions)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return answer(self, questions, mode, update)

    monkeypatch.setattr(Pipeline, "answer", stop_at_the_third)
    out = tmp_path / "res.json"
    code, _, err = run_cli(
        capsys,
        "eval",
        "--workdir",
        str(built[0]),
        "--questions",
        str(built[1]),
        "--modes",
        "vanilla",
        "--out",
        str(out),
    )
    assert code == 130 and "kept the 2 answers so far" in err
    results = json.loads(out.read_text())
    assert results["complete"] is False and [q["id"] for q in results["questions"]] == ["q1", "q2"]


def test_question_longer_than_the_context_is_refused(capsys, built):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(built[0]), "--mode", "rag", "kite " * 600)
    assert_one_line_error(
        code,
        err,
        "tokens with the passages",
        "more than the model's context of 512",
        "shorten the question or lower --top-k",
    )


def test_moved_model_names_the_config_entry(capsys, workdir, tmp_path):
    config = json.loads((workdir / "config.json").read_text())
    config["model"] = str(tmp_path / "moved-away")
    (workdir / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "ask", "--workdir", str(workdir), "Who has a red kite?")
    assert_one_line_error(
        code, err, "config.json: the model folder of its 'model' entry", "moved-away", "does not exist"
    )


def test_export_peft_refuses_to_overwrite_without_force(capsys, built, tmp_path):
    adapter = tmp_path / "adapter"
    argv = ["export-peft", "--workdir", str(built[0]), "--docs", "kite", "--out", str(adapter)]
    assert run_cli(capsys, *argv)[0] == 0
    first = (adapter / "adapter_model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, *argv[:3], "--docs", "dog", "--out", str(adapter))
    assert_one_line_error(code, err, "holds an adapter already; pass --force")
    assert (adapter / "adapter_model.safetensors").read_bytes() == first
    assert run_cli(capsys, *argv[:3], "--docs", "dog", "--out", str(adapter), "--force")[0] == 0
    assert (adapter / "adapter_model.safetensors").read_bytes() != first
    code, _, err = run_cli(capsys, *argv[:-1], str(built[1]))
    assert_one_line_error(code, err, "a file, not a folder for the adapter")


def test_workdir_that_is_a_file(capsys, built):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(built[1]), "Who has a red kite?")
    assert_one_line_error(code, err, "a file, not a work directory")


def test_eval_with_a_document_pool_gives_the_same_results(capsys, built, tmp_path):
    """--pool-slots: the batch's documents come from the pool (static KV cache); every answer as without it."""
    results = []
    for pool in ([], ["--pool-slots", "8"]):
        out = tmp_path / f"results{len(pool)}.json"
        args = ["eval", "--workdir", str(built[0]), "--questions", str(built[1]), "--modes", "prag,combine"]
        code, _, err = run_cli(capsys, *args, "--batch-size", "4", "--out", str(out), *pool)
        assert code == 0, err
        results.append([(q["mode"], q["prediction"], q["docs"]) for q in json.loads(out.read_text())["questions"]])
    assert results[0] == results[1] and len(results[0]) == 2 * len(QA)
    code, _, err = run_cli(capsys, "ask", "--workdir", str(built[0]), "--pool-slots", "-1", "Who?")
    assert_one_line_error(code, err, "slots")


def test_every_flag_reaches_its_config_field():
    """commands._config fills a config from the flags named as its fields; the differently named ones are given."""
    from prag_core.answer.config import ServeConfig
    from prag_core.cli import build_parser
    from prag_core.commands import _answer_config, _config
    from prag_core.offline.train_config import TrainConfig

    args = build_parser().parse_args(
        ["serve", "--workdir", "W", "--batch-window-ms", "5", "--max-queue", "7", "--threads", "1", "--top-k", "2"]
        + ["--served-model-name", "a", "b", "--pool-slots", "4", "--combination", "mean", "--ray", "--replicas", "2"]
    )
    serve = _config(ServeConfig, args, window_ms=args.batch_window_ms, served_model_names=("a", "b"))
    assert (serve.window_ms, serve.max_queue, serve.threads, serve.served_model_names) == (5.0, 7, 1, ("a", "b"))
    assert (serve.ray, serve.replicas) == ("", 2)
    answer = _answer_config(args, 16)
    assert (answer.top_k, answer.pool_slots, answer.pool_rows, answer.combination) == (2, 4, 16, "mean")
    args = build_parser().parse_args(["build", "--corpus", "c", "--workdir", "W", "--rank", "4", "--epochs", "1"])
    train = _config(TrainConfig, args, targets=None, warmup=None)
    assert (train.rank, train.epochs, train.warmup) == (4, 1, None)
