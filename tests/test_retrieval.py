"""BM25 retrieval: tokenizer, ranking, ties, save/load, errors, and the demo dev set's retrievability."""

import json

import numpy as np
import pytest
from rank_bm25 import BM25Okapi
from safetensors import safe_open
from safetensors.numpy import save_file

from prag_core.corpus import DEMO_CORPUS, DEMO_QUESTIONS, Document, corpus_sha256, read_corpus, text_sha256
from prag_core.retrieval.bm25 import BM25Index, RetrievalError, tokenize


def _doc(doc_id, text, title=None):
    return Document(doc_id, text, title, text_sha256(text))


DOCS = [
    _doc("light", "The lighthouse on Quillan Point was built in 1847 by Oswin Tarrow.", "Velmora Lighthouse"),
    _doc("toad", "A small amphibian of Lake Ombrin whose skin glows orange at night.", "Pellacine glowtoad"),
    _doc("mill", "Marta Quenby invented a spinning machine in Lorvick in 1903."),
    _doc("ice", "Orvanta Ice Works carves ice sculptures; its mascot is a walrus named Pim."),
    _doc("gem", "Zephyrite is a pale blue gemstone from the Corvath mine."),
    _doc("river", "The Tessel is the longest river of Ostrevan; it flows to the eastern sea."),
]


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(DOCS)


def test_tokenize():
    assert tokenize("Velmora's Lighthouse, built in 1847!") == ["velmora", "s", "lighthouse", "built", "in", "1847"]
    assert tokenize("snake_case—and/slash") == ["snake", "case", "and", "slash"]
    assert tokenize("Привет, МИР; Ωμέγα") == ["привет", "мир", "ωμέγα"]  # any script, lowercased
    assert tokenize("Café") == tokenize("Cafe\u0301") == ["café"]  # composed == decomposed accent
    assert tokenize(" ?!… ") == []


def test_tokenize_cjk_runs_as_characters_and_character_pairs():
    assert tokenize("福莫出生在哪里") == [
        "福",
        "莫",
        "出",
        "生",
        "在",
        "哪",
        "里",
        "福莫",
        "莫出",
        "出生",
        "生在",
        "在哪",
        "哪里",
    ]
    assert tokenize("iPhone手机, 東京!") == ["iphone", "手", "机", "手机", "東", "京", "東京"]  # Latin runs stay words
    assert tokenize("ひらがな 한국어") == [
        "ひ",
        "ら",
        "が",
        "な",
        "ひら",
        "らが",
        "がな",
        "한",
        "국",
        "어",
        "한국",
        "국어",
    ]
    assert tokenize("中") == ["中"] and tokenize("ＡＢＣ２０２４年") == ["abc2024", "年"]  # NFKC: full-width to ASCII


CHINESE = [
    _doc("fumo", "福莫出生在河北省的一个小村庄，后来搬到了北京。", "福莫"),
    _doc("tea", "龙井茶产于浙江杭州西湖一带，是绿茶的一种。", "龙井茶"),
    _doc("wall", "长城始建于春秋战国时期，全长两万多公里。", "长城"),
    _doc("panda", "大熊猫主要生活在四川的竹林里，以竹子为食。", "大熊猫"),
    _doc("river", "长江是中国最长的河流，流经上海注入东海。", "长江"),
]


@pytest.mark.parametrize(
    "question, expected",
    [
        ("福莫出生在哪里？", "fumo"),  # one run of characters: no spaces to split on
        ("龙井是什么茶？", "tea"),
        ("长城有多长？", "wall"),  # 长 is in 长江 too: the pair 长城 decides
        ("熊猫吃什么？", "panda"),
        ("哪条河流注入东海？", "river"),
    ],
)
def test_chinese_questions_find_their_document(question, expected):
    results = BM25Index.build(CHINESE).search(question, k=2)
    assert results[0][0] == expected and results[0][1] > results[1][1]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Who built the Velmora Lighthouse?", "light"),  # "velmora" is only in the title
        ("What color does the Pellacine glowtoad glow?", "toad"),
        ("Who invented the machine in Lorvick?", "mill"),
        ("What is the name of the walrus mascot?", "ice"),
        ("Which mine produces zephyrite?", "gem"),
        ("Where does the Tessel river flow?", "river"),
    ],
)
def test_distinctive_queries_find_their_document(index, query, expected):
    results = index.search(query, k=3)
    assert results[0][0] == expected
    assert results[0][1] > results[1][1] >= results[2][1]


def test_case_and_punctuation_do_not_matter(index):
    assert index.search("ZEPHYRITE!!! corvath-MINE?", k=6) == index.search("zephyrite corvath mine", k=6)


def test_scores_equal_rank_bm25_okapi_over_title_and_text(index):
    tokens = [tokenize(f"{d.title}\n{d.text}" if d.title else d.text) for d in DOCS]
    query = "lighthouse built 1903 walrus the the unseenword"  # repeated and unknown terms too
    expected = BM25Okapi(tokens).get_scores(tokenize(query))
    got = dict(index.search(query, k=len(DOCS)))
    assert [got[d.id] for d in DOCS] == list(expected)  # same float operations, so equal, not just close
    assert max(expected) > 0


def test_k_larger_than_corpus_returns_every_document_ranked(index):
    results = index.search("orange glowtoad", k=50)
    assert len(results) == len(DOCS) == len(index)
    assert sorted(doc_id for doc_id, _ in results) == sorted(d.id for d in DOCS)
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)


def test_ties_keep_corpus_order():
    # (a term in exactly half the documents gets idf 0 in Okapi, hence the fillers)
    twins = [
        _doc("b", "same words here"),
        _doc("a", "other text entirely"),
        _doc("c", "same words here"),
        _doc("d", "unrelated filler"),
        _doc("e", "more filler"),
        _doc("f", "last filler"),
    ]
    index = BM25Index.build(twins)
    results = index.search("same words", k=3)
    assert [d for d, _ in results] == ["b", "c", "a"] and results[0][1] == results[1][1] > 0
    # no document shares a term: all scores 0, corpus order
    assert index.search("nothing matches", k=4) == [("b", 0.0), ("a", 0.0), ("c", 0.0), ("d", 0.0)]


def test_top_k_is_the_head_of_the_full_ranking_ties_included():
    rng = np.random.default_rng(0)  # 30 words over 300 documents: many equal scores
    docs = [_doc(f"d{i}", " ".join(f"w{x}" for x in rng.integers(0, 30, 6))) for i in range(300)]
    index = BM25Index.build(docs)
    for query in ("w1 w2", "w3", "w4 w4 w5 w29", "nothing"):
        full = index.search(query, k=len(docs))
        for k in (1, 3, 10, 299):
            assert index.search(query, k) == full[:k]


def test_bad_queries(index):
    for query in ("", "   ", "?!…"):
        with pytest.raises(RetrievalError, match="empty query"):
            index.search(query)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        index.search("zephyrite", k=0)
    with pytest.raises(RetrievalError, match="empty corpus"):
        BM25Index.build([])


def test_save_load_round_trip(index, tmp_path):
    path = tmp_path / "w" / "bm25.safetensors"
    index.save(path)
    loaded = BM25Index.load(path)
    assert loaded.ids == index.ids and loaded.corpus_sha256 == index.corpus_sha256 == corpus_sha256(DOCS)
    for query in ("Velmora lighthouse 1847", "walrus mascot Pim", "pale blue gem", "river sea in the"):
        assert loaded.search(query, k=len(DOCS)) == index.search(query, k=len(DOCS))  # identical floats
    assert [p.name for p in path.parent.iterdir()] == ["bm25.safetensors"]  # atomic write leaves no temp file


def test_unicode_ids_and_terms_survive_save(tmp_path):
    docs = [_doc("doc-é", "Ωμέγα café"), _doc("文書", "東京 river"), _doc("x", "filler words"), _doc("y", "more")]
    BM25Index.build(docs).save(tmp_path / "i.safetensors")
    loaded = BM25Index.load(tmp_path / "i.safetensors")
    assert loaded.search("CAFÉ", k=1)[0][0] == "doc-é" and loaded.search("東京", k=1)[0][0] == "文書"


def test_documents_without_words(tmp_path):
    index = BM25Index.build([_doc("p", "?!"), _doc("w", "real words"), _doc("x", "other"), _doc("y", "more")])
    assert index.search("words", k=2)[0][0] == "w"
    with pytest.raises(RetrievalError, match="no document has a single word"):
        BM25Index.build([_doc("p", "?!"), _doc("q", "…")])


def test_corpus_sha256_tracks_text_title_and_order():
    base = corpus_sha256(DOCS)
    assert corpus_sha256(list(DOCS)) == base
    assert corpus_sha256(DOCS[::-1]) != base
    assert corpus_sha256([_doc("light", DOCS[0].text + " ", DOCS[0].title)] + DOCS[1:]) != base
    assert corpus_sha256([_doc("light", DOCS[0].text, "Other title")] + DOCS[1:]) != base


def _resave(index, path, meta=None, arrays=None):
    """Save the index, then rewrite its file with some header fields / tensors changed (None deletes)."""
    index.save(path)
    with safe_open(str(path), framework="np") as f:
        header = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    for store, changes in ((header, meta or {}), (tensors, arrays or {})):
        for key, value in changes.items():
            if value is None:
                del store[key]
            else:
                store[key] = value
    save_file(tensors, str(path), metadata=header)


@pytest.mark.parametrize(
    "meta, arrays, expected",
    [
        ({"format": "other"}, None, r"not a prag BM25 index \(field 'format'"),
        ({"version": "99"}, None, r"field 'version' is '99', this prag reads '2'; run .prag build. again"),
        ({"tokenizer": "old"}, None, r"field 'tokenizer' is 'old'.*run .prag build. again"),
        ({"ids": None}, None, r"header field 'ids' is missing or malformed"),
        ({"vocab": "[not json"}, None, r"header field .* is missing or malformed"),
        ({"k1": "fast"}, None, r"header field .* is missing or malformed"),
        (None, {"count_tf": None}, r"tensor 'count_tf' is missing"),
        (None, {"keys": None}, r"tensor 'keys' is missing"),
        (None, {"count_ptr": np.ones(5, dtype=np.int64)}, r"tensor 'count_ptr' is int64\[5\], expected int64\[7\]"),
        (None, {"score": np.ones(1, dtype=np.float32)}, r"tensor 'score' is float32\[1\], expected float64"),
        (None, {"score_ptr": np.zeros(1, dtype=np.int64)}, r"tensor 'score_ptr' is int64\[1\]"),
    ],
)
def test_load_rejects_bad_files(index, tmp_path, meta, arrays, expected):
    path = tmp_path / "bm25.safetensors"
    _resave(index, path, meta, arrays)
    with pytest.raises(RetrievalError, match=r"bm25\.safetensors: " + expected):
        BM25Index.load(path)


def test_load_rejects_bad_postings(index, tmp_path):
    path = tmp_path / "bm25.safetensors"
    index.save(path)
    with safe_open(str(path), framework="np") as f:
        ptr, docs, terms = f.get_tensor("score_ptr"), f.get_tensor("score_doc"), f.get_tensor("count_term")
    _resave(index, path, arrays={"score_ptr": ptr[::-1].copy()})
    with pytest.raises(RetrievalError, match="'score_ptr' is not a valid offset table"):
        BM25Index.load(path)
    _resave(index, path, arrays={"score_doc": np.where(docs == 0, len(DOCS), docs).astype(np.int32)})
    with pytest.raises(RetrievalError, match="'score_doc' holds a document index out of range"):
        BM25Index.load(path)
    _resave(index, path, arrays={"count_term": (terms - 1).astype(np.int32)})
    with pytest.raises(RetrievalError, match="'count_term' holds a term index out of range"):
        BM25Index.load(path)


def test_a_saved_index_is_memory_mapped_not_read(index, tmp_path):
    index.save(tmp_path / "bm25.safetensors")
    loaded = BM25Index.load(tmp_path / "bm25.safetensors")
    assert all(isinstance(a, np.memmap) for name, a in loaded._arrays.items())
    assert not any(a.flags.writeable for a in loaded._arrays.values())


def test_adding_documents_tokenizes_only_the_new_ones_and_equals_a_fresh_build(tmp_path, monkeypatch):
    from prag_core.retrieval import bm25

    first = BM25Index.build(DOCS[:4])
    first.save(tmp_path / "bm25.safetensors")
    previous = BM25Index.load(tmp_path / "bm25.safetensors")
    tokenized = []
    real = bm25.tokenize
    monkeypatch.setattr(bm25, "tokenize", lambda text: tokenized.append(text) or real(text))
    changed = [_doc("mill", "Marta Quenby built a loom in Lorvick in 1911.")]  # a changed text is tokenized again
    grown = BM25Index.build(DOCS[:2] + changed + DOCS[3:] + CHINESE, previous)
    assert len(tokenized) == 1 + len(DOCS) - 4 + len(CHINESE)
    monkeypatch.setattr(bm25, "tokenize", real)
    fresh = BM25Index.build(DOCS[:2] + changed + DOCS[3:] + CHINESE)
    assert grown.vocab == fresh.vocab and grown.corpus_sha256 == fresh.corpus_sha256
    for name, array in fresh._arrays.items():
        assert np.array_equal(grown._arrays[name], array), name
    shrunk = BM25Index.build(DOCS[1:3], grown)  # a removed document's terms leave the vocabulary
    assert shrunk.vocab == BM25Index.build(DOCS[1:3]).vocab and "lighthouse" not in shrunk.vocab


@pytest.mark.parametrize("split", ["dev", "test"])
def test_rankings_equal_rank_bm25_on_the_dev_and_test_sets(split):
    """Every question of our dev/test sets (and their paraphrases) ranks the whole corpus as rank_bm25 does."""
    from pathlib import Path

    data = Path(__file__).parent.parent / "bench" / "data"
    docs = read_corpus(data / f"{split}_corpus.jsonl")
    index = BM25Index.build(docs)
    okapi = BM25Okapi([tokenize(f"{d.title}\n{d.text}" if d.title else d.text) for d in docs])
    questions = [
        json.loads(line)["question"]
        for name in (f"{split}_qa.jsonl", f"{split}_paraphrase_qa.jsonl")
        for line in (data / name).read_text(encoding="utf-8").splitlines()
    ]
    assert len(questions) > 100
    for question in questions:
        scores = okapi.get_scores(tokenize(question))
        expected = [docs[i].id for i in np.argsort(-scores, kind="stable")]
        got = index.search(question, k=len(docs))
        assert [d for d, _ in got] == expected, question
        assert [s for _, s in got] == sorted(scores.tolist(), reverse=True)


def test_load_unreadable_files(tmp_path):
    with pytest.raises(RetrievalError, match=r"nope\.safetensors: no such BM25 index file"):
        BM25Index.load(tmp_path / "nope.safetensors")
    (tmp_path / "old.json").write_text('{"format": "prag-bm25", "ids": []}')
    with pytest.raises(RetrievalError, match=r"old\.json: unreadable BM25 index"):
        BM25Index.load(tmp_path / "old.json")
    BM25Index.build(DOCS).save(tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])  # a file cut short
    with pytest.raises(RetrievalError, match=r"cut\.safetensors: unreadable BM25 index"):
        BM25Index.load(tmp_path / "cut.safetensors")


def test_every_demo_question_retrieves_its_own_document():
    """Guards the shipped dev set: PRAG can only help if retrieval brings the right document."""
    index = BM25Index.build(read_corpus(DEMO_CORPUS))
    questions = [json.loads(line) for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()]
    misses = [
        (q["id"], index.search(q["question"], k=3))
        for q in questions
        if q["doc_id"] not in [doc_id for doc_id, _ in index.search(q["question"], k=3)]
    ]
    assert not misses
