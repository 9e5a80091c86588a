"""EM / F1 / acc on cases whose values are worked out by hand in each comment."""

import pytest

from prag_core.metrics import acc, exact_match, f1, normalize_answer, scores


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Velmora, Lighthouse!", "velmora lighthouse"),
        ("An apple a day", "apple day"),  # articles go, only as whole words
        ("Theatre and anthem", "theatre and anthem"),
        ("forty-eight", "fortyeight"),  # punctuation is deleted, not replaced by a space
        ("“Pim” — the walrus", "pim walrus"),  # Unicode quotes and dashes are punctuation too
        ("  \tOld\nBellamy  ", "old bellamy"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("1847.", ["1847"]) == 1.0
    assert exact_match("The answer is 1847.", ["1847"]) == 0.0  # "answer is 1847" != "1847"
    assert exact_match("the Tessel", ["River Tessel", "Tessel"]) == 1.0  # max over aliases
    assert exact_match("Tessel river", ["River Tessel"]) == 0.0  # order matters


def test_f1_hand_computed():
    # pred [oswin, tarrow, built, it], gold [oswin, tarrow]: c=2, P=2/4, R=2/2, F1=2·(1/2)·1/(3/2)=2/3
    assert f1("Oswin Tarrow built it", ["Oswin Tarrow"]) == pytest.approx(2 / 3)
    # alias "Tarrow": pred [tarrow] matches exactly -> 1; the other alias alone would give P=1, R=1/2 -> 2/3
    assert f1("Tarrow", ["Oswin Tarrow", "Tarrow"]) == 1.0
    assert f1("Tarrow", ["Oswin Tarrow"]) == pytest.approx(2 / 3)
    # multiset overlap: pred green×3, gold {deep, green}: c=1, P=1/3, R=1/2, F1=2·(1/6)/(5/6)=0.4
    assert f1("green green green", ["deep green"]) == pytest.approx(0.4)
    # pred [answer, is, pale, blue] vs gold [pale, blue]: c=2, P=1/2, R=1, F1=2/3
    assert f1("The answer is pale blue.", ["pale blue"]) == pytest.approx(2 / 3)
    assert f1("Kettlebay", ["Maelport"]) == 0.0


def test_empty_after_normalisation():
    # SQuAD v2 rule: both empty -> 1, one empty -> 0
    assert f1("", ["Pim"]) == 0.0
    assert f1("The!", ["a"]) == 1.0
    assert exact_match("The!", ["a"]) == 1.0
    assert acc("", ["the"]) == 1.0
    assert acc("anything at all", ["the"]) == 0.0  # an empty alias is not "in" every prediction


def test_acc_whole_words():
    assert acc("The answer is pale blue.", ["blue"]) == 1.0
    assert acc("It glows bluebell-like", ["blue"]) == 0.0
    assert acc("It is on Mount Kesh!", ["mount kesh"]) == 1.0
    assert acc("It is on Kesh.", ["Mount Kesh"]) == 0.0
    assert acc("It is on Kesh.", ["Mount Kesh", "Kesh"]) == 1.0
    assert acc("nine days", ["9", "nine"]) == 1.0
    assert acc("Nineteen", ["nine"]) == 0.0


def test_scores_and_empty_answers():
    # pred [answer, is, 1847], gold [1847]: EM 0, F1 = 2·(1/3)·1/(4/3) = 1/2, acc 1
    assert scores("The answer is 1847.", ["1847"]) == pytest.approx({"em": 0.0, "f1": 0.5, "acc": 1.0})
    for metric in (exact_match, f1, acc, scores):
        with pytest.raises(ValueError, match="at least one gold answer"):
            metric("x", [])
