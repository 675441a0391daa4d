import pytest

from igds.selection import budget_for, make_score_table, select_indices, table_meta


def test_select_top_ratio_and_budget_with_ties():
    t = make_score_table(["a", "b", "c", "d"], [0.5, 0.9, 0.5, float("nan")], [1, 2, 3, 4], meta={"method": "x"})
    assert select_indices(t, ratio=0.5) == [1, 0]  # tie between a and c broken by pool index
    assert select_indices(t, budget=3) == [1, 0, 2]
    assert select_indices(t, budget=4)[-1] == 3  # NaN scores come last
    assert table_meta(t) == {"method": "x"}


@pytest.mark.parametrize("kw,msg", [({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"),
                                    ({"budget": 0}, "budget"), ({"budget": 11}, "budget"), ({}, "exactly one")])
def test_bad_budgets(kw, msg):
    with pytest.raises(ValueError, match=msg):
        budget_for(10, **kw)


def test_ratio_rounds_half_up():
    assert budget_for(7, ratio=0.5) == 4
    assert budget_for(1, ratio=0.1) == 1
