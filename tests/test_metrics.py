"""Metrics against hand computations and the libraries they wrap."""

import math

import pytest

from igds.data import Example
from igds.metrics import bleu_chrf, exact_match, extract_final_number, rouge_scores, score_predictions
from igds.tasks import get_task


@pytest.mark.parametrize("text, value", [
    ("so she makes 18 dollars.\n#### 18", 18),
    ("#### 1,234", 1234),
    ("#### $1,234.50", 1234.5),
    ("The answer is 3.50.", 3.5),
    ("The answer is -7", -7),
    ("It costs $-5 in total", -5),
    ("Loss: -$12.", -12),
    ("We get 5 then 6 then 42.", 42),
    ("pages 5-6", 6),  # a hyphen between numbers is not a minus sign
    ("half is 3/4", 0.75),
    ("Answer: 12 apples, 3 pears", 12),  # the first number after the answer marker
    ("First 10, then #### 72 and later 5", 72),  # #### wins over the last number
    ("\\boxed{1,000}", 1000),
    ("x2 and 7", 7),  # digits glued to a word are not numbers
    ("1,2,3", 3),  # not thousands separators
    ("It is \u22124", -4),  # Unicode minus
    ("#### 18.", 18),
])
def test_extract_final_number(text, value):
    assert extract_final_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", None, "no numbers here", "#### none", "1/0"])
def test_extract_final_number_none(text):
    assert extract_final_number(text) is None


def test_exact_match():
    assert exact_match("so #### 3.50", "3.5") == 1.0
    assert exact_match("the answer is 1,234", 1234) == 1.0
    assert exact_match("#### 17", "18") == 0.0
    assert exact_match("no idea", "18") == 0.0
    assert exact_match("  Paris ", "paris") == 1.0  # non-numeric gold: normalised text
    assert math.isnan(exact_match("1", None))


def test_rouge_hand_computed_and_library():
    from rouge_score import rouge_scorer

    means, rows = rouge_scores(["the cat sat on the mat", "hello world"], [["the cat sat"], ["hello world"]])
    # unigrams: 3 shared of 6 predicted / 3 reference -> F1 = 2 * .5 * 1 / 1.5
    assert rows[0]["rouge1"] == pytest.approx(2 / 3)
    # bigrams: 2 shared of 5 / 2 -> F1 = 2 * .4 * 1 / 1.4
    assert rows[0]["rouge2"] == pytest.approx(0.8 / 1.4)
    assert rows[1] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert means["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    lib = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("the cat sat", "the cat sat on the mat")
    assert rows[0]["rougeL"] == pytest.approx(lib["rougeL"].fmeasure)


def test_rouge_multi_reference_is_max():
    _, rows = rouge_scores(["the cat sat"], [["a dog ran far", "the cat sat"]])
    assert rows[0]["rouge1"] == 1.0
    _, one = rouge_scores(["the cat sat"], [["a dog ran far"]])
    assert one[0]["rouge1"] < 1.0


def test_bleu_chrf_match_sacrebleu():
    import sacrebleu

    hyps = ["The goods cost less than 20 euros.", "A cat is on the mat today."]
    refs = [["The goods cost under 20 euros."], ["There is a cat on the mat."]]
    means, rows = bleu_chrf(hyps, refs)
    assert means["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score)
    assert means["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [[r[0] for r in refs]]).score)
    assert 0 < means["bleu"] < 100
    same, _ = bleu_chrf(["an identical sentence here"], [["an identical sentence here"]])
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    # a variable number of references: missing ones are padded with None
    multi, _ = bleu_chrf(hyps, [refs[0] + ["The goods cost less than 20 euros."], refs[1]])
    assert multi["bleu"] > means["bleu"]
    padded = sacrebleu.corpus_bleu(hyps, [[refs[0][0], refs[1][0]], ["The goods cost less than 20 euros.", None]])
    assert multi["bleu"] == pytest.approx(padded.score)


def test_score_predictions_uses_zh_tokenizer():
    from sacrebleu.metrics import BLEU

    task = get_task("translation")
    exs = [Example(id=str(i), messages=[{"role": "user", "content": "x"}], response=r,
                   record={"tgt_lang": "zh"}, dialect="fields", source="t", line=i)
           for i, r in enumerate(["我们今天去公园散步", "这是一个测试句子"])]
    preds = ["我们今天去公园", "这是一个句子"]
    means, _ = score_predictions(task, exs, preds)
    assert means["bleu"] == pytest.approx(BLEU(tokenize="zh").corpus_score(preds, [[e.response for e in exs]]).score)
    assert means["bleu"] != pytest.approx(BLEU(tokenize="13a").corpus_score(preds, [[e.response for e in exs]]).score)
