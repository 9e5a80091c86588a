"""The parameter store: atomic files + manifest, done/changed/corrupt detection, model check."""
import json

import pytest
import torch
from tiny import tiny_llama

from prag_core.corpus import Document, text_sha256
from prag_core.doc_params import DocParams, model_fingerprint
from prag_core.inject import inject
from prag_core.store import Store, StoreError, file_name

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINING = {"rank": 2, "lr": 0.001}


def _doc(doc_id, text):
    return Document(id=doc_id, text=text, title=None, sha256=text_sha256(text))


def _params(model, seed):
    params = DocParams.init(model, 2, 16.0, b_seed=seed, meta={"training": TRAINING})
    with torch.no_grad():
        for a, _ in params.pairs.values():
            a.normal_(generator=torch.Generator().manual_seed(seed))
    return params


@pytest.fixture
def model():
    return inject(tiny_llama())


def test_put_flush_reopen_and_read(tmp_path, model):
    fp = model_fingerprint(model)
    store = Store(tmp_path, fp, TRAINING)
    docs = [_doc("a/b c", "Alpha."), _doc("b", "Beta.")]
    written = [_params(model, i) for i in range(2)]
    for doc, params in zip(docs, written):
        store.put(doc, params)
    store.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", file_name("a/b c"), file_name("b")])
    assert "/" not in file_name("a/b c") and file_name("a/b c") != file_name("a_b c")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fingerprint"] == fp and manifest["training"] == TRAINING
    assert manifest["documents"]["b"] == {"file": file_name("b"), "sha256": docs[1].sha256}
    served = Store(tmp_path, fp)  # serving: no training config needed
    assert list(served) == ["a/b c", "b"] and len(served) == 2 and "c" not in served
    for doc, params in zip(docs, written):
        loaded = served[doc.id]
        assert loaded.meta["doc_sha256"] == doc.sha256 and loaded.meta["doc_id"] == doc.id
        for path, (a, b) in params.pairs.items():
            assert torch.equal(loaded.pairs[path][0], a.detach()) and torch.equal(loaded.pairs[path][1], b.detach())
    with pytest.raises(KeyError):
        served["c"]


def test_done_detects_changed_text_config_and_corruption(tmp_path, model):
    fp = model_fingerprint(model)
    store = Store(tmp_path, fp, TRAINING)
    doc = _doc("a", "Alpha.")
    assert not store.done(doc)
    store.put(doc, _params(model, 0))
    assert store.done(doc)
    assert not store.done(_doc("a", "Alpha, changed."))                       # text changed
    assert not Store(tmp_path, fp, {**TRAINING, "lr": 0.01}).done(doc)       # other training config
    path = tmp_path / file_name("a")
    path.write_bytes(path.read_bytes()[:-40])                                 # corrupted (torn) file
    with pytest.warns(UserWarning, match=r"a-.*safetensors.*re-encoding document 'a'"):
        assert not store.done(doc)


def test_file_without_manifest_entry_is_adopted(tmp_path, model):
    """A run killed after writing a document's file but before the manifest: the file still counts."""
    fp = model_fingerprint(model)
    doc = _doc("a", "Alpha.")
    Store(tmp_path, fp, TRAINING).put(doc, _params(model, 0))  # never flushed
    assert not (tmp_path / "manifest.json").exists()
    store = Store(tmp_path, fp, TRAINING)
    assert store.done(doc)
    store.flush()
    assert "a" in Store(tmp_path, fp) and not list(tmp_path.glob("*.tmp*"))


def test_other_model_is_refused(tmp_path, model):
    store = Store(tmp_path, model_fingerprint(model), TRAINING)
    store.put(_doc("a", "Alpha."), _params(model, 0))
    store.flush()
    other = inject(tiny_llama(seed=1))
    with pytest.raises(StoreError, match=r"built for another model.*weight_hash"):
        Store(tmp_path, model_fingerprint(other))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json: unreadable manifest"):
        Store(tmp_path, model_fingerprint(model))


def test_retain_drops_documents_that_left_the_corpus(tmp_path, model):
    store = Store(tmp_path, model_fingerprint(model), TRAINING)
    for i, doc_id in enumerate(("a", "b")):
        store.put(_doc(doc_id, doc_id), _params(model, i))
    store.retain(["b"])
    store.flush()
    assert list(Store(tmp_path, model_fingerprint(model))) == ["b"] and not (tmp_path / file_name("a")).exists()
    assert store.size_bytes() == (tmp_path / file_name("b")).stat().st_size
