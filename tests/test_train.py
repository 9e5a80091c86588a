"""The training loop: frozen base, loss goes down, a pair injects a fact, batched == sequential."""

import dataclasses
import re

import pytest
import torch
from tiny import CHAT_TEMPLATE, SPECIALS, tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prag_core.model.inject import use_documents
from prag_core.offline.augment import augment
from prag_core.offline.samples import build_samples, sequence_ids
from prag_core.offline.train import train_documents
from prag_core.offline.train_config import TrainConfig
from prag_core.prompts import ANSWER_PREFIX, qa_messages, render

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = [
    "Tom has a red kite. It flies high over Leeds.",
    "The bell rings at 9. Ana rings it.",
    "Bo eats 3 figs. Figs are sweet in May.",
    "Kai's dog is Rex. Rex barks at Lulu.",
]


def word_tokenizer(texts):
    """A word-level tokenizer (ChatML template) over the words of `texts` and of the answering prompt.

    One token per word keeps sequences short, and makes "is" -> answer a fact a random tiny model can store
    in its FFNs (byte tokens would need attention to tell the space after "is" from every other space)."""
    prompt = " ".join(m["content"] for m in qa_messages("q", ["p"])) + f" {ANSWER_PREFIX} user assistant"
    words = sorted({w for t in [prompt, *texts] for w in re.findall(r"\w+|[^\w\s]", t)})
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"]
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _samples(tok):
    samples = [build_samples(t, augment(t, None), tok) for t in TEXTS]
    samples[1] = samples[1][:3]  # unequal sequence counts: doc 1 sits out steps 3 and 4
    return samples


def _relative_error(doc, ref):
    num = sum(float((doc.pairs[p][i] - ref.pairs[p][i]).norm()) ** 2 for p in ref.pairs for i in (0, 1))
    den = sum(float(ref.pairs[p][i].norm()) ** 2 for p in ref.pairs for i in (0, 1))
    return (num / den) ** 0.5


def test_batched_equals_sequential():
    """Per step the batched gradients equal the sequential ones to ~1e-7 (float32 rounding: other GEMM
    shapes, padding). AdamW divides by √v per element, so at a large step size (lr 1e-2 with α 16) the
    trajectories amplify that rounding (to ~1e-3 after 10 steps); at lr 1e-3 they stay within ~1e-7."""
    tok = word_tokenizer(TEXTS)
    model = tiny_llama(vocab=len(tok))
    samples = _samples(tok)
    config = TrainConfig(rank=2, lr=1e-3, epochs=3, seed=3)
    batched = train_documents(model, tok, samples, config, progress=False)
    for g, (doc, seqs) in enumerate(zip(batched, samples)):
        alone = train_documents(model, tok, [seqs], config, progress=False, doc_keys=[str(g)])[0]
        assert _relative_error(doc, alone) < 1e-4
        assert doc.meta["losses"] == pytest.approx(alone.meta["losses"], rel=1e-4)
    # the documents really trained differently (nothing shared between rows)
    a0, a2 = (torch.cat([a.flatten() for a, _ in d.pairs.values()]) for d in (batched[0], batched[2]))
    assert float((a0 - a2).norm() / a2.norm()) > 0.1


def test_base_frozen_loss_decreases_and_meta():
    tok = word_tokenizer(TEXTS)
    model = tiny_llama(vocab=len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(rank=2, lr=1e-2, epochs=4, targets=("up_proj", "down_proj"))
    docs = train_documents(model, tok, _samples(tok)[:2], config, progress=False)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for doc in docs:
        losses = doc.meta["losses"]
        assert len(losses) == 4 and losses[-1] < losses[0] - 0.05
        assert doc.meta["training"] == config.to_dict() and doc.meta["rank"] == 2 and doc.alpha == 16.0
        assert {p.rsplit(".", 1)[1] for p in doc.pairs} == {"up_proj", "down_proj"}
        assert not any(t.requires_grad for t in doc.tensors()) and all(t.dtype == torch.float32 for t in doc.tensors())
        assert any(float(a.abs().max()) > 0 for a, _ in doc.pairs.values())  # A left zero


def test_trained_pair_changes_the_answer():
    """A toy fact: after training, greedy decoding of the serving prompt gives the document's answer, only
    with the pair active."""
    question, answer = "Which code word?", "zebra"
    tok = word_tokenizer([question, answer])
    model = tiny_llama(vocab=len(tok), hidden=128, intermediate=256)
    (doc,) = train_documents(
        model, tok, [[sequence_ids(tok, question, answer)]], TrainConfig(rank=2, lr=1e-2, epochs=20), progress=False
    )
    ids = torch.tensor([tok(render(tok, qa_messages(question)) + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]])

    def first_token():
        out = model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.convert_ids_to_tokens(int(out[0, -1]))

    assert first_token() != answer
    with use_documents(model, [doc]):
        assert first_token() == answer
    assert first_token() != answer


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float64x")
    tok = word_tokenizer(TEXTS)
    with pytest.raises(ValueError, match="at least one sequence"):
        train_documents(tiny_llama(vocab=len(tok)), tok, [[]], progress=False)


def test_config_dict_records_every_field():
    """Every field is recorded, at any value (its default included), so the training tag covers them all."""
    recorded = TrainConfig(init="shared", objective="ntp", warmup=None, targets=("mlp.up_proj",)).to_dict()
    assert set(recorded) == {field.name for field in dataclasses.fields(TrainConfig)}
    assert (recorded["init"], recorded["objective"], recorded["warmup"], recorded["augmentation"]) == (
        "shared",
        "ntp",
        None,
        None,
    )
    assert recorded["targets"] == ["mlp.up_proj"] and TrainConfig().to_dict()["targets"] is None
    assert TrainConfig(objective="distill", init="document", warmup="ab").to_dict() == {
        **TrainConfig().to_dict(),
        "objective": "distill",
        "init": "document",
        "warmup": "ab",
    }
    with pytest.raises(ValueError, match="objective 'kl'"):
        TrainConfig(objective="kl")
