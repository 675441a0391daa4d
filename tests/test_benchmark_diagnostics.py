"""benchmarks/diagnostics.py: the selection-table diagnostics give the right numbers on planted tables."""

import math

import numpy as np
import pytest

from diagnostics import (graded_precision, ndcg, overlap, relevance_metrics, selection_diagnostics, spearman,
                         top_indices)


def test_top_indices_orders_by_score_nan_last_ties_by_index():
    assert top_indices([0.5, np.nan, 0.9, 0.5, 0.1], 4) == [2, 0, 3, 4]
    assert top_indices([np.nan, 1.0], 2) == [1, 0]


def test_spearman_of_monotone_and_reversed_and_degenerate():
    x = [3.0, 1.0, 2.0, 10.0, 7.0]
    assert spearman(x, [v ** 3 for v in x]) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [0, 0, 0, 0, 0]) is None  # a model-free table's zero n_tokens: undefined, not 0
    assert spearman([1.0, np.nan, 2.0, 3.0], [1.0, 5.0, np.nan, 2.0]) is None  # only 2 finite pairs
    # a known value: ranks (1,2,3,4) vs (2,1,4,3): rho = 1 - 6*4/(4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)


def test_score_equal_to_length_has_rho_one_and_full_overlap_with_longest():
    rng = np.random.default_rng(0)
    length = rng.permutation(40).astype(float) + 5
    loss = rng.normal(size=40)
    k = 20
    refs = {"longest": top_indices(length, k), "loss_top": top_indices(loss, k), "loss_bottom": top_indices(-loss, k)}
    d = selection_diagnostics(length, k, n_tokens=length * 2, response_chars=length, references=refs)
    assert d["rho_n_tokens"] == pytest.approx(1.0)
    assert d["rho_response_chars"] == pytest.approx(1.0)
    assert d["overlap_longest"] == 1.0
    # loss-top and loss-bottom halves partition the pool: the two overlaps add up to 1
    assert d["overlap_loss_top"] + d["overlap_loss_bottom"] == pytest.approx(1.0)
    shortest = selection_diagnostics(-length, k, length, length, refs)
    assert shortest["rho_response_chars"] == pytest.approx(-1.0)
    assert shortest["overlap_longest"] == 0.0
    d_loss = selection_diagnostics(loss, k, length, length, refs)
    assert d_loss["overlap_loss_top"] == 1.0 and d_loss["overlap_loss_bottom"] == 0.0


def test_overlap_is_the_shared_share():
    assert overlap([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert overlap([], [1]) == 0.0


def test_graded_metrics_on_a_planted_ranking():
    labels = [2, 2, 1, 1, 0, 0, 0, 0]
    ideal = [0, 1, 2, 3]
    assert ndcg(ideal, labels) == pytest.approx(1.0)
    assert graded_precision(ideal, labels) == pytest.approx(6 / 8)
    m = relevance_metrics(ideal, labels)
    assert (m["task_selected"], m["precision"], m["recall"]) == (2, 0.5, 1.0)
    worst = [4, 5, 6, 7]
    assert ndcg(worst, labels) == 0.0 and graded_precision(worst, labels) == 0.0
    # near rows first, then the task rows: dcg = 1/log2(2) + 1/log2(3) + 3/log2(4) + 3/log2(5)
    mixed = [2, 3, 0, 1]
    idcg = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    dcg = 1 / math.log2(2) + 1 / math.log2(3) + 3 / math.log2(4) + 3 / math.log2(5)
    assert ndcg(mixed, labels) == pytest.approx(dcg / idcg)
    assert relevance_metrics(mixed, labels)["precision"] == 0.5  # same set: set precision cannot see the order
