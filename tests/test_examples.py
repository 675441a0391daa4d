"""The quickstart's example data: deterministic, correct answers, planned pool mix, loadable."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from igds.data import load_examples
from igds.quickstart import write_example_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_example_data(tmp_path_factory.mktemp("ex"), seed=0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_identical_bytes(data, tmp_path):
    again = write_example_data(tmp_path, seed=0)
    for name in ("task", "pool"):
        assert again[name].read_bytes() == data[name].read_bytes()


def test_other_seed_gives_other_data(data, tmp_path):
    other = write_example_data(tmp_path, seed=1)
    for name in ("task", "pool"):
        assert other[name].read_bytes() != data[name].read_bytes()


def test_sizes_and_alpaca_fields(data):
    task, pool = _rows(data["task"]), _rows(data["pool"])
    assert len(task) == 160 and len(pool) == 400
    for row in task + pool:
        assert isinstance(row["instruction"], str) and row["instruction"].strip()
        assert isinstance(row["input"], str) and isinstance(row["output"], str) and row["output"].strip()
    assert all(r["input"] == "" for r in task)
    assert len(Counter(r["template"] for r in task)) >= 25  # the task is varied, not one template


def test_files_load_with_igds_data(data):
    assert len(load_examples(data["task"])) == 160
    pool = load_examples(data["pool"])
    assert len(pool) == 400 and {ex.dialect for ex in pool} == {"alpaca"}


def test_no_instruction_overlap(data):
    task, pool = _rows(data["task"]), _rows(data["pool"])
    assert not {r["instruction"] for r in task} & {r["instruction"] for r in pool}
    assert len({r["instruction"] for r in task}) == len(task)
    assert len({(r["instruction"], r["input"]) for r in pool}) == len(pool)
    assert len({r["id"] for r in task + pool}) == len(task) + len(pool)


def test_pool_proportions(data):
    counts = Counter(r["source"] for r in _rows(data["pool"]))
    n = sum(counts.values())
    assert abs(counts.pop("math") / n - 0.35) < 0.02
    assert abs(counts.pop("math_noisy") / n - 0.10) < 0.02
    assert len(counts) >= 6 and sum(counts.values()) / n > 0.5  # several non-math families
    assert max(counts.values()) / n < 0.2


# ------------------------------------------------------------- answers
# An equation in a rationale: numbers (maybe with $), + - × ÷ and brackets, then "= result".
EQUATION = re.compile(r"((?:\$?\d+|[-+×÷() ])+?)\s*=\s*\$?(\d+)")
NUMBER = re.compile(r"\d+")


def _check_rationale(output: str) -> int:
    """Evaluate every equation in a rationale; return the final answer after it agrees with the last one."""
    *steps, last = output.splitlines()
    assert last.startswith("#### ") and 1 <= len(steps) <= 4
    result = None
    for step in steps:
        eqs = EQUATION.findall(step)
        assert eqs, f"no equation in step {step!r}"
        for lhs, rhs in eqs:
            expr = lhs.replace("$", "").replace("×", "*").replace("÷", "/")
            assert re.fullmatch(r"[\d+\-*/() ]+", expr) and re.search(r"[-+*/]", expr), step
            assert eval(expr) == int(rhs), f"wrong arithmetic in {step!r}"  # noqa: S307 - digits and operators only
            result = int(rhs)
    assert int(last[5:]) == result
    return result


def test_every_rationale_is_correct_arithmetic(data):
    rows = _rows(data["task"]) + [r for r in _rows(data["pool"]) if r["source"] == "math"]
    for row in rows:
        _check_rationale(row["output"])
    assert all(len(r["output"].splitlines()) - 1 <= 3 for r in _rows(data["task"]))


# Independent answers recomputed from the numbers in the question for templates we can parse.
SOLVERS = {
    "farm_legs": lambda n: 2 * n[0] + 4 * n[1],
    "coin_cents": lambda n: 25 * n[0] + 10 * n[1],
    "train_distance": lambda n: n[0] * n[1] + n[2] * n[3],
    "tomato_harvest": lambda n: n[0] * n[1] * n[2],
    "pizza_slices": lambda n: n[0] * n[1] - n[2] * n[3],
    "ages_sum": lambda n: 2 * n[1] + n[0],
    "savings_weeks": lambda n: (n[0] - n[1]) // n[2],
    "tank_minutes": lambda n: (n[0] - n[1]) // n[2],
    "pages_left": lambda n: n[0] - 3 * n[1],
    "score_average": lambda n: sum(n) // 3,
    "fence_cost": lambda n: 2 * (n[0] + n[1]) * n[2],
    "marble_ratio": lambda n: n[0] * n[2] // (n[1] + n[2]),
}


def test_answers_match_an_independent_solution(data):
    rows = _rows(data["task"]) + [r for r in _rows(data["pool"]) if r["source"] == "math"]
    checked = Counter()
    for row in rows:
        solve = SOLVERS.get(row["template"])
        if solve is None:
            continue
        numbers = [int(x) for x in NUMBER.findall(row["instruction"])]
        assert int(row["output"].rsplit("#### ", 1)[1]) == solve(numbers), row["instruction"]
        checked[row["template"]] += 1
    assert len(checked) >= 10 and sum(checked.values()) >= 50


def test_noisy_rows_carry_no_reasoning(data):
    noisy = [r for r in _rows(data["pool"]) if r["source"] == "math_noisy"]
    assert noisy
    for row in noisy:
        assert "=" not in row["output"] and len(row["output"].splitlines()) == 1


def test_cli_writes_files(tmp_path, capsys):
    from igds.quickstart import main

    main([str(tmp_path), "--seed", "3", "--n-task", "10", "--n-pool", "20"])
    assert len(_rows(tmp_path / "task.jsonl")) == 10 and len(_rows(tmp_path / "pool.jsonl")) == 20
    assert "task.jsonl" in capsys.readouterr().out
