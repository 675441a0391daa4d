"""benchmarks/mixed_pool.py: the length-matched pool cannot be split by response length."""

import random
from types import SimpleNamespace

from mixed_pool import nearest_in_length


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
