"""``positions: content``: the record's own text counts; system prompt, template words and special tokens do not."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_tokenizer

from igds.activations import count_mask
from igds.cli import main
from igds.config import ScoreConfig, load_config
from igds.content import render_template
from igds.data import DataSpec, parse_record, prompt_text, response_terminator, tokenize_example
from igds.feature_set import Candidate
from igds.features import FeatureSet
from igds.report.stats import correlations
from igds.scoring import FeatureScorer

from planted import blank_sae, plant_detector

TEMPLATE = "Solve the problem step by step: {question}\nEnd with @@."
SPEC = DataSpec(dialect="fields", prompt_template=TEMPLATE, response_field="answer", system_prompt="You are SYS.")
QUESTIONS = [f"Tom has {i} apples and buys {i + 2} more. How many now?" for i in range(6)]


def record(i: int, question: str | None = None) -> dict:
    return {"id": f"q{i}", "question": question or QUESTIONS[i % len(QUESTIONS)], "answer": f"He has {2 * i + 2}."}


def content_text(tok, t) -> list[str]:
    """The counted tokens, decoded, as the runs of consecutive content tokens."""
    runs, current = [], []
    for token, is_content in zip(t.ids, t.content):
        if is_content:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


class SlowTokenizer:
    """The fast test tokenizer without an offset mapping: the prefix-alignment path."""

    is_fast = False

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, *args, **kw):
        assert not kw.get("return_offsets_mapping"), "a slow tokenizer has no offset mapping"
        return self.tok(*args, **kw)


def test_template_words_system_prompt_and_special_tokens_are_not_content():
    tok = make_tokenizer()
    ex = parse_record(record(3), SPEC, "mem.jsonl", 1)
    t = tokenize_example(tok, ex)
    assert content_text(tok, t) == [QUESTIONS[3], "He has 8."]
    assert not any(t.content[i] for i, token in enumerate(t.ids) if token in tok.all_special_ids)
    # count_mask reads the flags (minus the first token); the response-only mask is a strict part of it
    mask = count_mask([t], len(t.ids), "content")[0].tolist()
    assert mask == [False] + t.content[1:]
    assert sum(mask) > sum(count_mask([t], len(t.ids), "response")[0].tolist()) - 1


def test_without_a_template_the_whole_prompt_is_content_and_truncation_keeps_alignment():
    tok = make_tokenizer()
    ex = parse_record({"id": "a", "instruction": "add 7 and 7", "output": "14"}, DataSpec(), "mem.jsonl", 1)
    t = tokenize_example(tok, ex)
    assert content_text(tok, t) == ["add 7 and 7", "14"]
    short = tokenize_example(tok, ex, max_length=len(t.ids) - 3)
    assert short.truncated and short.content == t.content[:len(short.ids)]
    text = parse_record({"id": "b", "text": "plain words"}, DataSpec(), "mem.jsonl", 1)
    assert content_text(tok, tokenize_example(tok, text)) == ["plain words"]


def test_slow_tokenizer_alignment_matches_the_offset_mapping():
    tok = make_tokenizer()
    for i in range(3):
        ex = parse_record(record(i), SPEC, "mem.jsonl", i + 1)
        fast, slow = tokenize_example(tok, ex), tokenize_example(SlowTokenizer(tok), ex)
        assert slow.ids == fast.ids and slow.content == fast.content


def test_render_template_reports_where_the_values_went():
    text, spans = render_template("A {x} b {y!r:>6} c", {"x": "one", "y": 2})
    assert text == "A {x} b {y!r:>6} c".format(x="one", y=2)
    assert [text[s:e] for s, e in spans] == ["one", "     2"]


def test_a_message_the_template_rewrote_has_no_content_and_content_mode_says_so():
    tok = make_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"
    t = tokenize_example(tok, parse_record(record(1), SPEC, "mem.jsonl", 1))
    assert t.content is None
    assert count_mask([t], len(t.ids), "all").sum() == len(t.ids) - 1  # other modes are unaffected
    with pytest.raises(ValueError, match="positions=content: the chat template rewrites"):
        count_mask([t], len(t.ids), "content")


def test_positions_all_tokenises_and_counts_as_before():
    # the ids are those of the tokenisation before content flags existed, and `all` never reads the flags
    tok = make_tokenizer()
    for i in range(3):
        ex = parse_record(record(i), SPEC, "mem.jsonl", i + 1)
        t = tokenize_example(tok, ex)
        prompt = tok(prompt_text(tok, ex.messages), add_special_tokens=False)["input_ids"]
        reply = tok(ex.response + response_terminator(tok), add_special_tokens=False)["input_ids"]
        assert t.ids == prompt + reply and t.prompt_len == len(prompt)
        assert torch.equal(count_mask([t], len(t.ids), "all"), count_mask([replace(t, content=None)], len(t.ids), "all"))


@pytest.fixture
def template_feature(tiny_lm):
    """Feature 3 fires on '@', a character only the task's template writes."""
    sae = blank_sae(tiny_lm, 1)
    on = ["End with @@.", "@@ then @ and @@"] * 4
    off = [q + " He has 4." for q in QUESTIONS] + ["You are SYS.", "Solve the problem step by step:"]
    plant_detector(tiny_lm, sae, 3, 1, on, off, "@")
    fs = FeatureSet(candidates=[Candidate("L1/F3", 1, 3, scale=1.0, validated=True)], validated=["L1/F3"])
    return {1: sae}, fs


def test_a_template_only_feature_scores_zero_on_content_but_not_on_all(tiny_lm, template_feature):
    saes, fs = template_feature
    exs = [parse_record(record(i), SPEC, "mem.jsonl", i + 1) for i in range(6)]
    all_scores = FeatureScorer(tiny_lm, saes, fs, ScoreConfig(positions="all")).score(exs)[0]
    content = FeatureScorer(tiny_lm, saes, fs, ScoreConfig(positions="content")).score(exs)[0]
    assert min(all_scores.column("score").to_pylist()) > 0
    assert content.column("score").to_pylist() == [0.0] * 6
    # content counts fewer tokens than all: the system prompt, the template and the chat markup are gone
    counted = zip(content.column("n_tokens").to_pylist(), all_scores.column("n_tokens").to_pylist())
    assert all(c < a for c, a in counted)


def test_content_is_a_choice_of_the_config_and_defaults_stay():
    cfg = load_config(None, {"score.positions": "content", "recall.positions": "content",
                             "filter.positions": "content"})
    assert (cfg.score.positions, cfg.recall.positions, cfg.filter.positions) == ("content",) * 3
    assert load_config(None, {}).score.positions == "all"


def test_run_json_records_the_score_length_spearman(setup, capsys):
    args = ["run", "--model", setup["model"], "--sae", setup["sae"], "--task-data", setup["task"],
            "--reference", setup["ref"], "--pool", setup["pool"], "--out", setup["out"], "--no-report",
            "filter.enabled=false", "recall.n_candidates=4", "score.positions=content"]
    assert main(args) == 0
    table = pq.read_table(setup["out"] + "/scores.parquet")
    _, rho, _ = correlations(table.column("score").to_numpy(), table.column("n_tokens").to_numpy())
    recorded = json.loads(Path(setup["out"], "run.json").read_text())["score_length_spearman"]
    assert np.isfinite(rho) and recorded == round(rho, 4)
    assert f"Spearman rho(score, n_tokens) = {rho:+.3f}" in capsys.readouterr().out


@pytest.mark.real
def test_real_tokenizer_drops_the_math_template_and_system_prompt(real_lm):
    from igds.tasks import MATH_TEMPLATE

    tok = real_lm.tokenizer
    spec = DataSpec(dialect="fields", prompt_template=MATH_TEMPLATE, response_field="answer")
    ex = parse_record({"id": 1, "question": "Janet has 3 ducks. How many legs?", "answer": "6 legs.\n#### 6"},
                      spec, "mem.jsonl", 1)
    t = tokenize_example(tok, ex)
    assert "".join(content_text(tok, t)).replace(" ", "") == "Janethas3ducks.Howmanylegs?6legs.\n####6"
    slow = tokenize_example(SlowTokenizer(tok), ex)  # the prefix alignment agrees on a tokenizer with merges
    assert slow.ids == t.ids and slow.content == t.content


def test_spans_survive_the_messages_file_an_experiment_materialises(tmp_path):
    """runner.materialize writes task data as messages rows: the template words must stay non-content."""
    from igds.data import DataError, load_examples, write_messages
    from igds.experiment.runner import materialize
    from igds.tasks import Task

    tok = make_tokenizer()
    src = tmp_path / "task.jsonl"
    src.write_text("".join(json.dumps(record(i)) + "\n" for i in range(3)))
    task = Task(name="toy", spec=SPEC, metrics=("exact_match",))
    dc = materialize(task, replace(load_config(None).task_data, path=str(src)), tmp_path / "m.jsonl")
    [back] = [e for e in load_examples(dc.path, DataSpec(dialect="messages")) if e.id == "q2"]
    t = tokenize_example(tok, back)
    assert content_text(tok, t) == [QUESTIONS[2], "He has 6."]
    # a messages file without the field: the whole prompt is content (the old, leaky reading)
    plain = tmp_path / "plain.jsonl"
    write_messages(plain, [replace(back, content_spans={})])
    [bare] = list(load_examples(str(plain), DataSpec(dialect="messages")))
    assert "Solve the problem" in "".join(content_text(tok, tokenize_example(tok, bare)))
    # a span outside its message is refused with the file, line and field
    bad = tmp_path / "bad.jsonl"
    row = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    row["igds_content_spans"] = [[1, [[0, 10_000]]]]
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="igds_content_spans"):
        list(load_examples(str(bad), DataSpec(dialect="messages")))


def test_translation_prompt_keeps_the_language_names_out_of_content():
    from igds.tasks import get_task

    tok = make_tokenizer()
    rec = {"id": "t1", "source": "Guten Morgen, Welt.", "target": "Good morning, world.", "lang_pair": "de-en"}
    ex = get_task("translation")._render(parse_record(rec, get_task("translation").spec, "mem.jsonl", 1))
    assert ex.messages[-1]["content"].startswith("Translate this from German to English")
    assert content_text(tok, tokenize_example(tok, ex)) == ["Guten Morgen, Welt.", "Good morning, world."]
