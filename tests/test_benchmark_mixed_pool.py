"""benchmarks/mixed_pool.py: template-free pools carry no task template, relevance grades are right,
the regex floor finds the leak only on a leaky pool, arms resume from their cache, and the
length-matched pool cannot be split by response length."""

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from igds.data import load_examples
from igds.selection import select_indices
from igds.tasks import BUILTIN_TASKS, get_task
from mixed_pool import (LEAKY_NAMES, POOLS, Arms, build_pool, nearest_in_length, pool_name, regex_scores,
                        selection_rows, template_fixed_strings)

# What the task template imposes beyond its literal text (method audit §3.1): none may reach a task row.
FORMAT_MARKERS = ("step by step", "####", "#Person", "Summarize the following dialogue", "Translate this from")


def _rows(lengths, tag):
    return [SimpleNamespace(id=f"{tag}{i}", response="x" * n) for i, n in enumerate(lengths)]


def test_each_task_row_gets_its_nearest_unused_off_task_rows():
    task = _rows([10, 100], "t")
    others = _rows([1, 9, 11, 12, 50, 98, 99, 103, 500], "o")
    picked = nearest_in_length(task, others, 6, random.Random(0))
    assert sorted(len(e.response) for e in picked) == [9, 11, 12, 98, 99, 103]
    assert len({e.id for e in picked}) == 6  # no row twice


def test_uneven_split_and_exhausted_neighbourhoods():
    task = _rows([5, 5, 5], "t")
    others = _rows([5, 5, 6, 4, 40, 41, 1000], "o")
    picked = nearest_in_length(task, others, 5, random.Random(1))  # 2 + 2 + 1 rows
    assert sorted(len(e.response) for e in picked) == [4, 5, 5, 6, 40]


# ---------------------------------------------------------------- synthetic copies of ../shared/data
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def shared(tmp_path):
    """Tiny files with the fields of gsm8k/, dialogsum/, instruction_pool/ and math_near/."""
    root = tmp_path / "shared"
    _jsonl(root / "gsm8k" / "train.jsonl", [
        {"id": f"gsm8k-train-{i:05d}", "question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
         "answer": f"He has {i}+{i + 2}=<<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}",
         "rationale": f"He has {i}+{i + 2}={2 * i + 2} apples.", "final_answer": str(2 * i + 2)}
        for i in range(12)])
    _jsonl(root / "dialogsum" / "train.jsonl", [
        {"id": f"train_{i}", "dialogue": f"#Person1#: Hi, are you coming at {i}?\n#Person2#: Yes, see you.",
         "summary": f"#Person2# will meet #Person1# at {i}.", "topic": "meeting"} for i in range(12)])
    sources = ["samsum", "xsum", "wiki_bio", "cosmos_qa", "dream", "cnn_dailymail_3_0_0"]
    _jsonl(root / "instruction_pool" / "t0_pool.jsonl", [
        {"id": f"t0-{s}-{i:04d}", "instruction": f"Question {i} from {s}: what happened?", "input": "",
         "output": "o" * (3 + 7 * i), "source_dataset": s, "template": "tpl"}
        for s in sources for i in range(8)])
    for name, n in (("mathqa", 6), ("aqua_rat", 6)):
        _jsonl(root / "math_near" / name / "validation.jsonl", [
            {"id": f"{name}-validation-{i:05d}", "question": f"a train runs {i} km in 2 h ; its speed ?",
             "rationale": f"speed = {i} / 2 answer : a", "choices": [str(i / 2), "1", "2", "3", "4"],
             "answer_letter": "A", "answer_text": str(i / 2), "source": name} for i in range(n)])
    return root


def _build(shared, pool, tmp_path, leaky=False, n_task=4, n_near=0, n_other=8):
    spec = POOLS[pool]
    src = shared / ("gsm8k" if spec.task == "math" else "dialogsum") / "train.jsonl"
    out = tmp_path / f"{pool}{'-leaky' if leaky else ''}.jsonl"
    labels = build_pool(spec, get_task(spec.task), str(src), n_task, n_near if spec.math_near else 0, n_other,
                        0, out, leaky=leaky, shared=shared, first_row=0)
    return labels, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _text(row):
    return "\n".join(m["content"] for m in row["messages"])


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_template_free_pool_rows_carry_no_task_template(shared, tmp_path, pool):
    fixed = [s for t in BUILTIN_TASKS for s in template_fixed_strings(get_task(t))]
    assert any("step by step" in s for s in fixed) and "Summarize the following dialogue." in fixed
    labels, rows = _build(shared, pool, tmp_path, n_near=4)
    assert len(rows) == len(labels) == 4 + 8 + (4 if POOLS[pool].math_near else 0)
    for row in rows:
        assert not [s for s in fixed if s in _text(row)], row["id"]
        if row["source"] == "task":
            assert not [m for m in FORMAT_MARKERS if m in _text(row)], row["id"]
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    # the same rows wrapped in the task template (--leaky) do carry it: the check above can fail
    _, leaky = _build(shared, pool, tmp_path, leaky=True, n_near=4)
    task_fixed = template_fixed_strings(get_task(POOLS[pool].task))
    assert all(any(s in _text(r) for s in task_fixed) for r in leaky if r["source"] == "task")


def test_plain_rows_keep_the_content_and_answer(shared, tmp_path):
    _, rows = _build(shared, "math-random", tmp_path)
    task = [r for r in rows if r["source"] == "task"]
    row = next(r for r in task if r["id"] == "gsm8k-train-00003")
    assert row["messages"][0]["content"] == "Tom has 3 apples and buys 5 more. How many now?"
    assert row["messages"][1]["content"] == "He has 3+5=8 apples.\nAnswer: 8"  # no <<...>>, no ####
    _, rows = _build(shared, "summarization-random", tmp_path)
    row = next(r for r in rows if r["id"] == "train_2")
    assert row["messages"][0]["content"] == "Person1: Hi, are you coming at 2?\nPerson2: Yes, see you."
    assert row["messages"][1]["content"] == "Person2 will meet Person1 at 2."


def test_graded_relevance_labels(shared, tmp_path):
    labels, rows = _build(shared, "math-near", tmp_path, n_task=4, n_near=5, n_other=10)
    by_id = {r["id"]: r for r in rows}
    assert all(r["relevance"] == labels[i] for i, r in by_id.items())
    grade = {i: (2 if i.startswith("gsm8k") else 1 if i.startswith(("mathqa", "aqua")) else 0) for i in labels}
    assert labels == grade
    assert sum(i.startswith("mathqa") for i in labels) == 3 and sum(i.startswith("aqua") for i in labels) == 2
    assert not any("dream" in i for i in labels)  # DREAM overlaps DialogSum: never in a pool
    labels, rows = _build(shared, "summarization-length-matched", tmp_path, n_task=4, n_other=20)
    for r in rows:
        want = 2 if r["source"] == "task" else 1 if r["source_dataset"] in ("samsum", "xsum",
                                                                             "cnn_dailymail_3_0_0") else 0
        assert labels[r["id"]] == want, r["id"]
    assert {labels[r["id"]] for r in rows} == {0, 1, 2}


def test_regex_floor_finds_the_leak_and_is_at_chance_without_it(shared, tmp_path):
    fixed = template_fixed_strings(get_task("math"))
    for leaky in (True, False):
        labels, _ = _build(shared, "math-random", tmp_path, leaky=leaky, n_task=6, n_other=18)
        pool = load_examples(tmp_path / f"math-random{'-leaky' if leaky else ''}.jsonl")
        table = regex_scores(pool, fixed, seed=0)
        found = table.column("fixed_strings_found").to_pylist()
        chosen = select_indices(table, ratio=0.5)
        hits = sum(labels[pool[i].id] == 2 for i in chosen)
        if leaky:  # every task row matches, no other row does: all 6 in the selected 12
            assert [f > 0 for f in found] == [labels[e.id] == 2 for e in pool]
            assert hits == 6
        else:  # no row matches: the pick is the random tie-break
            assert found == [0.0] * len(pool)
            seeds = [sum(labels[pool[i].id] == 2 for i in select_indices(regex_scores(pool, fixed, s), ratio=0.5))
                     for s in range(30)]
            assert 2.0 <= sum(seeds) / len(seeds) <= 4.0  # chance: 6 task rows x 12/24 = 3


def test_pool_names_keep_the_old_leaky_blocks():
    assert pool_name("math-random", True) == "mixed-math" == LEAKY_NAMES["math-random"]
    assert pool_name("summarization-length-matched", True) == "mixed-summarization-length-matched"
    assert pool_name("math-near", True) == "mixed-math-near-leaky"
    assert pool_name("math-random", False) == "mixed-math-random-template-free"


def test_the_command_beside_a_table_names_its_sae():
    from mixed_pool import ARMS, command_line

    args = SimpleNamespace(pool="summarization-length-matched", leaky=False, sae="default", no_finetune=True)
    assert command_line(args, ["igds", "mona"]) == ("python benchmarks/mixed_pool.py --pool summarization-length-matched"
                                                     " --sae default --arms igds,mona --no-finetune")
    assert "--sae" not in command_line(SimpleNamespace(pool="math-near", leaky=False, sae=None, no_finetune=False),
                                       list(ARMS))


# ---------------------------------------------------------------- arms: cached, resumed, diagnosed
class _Exp:
    """The part of igds.experiment.Experiment the arms read, over a file pool (no model)."""

    def __init__(self, run_dir: Path, pool_path: Path):
        self.run_dir, self.pool_path = run_dir, pool_path
        igds = SimpleNamespace(model=SimpleNamespace(name="none"), use_chat_template=True)
        self.cfg = SimpleNamespace(baselines={}, finetune=SimpleNamespace(max_length=64), igds=igds)

    def data(self):
        return {"pool": SimpleNamespace(path=str(self.pool_path))}

    def pool(self):
        return load_examples(self.pool_path)

    def the_task(self):
        return get_task("math")

    def model(self):
        return None  # longest then counts characters


def test_arms_are_cached_by_pool_content_and_skipped_on_rerun(shared, tmp_path, monkeypatch):
    _build(shared, "math-random", tmp_path, leaky=True)
    pool_path = tmp_path / "math-random-leaky.jsonl"
    arms = Arms(_Exp(tmp_path / "run", pool_path), seed=0)
    first = {a: arms.table(a) for a in ("random", "regex", "zip")}
    assert (tmp_path / "run" / "arms" / "regex.parquet").exists()

    def boom(self, arm):
        raise AssertionError(f"{arm} re-scored")

    monkeypatch.setattr(Arms, "score", boom)
    again = Arms(_Exp(tmp_path / "run", pool_path), seed=0)
    for arm, table in first.items():
        assert again.table(arm).column("score").to_pylist() == table.column("score").to_pylist()
    with pytest.raises(AssertionError, match="random re-scored"):
        Arms(_Exp(tmp_path / "run", pool_path), seed=1).table("random")  # another seed: another key
    pool_path.write_text(pool_path.read_text(encoding="utf-8").replace("apples", "pears"), encoding="utf-8")
    with pytest.raises(AssertionError, match="regex re-scored"):
        again.table("regex")  # another pool content: another key


def test_archived_arms_are_reused_by_a_new_run_folder(shared, tmp_path, monkeypatch):
    """A new machine has no runs/ folder: the archive (committed) spares it the finished arms."""
    _build(shared, "math-random", tmp_path, leaky=True)
    pool_path = tmp_path / "math-random-leaky.jsonl"
    made = Arms(_Exp(tmp_path / "run", pool_path), seed=0, archive=tmp_path / "archive").table("regex")
    assert (tmp_path / "archive" / "regex.json").exists()

    def boom(self, arm):
        raise AssertionError(f"{arm} re-scored")

    monkeypatch.setattr(Arms, "score", boom)
    fresh = Arms(_Exp(tmp_path / "elsewhere", pool_path), seed=0, archive=tmp_path / "archive")
    assert fresh.table("regex").column("score").to_pylist() == made.column("score").to_pylist()
    assert fresh.facts("regex")["wall_s"] is not None
    with pytest.raises(AssertionError, match="regex re-scored"):  # without the archive: scored again
        Arms(_Exp(tmp_path / "third", pool_path), seed=0).table("regex")


def test_selection_rows_report_metrics_and_diagnostics(shared, tmp_path):
    labels, _ = _build(shared, "math-random", tmp_path, leaky=True, n_task=6, n_other=18)
    pool_path = tmp_path / "math-random-leaky.jsonl"
    arms = Arms(_Exp(tmp_path / "run", pool_path), seed=0)
    tables = {a: arms.table(a) for a in ("longest", "regex", "random")}
    rows, n_from = selection_rows(load_examples(pool_path), labels, tables)
    by = {r["method"]: r for r in rows}
    assert n_from is None  # no model table: rho against n_tokens is undefined, not 0
    assert by["regex"]["precision"] == 0.5 and by["regex"]["recall"] == 1.0 and by["regex"]["ndcg"] == 1.0
    assert by["longest"]["overlap_longest"] == 1.0 and by["longest"]["rho_response_chars"] == pytest.approx(1.0)
    assert by["longest"]["rho_n_tokens"] is None
    assert "overlap_loss_top" not in by["random"]  # loss not run: no loss overlaps
