"""Context distillation and the warm-up pair on tiny models: the teacher reads the passage and the student
does not, the loss goes down, batched == sequential; the warm-up is counted once under every scheme, in the
pipeline (fused and merge) and in training; `prag build --objective/--warmup` end to end."""

import json
from dataclasses import replace

import pytest
import torch
from test_pipeline import QUESTIONS, make_pipe, predictions
from test_train import TEXTS, word_tokenizer
from tiny import random_doc_params, tiny_llama, tiny_tokenizer

from prag_core.answer.config import AnswerConfig
from prag_core.answer.pipeline import Pipeline
from prag_core.answer.requests import Request
from prag_core.cli import main
from prag_core.model.inject import inject, use_documents
from prag_core.offline.augment import augment
from prag_core.offline.encode import encode_warmup
from prag_core.offline.samples import build_samples, distill_items
from prag_core.offline.train import train_documents
from prag_core.offline.train_config import TrainConfig
from prag_core.pairs.combine import combine
from prag_core.pairs.doc_params import DocParams

pytestmark = pytest.mark.usefixtures("one_thread")


def _items(tok):
    return [distill_items(t, augment(t, None), tok) for t in TEXTS]


def sharp_llama(vocab):
    """A tiny random model whose logits are 10x sharper: a random model's next-token distributions are
    nearly uniform, so the passage would barely change the teacher (KL ~1e-4); here it does (~1e-2)."""
    model = inject(tiny_llama(vocab=vocab))
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    return model


def test_teacher_reads_the_passage_and_the_student_does_not():
    tok = word_tokenizer(TEXTS)
    for text, items in zip(TEXTS, _items(tok)):
        passage = tok(text, add_special_tokens=False)["input_ids"]
        for item in items:

            def holds(ids):
                return any(ids[i : i + len(passage)] == passage for i in range(len(ids)))

            assert holds(item.teacher) and not holds(item.student)
            assert item.student[-item.answer_len :] == item.teacher[-item.answer_len :]  # the same answer tokens
            answer = tok.decode(item.student[-item.answer_len :])
            assert answer.startswith("The answer is") and answer.endswith("<|im_end|>")


@pytest.mark.parametrize("objective", ["distill", "both"])
def test_distill_loss_decreases_and_batched_equals_sequential(objective):
    tok = word_tokenizer(TEXTS)
    model = sharp_llama(len(tok))
    samples, items = [build_samples(t, augment(t, None), tok) for t in TEXTS], _items(tok)
    items[2] = items[2][:1]  # unequal item counts: doc 2 sits out steps 1 and 2 (of its distillation)
    config = TrainConfig(rank=2, lr=1e-3, epochs=3, seed=3, objective=objective)
    batched = train_documents(model, tok, samples, config, progress=False, distill_per_doc=items)
    for g, doc in enumerate(batched):
        losses = doc.meta["losses"]
        assert losses[-1] < losses[0], losses
        alone = train_documents(
            model, tok, [samples[g]], config, progress=False, distill_per_doc=[items[g]], doc_keys=[str(g)]
        )[0]
        assert doc.meta["losses"] == pytest.approx(alone.meta["losses"], rel=1e-4)
        for path, (a, b) in doc.pairs.items():
            torch.testing.assert_close(a, alone.pairs[path][0], rtol=1e-3, atol=1e-6)
    assert batched[0].meta["training"]["objective"] == objective
    with pytest.raises(ValueError, match="needs distill_per_doc"):
        train_documents(model, tok, samples, config, progress=False)


def test_distill_pulls_the_student_toward_the_teacher():
    """After distillation the student without the passage is closer (KL on the answer) to the teacher with it."""
    from prag_core.offline.train import _batch, _kl_rows, teacher_log_probs

    tok = word_tokenizer(TEXTS)
    model = sharp_llama(len(tok))
    items = _items(tok)[:1]
    teacher = teacher_log_probs(model, tok, items[0], "cpu")

    def kl(docs):
        ids, mask = _batch([it.student for it in items[0]], 0, "cpu")
        with torch.no_grad(), use_documents(model, [docs] * len(items[0])):
            return _kl_rows(model(input_ids=ids, attention_mask=mask).logits, items[0], teacher).mean().item()

    (doc,) = train_documents(
        model, tok, [[]], TrainConfig(lr=1e-3, epochs=10, objective="distill"), progress=False, distill_per_doc=items
    )
    assert kl([doc]) < 0.1 * kl([])  # measured: 0.0136 -> 0.0003


def test_warmup_pair_trains_and_is_frozen_beside_each_document():
    tok = word_tokenizer(TEXTS)
    model = tiny_llama(vocab=len(tok))
    config = TrainConfig(rank=2, lr=1e-2, epochs=3)
    warm = encode_warmup(model, tok, TEXTS[2:], [augment(t, None) for t in TEXTS[2:]], config, key="k")
    assert warm.meta["warmup_key"] == "k" and warm.meta["losses"][-1] < warm.meta["losses"][0]
    before = {p: (a.clone(), b.clone()) for p, (a, b) in warm.pairs.items()}
    docs = [build_samples(t, augment(t, None), tok) for t in TEXTS[:2]]
    with_warm = train_documents(model, tok, docs, config, progress=False, base_docs=[warm])
    without = train_documents(model, tok, docs, config, progress=False)
    assert all(torch.equal(a, before[p][0]) and torch.equal(b, before[p][1]) for p, (a, b) in warm.pairs.items())
    # the warm-up is active while the documents train: their pairs learn something else than without it
    path = next(iter(warm.pairs))
    assert not torch.allclose(with_warm[0].pairs[path][0], without[0].pairs[path][0])


@pytest.mark.parametrize("scheme", ["sum", "mean", "score", "dyprag"])
def test_warmup_is_counted_once_under_every_scheme(scheme):
    """The pipeline's update is exactly warm-up (weight 1) + the combined documents, fused and merged."""
    pipe = make_pipe()
    warm = random_doc_params(pipe.kb.model, 1, seed=11, std=0.3)[0]
    p = Pipeline(replace(pipe.kb, warmup=warm), AnswerConfig(top_k=3, max_new_tokens=10, combination=scheme))
    question = QUESTIONS[0]
    ids, scores = p.retrieve(question)
    docs, weights = combine([pipe.kb.store[d] for d in ids], scores, scheme)
    x = torch.randint(3, 250, (1, 7))
    with use_documents(p.kb.model, [warm, *docs], weights=[1.0, *weights]):
        expected = p.kb.model(x).logits
    with use_documents(p.kb.model, docs + [warm] * 2, weights=[*weights, 1.0, 1.0]):  # counted twice: different
        twice = p.kb.model(x).logits
    for update in ("fused", "merge"):
        with p._update([p.prepare(Request(question, "prag"))], update):
            got = p.kb.model(x).logits
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        assert not torch.allclose(got, twice)
    answers = p.answer(QUESTIONS, "prag")
    assert predictions(answers) == predictions(p.answer(QUESTIONS, "prag", "merge"))
    assert predictions(answers) != predictions(
        Pipeline(pipe.kb, AnswerConfig(top_k=3, max_new_tokens=10, combination=scheme)).answer(QUESTIONS, "prag")
    )


def test_build_with_warmup_and_distill_then_ask(tmp_path, capsys):
    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    corpus, warm_corpus = tmp_path / "corpus.jsonl", tmp_path / "warm.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    warm_corpus.write_text(json.dumps({"id": "w", "text": "Ivo owns 4 goats. They are brown."}) + "\n")
    work = tmp_path / "W"
    build = [
        "build",
        "--corpus",
        str(corpus),
        "--workdir",
        str(work),
        "--model",
        str(model),
        "--epochs",
        "1",
        "--augmenter",
        "fallback",
        "--objective",
        "distill",
        "--warmup",
        str(warm_corpus),
    ]
    assert main(build) == 0
    config = json.loads((work / "config.json").read_text())
    warm = DocParams.load(work / "warmup.safetensors")
    assert config["objective"] == "distill" and config["warmup"] == warm.meta["warmup_key"]
    stored = DocParams.load(next((work / "store").glob("*.safetensors")))
    assert stored.meta["training"]["warmup"] == warm.meta["warmup_key"]
    capsys.readouterr()
    assert main(build) == 0 and "0 encoded now" in capsys.readouterr().out  # reused: same warm-up, same store
    assert main(["ask", "--workdir", str(work), "Who has a red kite?"]) == 0
    assert "documents: d0" in capsys.readouterr().out
    assert main([*build[:-2], "--warmup", "none"]) == 2  # another warm-up: refused without --retrain
    assert "(warmup_corpus " in capsys.readouterr().err
    assert main([*build[:-2], "--warmup", "none", "--retrain"]) == 0  # every document is encoded again
    assert f"{len(TEXTS)} encoded now" in capsys.readouterr().out
    assert json.loads((work / "config.json").read_text()).get("warmup") is None
    assert main(["ask", "--workdir", str(work), "Who has a red kite?"]) == 0


@pytest.mark.parametrize("matching", [True, False])
def test_shipped_trained_warmup_is_used_only_when_key_and_model_match(tmp_path, monkeypatch, capsys, matching):
    """The default build (--warmup shipped) takes the shipped trained pair when its key is this build's and it
    was trained for this model; otherwise it trains the pair from the shipped corpus."""
    from prag_core.corpus import corpus_sha256, read_corpus
    from prag_core.offline import warmup as warmup_module
    from prag_core.offline.augment import cache_settings
    from prag_core.offline.warmup import WARMUP_CORPUS, warmup_key

    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    config = TrainConfig(epochs=1)
    key = warmup_key(corpus_sha256(read_corpus(WARMUP_CORPUS)), cache_settings(None, 1, 3), config)
    shipped = random_doc_params(tiny_llama(), 1, seed=4)[0]
    shipped.meta["warmup_key"] = key if matching else "another"
    shipped.save(tmp_path / "shipped.safetensors")
    monkeypatch.setattr(warmup_module, "TRAINED_WARMUP", tmp_path / "shipped.safetensors")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "d0", "text": TEXTS[0]}) + "\n")
    assert (
        main(
            ["build", "--corpus", str(corpus), "--workdir", str(tmp_path / "W"), "--model", str(model), "--epochs", "1"]
        )
        == 0
    )
    used = DocParams.load(tmp_path / "W" / "warmup.safetensors")
    assert used.meta["warmup_key"] == key
    path = next(iter(shipped.pairs))
    assert torch.equal(used.pairs[path][0], shipped.pairs[path][0]) == matching
