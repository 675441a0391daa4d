import json

import pytest

from igds.data import DataError, Rejects
from igds.tasks import BUILTIN_TASKS, get_task, gsm8k_solution

GSM = {"id": "g1", "question": "Tom has 3 apples and buys 1,200 more. How many?",
       "answer": "He has 3 + 1200 = <<3+1200=1203>>1203 apples.\n#### 1,203"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_math_task(tmp_path):
    task = get_task("math")
    assert task.metric == "exact_match" and task.max_new_tokens == 256
    [ex] = task.load(_write(tmp_path / "g.jsonl", [GSM]))
    assert ex.prompt.startswith("Tom has 3 apples") and ex.prompt.endswith('"#### <number>".')
    assert ex.response == "He has 3 + 1200 = 1203 apples.\n#### 1203"
    assert task.gold(ex) == "1203" and task.references(ex) == [ex.response]
    [ex2] = task.load(_write(tmp_path / "h.jsonl", [{**GSM, "final_answer": "1203"}]))
    assert task.gold(ex2) == "1203"
    assert gsm8k_solution("a <<1+1=2>>2\n####  $-5 ") == ("a 2", "-5")


def test_math_without_final_line_is_located(tmp_path):
    path = _write(tmp_path / "g.jsonl", [GSM, {**GSM, "id": "g2", "answer": "no final line"}])
    with pytest.raises(DataError, match=r"g.jsonl:2: field 'answer': no '#### N' line"):
        get_task("math").load(path)
    rejects = Rejects()
    assert [e.id for e in get_task("math").load(path, skip_bad=True, rejects=rejects)] == ["g1"]
    assert rejects.rows[0]["line"] == 2


def test_summarization_task(tmp_path):
    task = get_task("summarization")
    rows = [{"id": "d1", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet.",
             "summaries": ["They greet.", "Two people say hello.", "A greeting."]},
            {"id": "d2", "dialogue": "#Person1#: Bye.", "summary": "One leaves."}]
    a, b = task.load(_write(tmp_path / "d.jsonl", rows))
    assert a.prompt == "Summarize the following dialogue.\n\n#Person1#: Hi.\n#Person2#: Hello."
    assert a.response == "They greet." and task.references(a) == rows[0]["summaries"]
    assert task.references(b) == ["One leaves."] and task.gold(b) is None
    assert task.metrics == ("rougeL", "rouge1", "rouge2")


def test_translation_task(tmp_path):
    task = get_task("translation")
    rows = [{"id": "t1", "src_lang": "de", "tgt_lang": "en", "source": "Guten Morgen.", "target": "Good morning."},
            {"id": "t2", "lang_pair": "zh-en", "source": "你好", "target": "Hello"},
            {"id": "t3", "source": "x", "target": "y"}]
    path = _write(tmp_path / "t.jsonl", rows)
    a, b = task.load(path, limit=2)
    assert a.prompt == "Translate this from German to English:\nGerman: Guten Morgen.\nEnglish:"
    assert a.response == "Good morning." and b.prompt.startswith("Translate this from Chinese to English:")
    with pytest.raises(DataError, match=r"t.jsonl:3: field 'src_lang'"):
        task.load(path)


def test_user_tasks(tmp_path):
    t = get_task({"name": "qa", "prompt_template": "Q: {q}", "reference_field": "a", "metric": "exact_match",
                  "max_new_tokens": 8})
    [ex] = t.load(_write(tmp_path / "q.jsonl", [{"id": 1, "q": "2+2?", "a": 4}]))
    assert (ex.prompt, ex.response, t.gold(ex), t.metric) == ("Q: 2+2?", "4", "4", "exact_match")
    y = tmp_path / "task.yaml"
    y.write_text("name: s\nprompt_field: text\nresponse_field: summ\nmetrics: [rouge1, bleu]\n")
    assert get_task(str(y)).metrics == ("rouge1", "bleu")
    short = get_task({"name": "math", "max_new_tokens": 64})
    assert short.max_new_tokens == 64 and short.response_fn is not None
    own = get_task({"base": "translation", "prompt_template": "{source} ->"})
    [tr] = own.load(_write(tmp_path / "t.jsonl", [{"id": "a", "source": "Hallo", "target": "Hello"}]))
    assert tr.prompt == "Hallo ->" and own.metric == "bleu"
    with pytest.raises(ValueError, match="unknown metric"):
        get_task({"name": "x", "prompt_field": "a", "response_field": "b", "metric": "accuracy"})
    with pytest.raises(ValueError, match="unknown key"):
        get_task({"name": "x", "prompt_field": "a", "response_field": "b", "metric": "bleu", "temperature": 1})
    with pytest.raises(ValueError, match="response_field"):
        get_task({"name": "x", "prompt_field": "a", "metric": "bleu"})
    with pytest.raises(ValueError, match="unknown task"):
        get_task("poetry")
    assert get_task(t) is t


def test_real_rows(shared_data):
    math_task, summ, tr = (get_task(n) for n in BUILTIN_TASKS)
    gsm = math_task.load(shared_data / "gsm8k" / "test.jsonl", limit=3)
    for ex in gsm:
        assert "<<" not in ex.response
        assert ex.response == ex.record["rationale"] + "\n#### " + ex.record["final_answer"]
        assert math_task.gold(ex) == ex.record["final_answer"]
    assert gsm[0].response.endswith("\n#### 18")
    dlg = summ.load(shared_data / "dialogsum" / "test.jsonl", limit=2)
    assert all(len(summ.references(ex)) == 3 for ex in dlg)
    assert dlg[0].prompt.startswith("Summarize the following dialogue.\n\n#Person1#:")
    mt = tr.load(shared_data / "translation" / "de-en" / "test.jsonl", limit=2)
    assert mt[0].prompt == ("Translate this from German to English:\nGerman: Die Ware hat unter 20 Euro gekostet."
                            "\nEnglish:")
    assert mt[0].response == "The goods cost less than 20 euros."
