import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from igds.data import (DataError, DataSpec, Rejects, iter_examples, load_examples, tokenize_example, write_messages,
                       write_records)


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_dialects_are_detected(tmp_path):
    rows = {
        "alpaca": {"instruction": "Do X", "input": "with Y", "output": "done"},
        "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        "messages": {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"}]},
        "prompt_completion": {"prompt": "2+2=", "completion": "4"},
    }
    for dialect, row in rows.items():
        ex = load_examples(jsonl(tmp_path / f"{dialect}.jsonl", [row]))[0]
        assert ex.dialect == dialect and ex.response in ("done", "hello", "4")
    alpaca = load_examples(tmp_path / "alpaca.jsonl")[0]
    assert alpaca.messages[0]["content"] == "Do X\n\nwith Y"
    msgs = load_examples(tmp_path / "messages.jsonl")[0]
    assert [m["role"] for m in msgs.messages] == ["system", "user"]


def test_fields_dialect_with_template(tmp_path):
    p = jsonl(tmp_path / "gsm.jsonl", [{"question": "How many?", "final_answer_value": 72}])
    spec = DataSpec(prompt_template="Q: {question}", response_field="final_answer_value")
    ex = load_examples(p, spec)[0]
    assert ex.prompt == "Q: How many?" and ex.response == "72" and ex.id == "gsm-1"


def test_json_and_parquet_sources(tmp_path):
    rows = [{"id": "a", "prompt": "p1", "completion": "c1"}, {"id": "b", "prompt": "p2", "completion": "c2"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.json", "d.parquet"):
        assert [e.id for e in load_examples(tmp_path / name)] == ["a", "b"]


@pytest.mark.parametrize("line,pattern", [
    ('{"instruction": "x", "output": "y"', r"bad\.jsonl:2: malformed JSON"),
    ('{"question": "x"}', r"bad\.jsonl:2: field 'instruction': missing"),
    ('{"instruction": "x", "output": 5}', r"bad\.jsonl:2: field 'output': expected a string, got int"),
    ('{"instruction": "   ", "output": "y"}', r"bad\.jsonl:2: field 'instruction': empty or whitespace-only"),
    ('{"instruction": "x", "output": "y", "id": "r1"}', r"bad\.jsonl:2: field 'id': duplicate id 'r1' \(first seen on line 1\)"),
    ('[1, 2]', r"bad\.jsonl:2: expected a JSON object"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, pattern):
    p = jsonl(tmp_path / "bad.jsonl", [{"id": "r1", "instruction": "a", "output": "b"}, line])
    with pytest.raises(DataError, match=pattern):
        load_examples(p)


def test_missing_field_after_dialect_is_known(tmp_path):
    p = jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "outpt": "d"}])
    with pytest.raises(DataError, match=r"m\.jsonl:2: field 'output': missing"):
        load_examples(p)


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_examples(p)


def test_unknown_dialect_of_first_record(tmp_path):
    p = jsonl(tmp_path / "u.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"u\.jsonl:1: unknown dialect: record has fields \['answer', 'question'\]"):
        load_examples(p)


def test_unknown_dialect_name_and_file_type(tmp_path):
    p = jsonl(tmp_path / "x.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(DataError, match="unknown dialect 'oasst'"):
        load_examples(p, DataSpec(dialect="oasst"))
    (tmp_path / "x.xlsx").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type"):
        load_examples(tmp_path / "x.xlsx")


def test_skip_bad_keeps_valid_rows_and_records_reasons(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'{"id": "1", "instruction": "a", "output": "b"}\n'
                  b'{"id": "2", "instruction": "a"\n'
                  b'{"id": "3", "instruction": "c", "output": ""}\n'
                  b'{"id": "4", "instruction": "caf\xe9", "output": "b"}\n'
                  b'{"id": "1", "instruction": "dup", "output": "b"}\n'
                  b'{"id": "6", "instruction": "e", "output": "f"}\n')
    rejects = Rejects()
    kept = list(iter_examples(p, skip_bad=True, rejects=rejects))
    assert [e.id for e in kept] == ["1", "6"]
    assert [r["line"] for r in rejects.rows] == [2, 3, 4, 5]
    assert "malformed JSON" in rejects.rows[0]["reason"] and rejects.rows[1]["field"] == "output"
    assert "duplicate id" in rejects.rows[3]["reason"]


def test_write_records_keeps_the_input_dialect(tmp_path):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "id": "c1"}
    exs = load_examples(jsonl(tmp_path / "c.jsonl", [row]))
    write_records(tmp_path / "out.jsonl", exs, {"c1": {"igds_score": 1.5}})
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {**row, "igds_score": 1.5}


def test_write_messages_round_trips_and_leaves_an_unchanged_file_alone(tmp_path):
    rows = [{"id": "a", "instruction": "Do X", "input": "with Y", "output": "done"},
            {"id": "b", "prompt": "hi", "completion": "hello"}]
    exs = [load_examples(jsonl(tmp_path / f"{r['id']}.jsonl", [r]))[0] for r in rows]
    out = tmp_path / "out.jsonl"
    assert write_messages(out, exs, {"b": {"source": "t0"}})
    back = load_examples(out)
    assert [(e.id, e.messages, e.response) for e in back] == [(e.id, e.messages, e.response) for e in exs]
    assert json.loads(out.read_text().splitlines()[1])["source"] == "t0"
    mtime = out.stat().st_mtime_ns
    assert not write_messages(out, exs, {"b": {"source": "t0"}}) and out.stat().st_mtime_ns == mtime
    assert write_messages(out, exs[:1])  # changed content is rewritten


def test_tokenize_marks_prompt_boundary_and_truncation(tiny_lm, tmp_path):
    ex = load_examples(jsonl(tmp_path / "t.jsonl", [{"prompt": "hello", "completion": "world"}]))[0]
    t = tokenize_example(tiny_lm.tokenizer, ex)
    prompt = tiny_lm.tokenizer.decode(t.ids[: t.prompt_len])
    assert prompt.endswith("assistant\n") and "hello" in prompt
    assert tiny_lm.tokenizer.decode(t.ids[t.prompt_len:]).startswith("world")
    short = tokenize_example(tiny_lm.tokenizer, ex, max_length=5)
    assert short.truncated and len(short.ids) == 5
