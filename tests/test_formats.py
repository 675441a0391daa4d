"""Dialects and formats users bring, read without loss and written back with their types."""

import base64
import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from igds.data import DataError, DataSpec, load_examples, tokenize_example, write_messages, write_records


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one(tmp_path, row, spec=None):
    return load_examples(jsonl(tmp_path / "d.jsonl", [row]), spec)[0]


def test_llama_factory_alpaca_system_and_history(tmp_path):
    ex = one(tmp_path, {"instruction": "and 3+3?", "input": "", "output": "6", "system": "Be brief.",
                        "history": [["2+2?", "4"], ["and 1+1?", "2"]]})
    assert ex.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 1+1?"},
                           {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 3+3?"}]
    # the record's own system message wins over the configured one
    assert one(tmp_path, {"instruction": "a", "output": "b", "system": "own"},
               DataSpec(system_prompt="cfg")).messages[0]["content"] == "own"
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'history\[0\]': expected a \[user, assistant\] pair"):
        one(tmp_path, {"instruction": "a", "output": "b", "history": [["only one"]]})


def test_tool_roles_tool_calls_and_content_parts(tmp_path):
    ex = one(tmp_path, {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in"}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}], "tools": [{"type": "function", "function": {"name": "weather"}}]})
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool"]
    assert ex.messages[0]["content"].startswith("Tools:\n[") and "weather" in ex.messages[0]["content"]
    assert ex.messages[1]["content"] == "Weather in\n\nParis?"
    assert json.loads(ex.messages[2]["content"]) == {"name": "weather", "arguments": {"city": "Paris"}}
    assert ex.response == "It is 18C."
    lf = one(tmp_path, {"conversations": [{"from": "human", "value": "w?"}, {"from": "function_call", "value": "{}"},
                                          {"from": "observation", "value": "sun"}, {"from": "gpt", "value": "Sunny."}]})
    assert [m["role"] for m in lf.messages] == ["user", "assistant", "tool"] and lf.response == "Sunny."
    with pytest.raises(DataError, match=r"field 'messages\[0\]\.content\[0\]': content part of type 'image_url'"):
        one(tmp_path, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                                    {"role": "assistant", "content": "x"}]})


def test_trl_conversational_prompt_completion(tmp_path):
    ex = one(tmp_path, {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}],
                        "completion": [{"role": "assistant", "content": "4"}]})
    assert ex.dialect == "prompt_completion" and ex.response == "4"
    assert ex.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}]
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'completion': no assistant turn"):
        one(tmp_path, {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "x"}]})


def test_plain_text_rows_are_all_response_and_tokenised_raw(tmp_path, tiny_lm):
    ex = one(tmp_path, {"text": "The cat sat."})
    assert ex.dialect == "text" and ex.messages == [] and ex.response == "The cat sat."
    t = tokenize_example(tiny_lm.tokenizer, ex)
    assert t.prompt_len == 0 and t.ids == tiny_lm.tokenizer("The cat sat.")["input_ids"]
    out = tmp_path / "m.jsonl"
    write_messages(out, [ex])
    assert load_examples(out)[0].response == "The cat sat."


def test_csv_and_utf8_bom(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes('\ufeffid,instruction,output\nr1,"Say ""hi""\nplease",hi\nr2,x,\n'.encode("utf-8"))
    exs = load_examples(p, skip_bad=True)
    assert [e.id for e in exs] == ["r1"] and exs[0].messages[0]["content"] == 'Say "hi"\nplease'
    with pytest.raises(DataError, match=r"d\.csv:4: field 'output': empty"):  # the row starts on line 4
        load_examples(p)
    (tmp_path / "wide.csv").write_text("instruction,output\na,b,c\n")
    with pytest.raises(DataError, match=r"wide\.csv:2: 1 more cells than the header"):
        load_examples(tmp_path / "wide.csv")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "completion": "c"}).encode() + b"\n")
    assert load_examples(bom)[0].response == "c"
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"prompt": "p", "completion": "c"}]).encode())
    assert load_examples(tmp_path / "bom.json")[0].response == "c"


def test_values_keep_their_types_on_write(tmp_path):
    row = {"id": 7, "question": "How many?", "answer": 72, "weight": 0.5}
    ex = one(tmp_path, row, DataSpec(prompt_template="Q: {question}", response_field="answer"))
    assert ex.response == "72"
    write_records(tmp_path / "out.jsonl", [ex], {"7": {"igds_score": 1.0}})
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {**row, "igds_score": 1.0}


def test_parquet_non_json_types_are_written_safely(tmp_path):
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    table = pa.table({"prompt": ["p"], "completion": ["c"], "at": pa.array([when], pa.timestamp("us", tz="UTC")),
                      "day": [dt.date(2024, 5, 1)], "blob": [b"\x00\xff"],
                      "price": pa.array([Decimal("1.10")], pa.decimal128(5, 2))})
    pq.write_table(table, tmp_path / "d.parquet")
    write_records(tmp_path / "out.jsonl", load_examples(tmp_path / "d.parquet"))
    got = json.loads((tmp_path / "out.jsonl").read_text())
    assert got["at"] == "2024-05-01T12:30:00+00:00" and got["day"] == "2024-05-01"
    assert base64.b64decode(got["blob"]) == b"\x00\xff" and got["price"] == "1.10"
