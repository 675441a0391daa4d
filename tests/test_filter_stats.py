"""The causal filter's statistics: the central estimator, Benjamini-Hochberg, split-half replication,
no silent fallback, and where a feature fires (template or content)."""

import math

import numpy as np
import pytest
import torch

from igds.config import FilterConfig
from igds.data import prompt_text
from igds.feature_set import Candidate, Effect
from igds.features import (NoFeaturesPassed, choose_validated, describe_peaks, firing_stats, intervention_effects,
                           per_example_effects)
from igds.filter_stats import bh_adjust, judge, one_sided_p, split_halves, t_quantile, t_sf

from planted import blank_sae, example, plant_always_on, plant_detector, tokenized


# ---------------------------------------------------------------- the t distribution and the tests
def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 7, 15, 31, 200):
        for t in (-6.0, -1.0, 0.0, 0.4, 1.0, 3.1, 25.0):
            assert t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9, abs=1e-15)
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)


def test_one_sided_p_reads_the_direction_and_the_null():
    rng = np.random.default_rng(0)
    up = 0.5 + rng.normal(0, 1, 30)
    assert one_sided_p(up) < 0.01 and one_sided_p(-up) > 0.99  # H1 is "mean > null", not "mean != null"
    assert one_sided_p(up, null=0.5) == pytest.approx(0.5, abs=0.35) and one_sided_p(up, null=2.0) > 0.99
    stats = pytest.importorskip("scipy.stats")
    assert one_sided_p(up, 0.2) == pytest.approx(stats.ttest_1samp(up, 0.2, alternative="greater").pvalue, rel=1e-9)
    assert math.isnan(one_sided_p(np.array([1.0])))
    assert one_sided_p(np.full(5, 0.3)) == 0.0 and one_sided_p(np.zeros(5)) == 1.0


def test_bh_adjust_on_known_p_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005 0.01 0.03 0.04 -> p*m/rank 0.02 0.02 0.04 0.04 -> running min from the top
    np.testing.assert_allclose(bh_adjust(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(bh_adjust(p[::-1]), bh_adjust(p)[::-1])  # order in = order out
    # q boundaries: adjusted <= q is kept, exactly at the boundary included
    assert (bh_adjust(p) <= 0.04).sum() == 4 and (bh_adjust(p) <= 0.039).sum() == 2
    assert (bh_adjust(p) <= 0.019).sum() == 0
    # step-up: 0.011 * 5 > 0.05 on its own, but the larger p's pass at 0.05, so it passes with them
    np.testing.assert_allclose(bh_adjust([0.011, 0.02, 0.03, 0.04, 0.05]), [0.05] * 5)
    # ties share one adjusted value; NaN counts as an untestable p = 1; capped at 1
    np.testing.assert_allclose(bh_adjust([0.02, 0.02, 0.02]), [0.02] * 3)
    np.testing.assert_allclose(bh_adjust([0.01, float("nan")]), [0.02, 1.0])
    np.testing.assert_allclose(bh_adjust([0.9, 0.8]), [0.9, 0.9])
    assert bh_adjust([]).size == 0
    stats = pytest.importorskip("scipy.stats")
    rand = np.random.default_rng(1).uniform(size=40) ** 3
    np.testing.assert_allclose(bh_adjust(rand), stats.false_discovery_control(rand), rtol=1e-12)


def test_split_halves_are_seeded_disjoint_and_cover():
    a, b = split_halves(11, seed=3)
    assert len(a) == 5 and len(b) == 6 and sorted([*a, *b]) == list(range(11))
    assert np.array_equal(split_halves(11, 3)[0], a) and not np.array_equal(split_halves(11, 4)[0], a)


def _old_rule_keeps(effects):
    """The rule before BH: keep if mean - 1 * se > 0 (method audit §3.4)."""
    return sum(e.mean() - e.std(ddof=1) / math.sqrt(len(e)) > 0 for e in effects)


@pytest.mark.parametrize("replication", [True, False])
def test_null_features_are_kept_at_most_at_rate_q(replication):
    """24 candidates, none with an effect, 32 examples each: the old rule keeps some in nearly every
    draw (~4 of 24), BH keeps any in at most about a share q of draws."""
    q, seeds = 0.1, 200
    old_any = new_any = 0
    for seed in range(seeds):
        effects = list(np.random.default_rng(seed).normal(0, 1, (24, 32)))
        old_any += _old_rule_keeps(effects) > 0
        new_any += any(v.p_adjusted <= q and v.confirmed is not False
                       for v in judge(effects, q, replication=replication, seed=seed))
    assert old_any / seeds > 0.9
    assert new_any / seeds <= q + 0.05


def test_a_real_effect_among_nulls_is_kept_and_estimated_on_the_held_out_half():
    rng = np.random.default_rng(7)
    effects = [1.5 + rng.normal(0, 1, 32)] + list(rng.normal(0, 1, (23, 32)))
    verdicts = judge(effects, q=0.1, seed=0)
    kept = [i for i, v in enumerate(verdicts) if v.p_adjusted <= 0.1 and v.confirmed]
    assert kept == [0]
    a, b = split_halves(32, 0)
    assert verdicts[0].estimate.n == 16 and verdicts[0].estimate.mean == pytest.approx(effects[0][b].mean())
    assert verdicts[0].half_a_mean == pytest.approx(effects[0][a].mean())
    assert verdicts[0].estimate.ci_low < verdicts[0].estimate.mean < verdicts[0].estimate.ci_high


def test_a_feature_effective_on_one_half_only_is_not_confirmed():
    n, seed = 32, 5
    a, b = split_halves(n, seed)
    rng = np.random.default_rng(0)
    one_half = rng.normal(0, 0.2, n)
    one_half[a] += 1.0  # helps on the selecting half only
    both = rng.normal(0, 0.2, n) + 1.0
    only, real = judge([one_half, both], q=0.1, seed=seed)
    assert only.p_adjusted <= 0.1 and only.half_a_mean > 0.8  # selected on half A ...
    assert not only.confirmed and abs(only.half_b_mean) < 0.2  # ... and not confirmed on half B
    assert real.confirmed and real.half_b_p < 1e-6


# ---------------------------------------------------------------- keep rule and on_empty
def _tested(key, p_adj, confirmed=True, p=None):
    c = Candidate(key, 1, int(key.split("F")[1]))
    c.effect = Effect("ref_loss", 2.0, 16, 0.1, 0.01, 0.08, 0.12, estimator="central", p_value=p or p_adj / 2,
                      p_adjusted=p_adj, half_a_mean=0.1, half_b_mean=0.1, half_b_p=0.01, confirmed=confirmed)
    return c


def test_keep_rule_orders_by_p_and_caps():
    cands = [_tested("L1/F1", 0.05, p=0.02), _tested("L1/F2", 0.01, p=0.001), _tested("L1/F3", 0.05, False),
             _tested("L1/F4", 0.5)]
    validated, warnings, outcome = choose_validated(cands, FilterConfig(enabled=True))
    assert validated == ["L1/F2", "L1/F1"] and not warnings  # F3 not confirmed, F4 above q
    assert outcome == "kept 2 of 4 candidates (BH q=0.1, confirmed on the held-out half)"
    assert choose_validated(cands, FilterConfig(enabled=True, max_features=1))[0] == ["L1/F2"]


def test_on_empty_stop_raises_and_recall_only_keeps_all_and_says_so():
    cands = [_tested("L1/F1", 0.04, confirmed=False), _tested("L1/F2", 0.3)]
    with pytest.raises(NoFeaturesPassed) as err:
        choose_validated(cands, FilterConfig(enabled=True))
    msg = str(err.value)
    assert "none of 2 candidate features passed" in msg and "1 selected on half A, none confirmed" in msg
    assert "best BH-adjusted p 0.04" in msg and "filter.on_empty=recall_only" in msg and "\n" not in msg
    assert not any(c.validated for c in cands)
    validated, warnings, outcome = choose_validated(cands, FilterConfig(enabled=True, on_empty="recall_only"))
    assert validated == ["L1/F1", "L1/F2"] and all(c.validated for c in cands)
    assert outcome == "none passed; kept recall-only candidates" and "recall_only" in warnings[0]


# ---------------------------------------------------------------- the estimator on the tiny model
def _planted(lm, layer):
    """F0 writes the answer token's unembedding (amplifying it lowers the loss), F1 the opposite,
    F2-F4 tiny random directions (no effect worth the name). All fire everywhere."""
    tok = lm.tokenizer
    answer = tok.convert_tokens_to_ids(tok.tokenize("z"))[0]
    sae = blank_sae(lm, layer, d_sae=6)
    direction = torch.nn.functional.normalize(lm.model.get_output_embeddings().weight.detach()[answer], dim=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_dec[0], sae.W_dec[1] = 3 * direction, -3 * direction
        for j in (2, 3, 4):
            sae.W_dec[j] = 1e-3 * torch.nn.functional.normalize(torch.randn(lm.d_model, generator=gen), dim=0)
    for j in range(5):
        plant_always_on(sae, j)
    return sae


def _effects(lm, estimator, min_delta=0.0, **filter_options):
    layer = lm.n_layers - 1
    sae = _planted(lm, layer)
    val = tokenized(lm, [example(i, f"question number {i}", "zzzzzz") for i in range(16)])
    cands = [Candidate(f"L{layer}/F{j}", layer, j) for j in range(5)]
    cfg = FilterConfig(enabled=True, estimator=estimator, min_delta=min_delta, **filter_options)
    intervention_effects(lm, {layer: sae}, cands, val, cfg)
    return cands, cfg


def test_central_estimator_signs_and_cancels_curvature(tiny_lm):
    central, _ = _effects(tiny_lm, "central")
    helps, hurts, *nulls = [c.effect.mean_delta for c in central]
    assert helps > 0.3 and hurts < -0.3
    assert all(abs(x) < 0.01 * helps for x in nulls)
    # W_dec and -W_dec: the symmetric difference is odd in the direction, so the curvature cancels ...
    assert helps + hurts == pytest.approx(0.0, abs=1e-3 * helps)
    # ... while the one-sided edit charges it to both: each looks worse than it is
    amplify, _ = _effects(tiny_lm, "amplify")
    assert amplify[0].effect.mean_delta + amplify[1].effect.mean_delta < -0.1 * helps


def test_gradient_estimator_is_the_first_order_term_of_the_edits(tiny_lm):
    layer = tiny_lm.n_layers - 1
    sae = _planted(tiny_lm, layer)
    val = tokenized(tiny_lm, [example(i, f"question number {i}", "zzzzzz") for i in range(16)])
    cands = [Candidate(f"L{layer}/F{j}", layer, j) for j in range(5)]

    def effects(estimator, alpha):
        eff, _ = per_example_effects(tiny_lm, {layer: sae}, cands, val, FilterConfig(estimator=estimator, alpha=alpha))
        return [float(np.nanmean(eff[c.key])) for c in cands]

    g = effects("gradient", 2.0)
    assert g[0] > 0.3 and g[1] < -0.3  # helpful / harmful signs, as the edits measure them
    assert g[0] == pytest.approx(-g[1], rel=1e-4)  # linear in the direction: W and -W exactly opposite
    assert all(abs(x) < 0.01 * g[0] for x in g[2:])
    # for a small step it is what the edits measure (the planted features saturate the loss at alpha=2,
    # where the symmetric difference is far below the slope)
    small_g, small_c = effects("gradient", 1.02), effects("central", 1.02)
    assert small_g[0] == pytest.approx(small_c[0], rel=0.05) and small_g[1] == pytest.approx(small_c[1], rel=0.05)
    assert small_g[0] == pytest.approx(0.02 * g[0], rel=1e-4)


def test_bh_keeps_the_planted_feature_and_rejects_the_others(tiny_lm):
    # the tiny directions change the loss by ~1e-3 nats, consistently: min_delta says what is too small to count
    cands, cfg = _effects(tiny_lm, "central", min_delta=0.01)
    validated, _, _ = choose_validated(cands, cfg)
    assert validated == [cands[0].key]
    e = cands[0].effect
    assert e.p_adjusted < 1e-6 and e.confirmed and e.n == 8 and e.ci_low > 0.3
    assert all(c.effect.p_adjusted > 0.5 for c in cands[1:])


def test_screened_edits_only_the_screens_best_and_matches_central_there(tiny_lm, monkeypatch):
    """The gradient screen ranks on half A; only confirm_top candidates are edited (the harmful F1
    and the nulls are not), their effects equal the central estimator's, and the untested ones
    count in Benjamini-Hochberg as p = 1."""
    import igds.features as features

    edited_sets = []
    real = features.per_example_effects
    monkeypatch.setattr(features, "per_example_effects",
                        lambda lm, saes, cands, *a, **k: edited_sets.append([c.key for c in cands]) or
                        real(lm, saes, cands, *a, **k))
    layer = tiny_lm.n_layers - 1
    screened, cfg = _effects(tiny_lm, "screened", min_delta=0.01, confirm_top=1)
    central, _ = _effects(tiny_lm, "central", min_delta=0.01)
    assert edited_sets[0] == [f"L{layer}/F0"]  # the helpful feature tops the screen; nothing else is edited
    helps, hurts, *nulls = screened
    assert helps.effect.edited and helps.effect.screen_t > 3
    assert not hurts.effect.edited and hurts.effect.screen_t < -3 and hurts.effect.per_example == []
    assert helps.effect.mean_delta == pytest.approx(central[0].effect.mean_delta, rel=1e-6)
    # BH over five, four untested: adjusted p = 5 x p on this one
    assert helps.effect.p_adjusted == pytest.approx(min(1.0, 5 * helps.effect.p_value), rel=1e-9)
    assert all(c.effect.p_adjusted == 1.0 and not c.effect.confirmed for c in screened[1:])
    validated, _, _ = choose_validated(screened, cfg)
    assert validated == [helps.key]
    # the screen never reads the confirming half
    a, b = split_halves(16, 0)
    seen = []
    real_screen = features.attribution_screen
    monkeypatch.setattr(features, "attribution_screen",
                        lambda lm, sae, layer, exs, **k: seen.extend(tuple(e.ids) for e in exs) or
                        real_screen(lm, sae, layer, exs, **k))
    _effects(tiny_lm, "screened", confirm_top=2)
    val = [tuple(e.ids) for e in tokenized(tiny_lm, [example(i, f"question number {i}", "zzzzzz") for i in range(16)])]
    assert sorted(seen) == sorted(val[i] for i in a) and not set(seen) & {val[i] for i in b}


# ---------------------------------------------------------------- where a feature fires
def test_template_share_separates_template_and_content_detectors(tiny_lm):
    """Content here is digits only; 's' occurs only in the chat template's "user"/"assistant"."""
    tok = tiny_lm.tokenizer
    exs = [example(i, f"{i} 7{i} + 1{i} = {i + 7}", f"{70 + i} 777 77") for i in range(10)]
    texts = [prompt_text(tok, e.messages) + e.response for e in exs]
    sae = blank_sae(tiny_lm, 1, d_sae=4)
    plant_detector(tiny_lm, sae, 0, 1, texts, [], "s")
    plant_detector(tiny_lm, sae, 1, 1, texts, [], "7")
    probe = tokenized(tiny_lm, exs)
    n_sevens = sum(tok.convert_ids_to_tokens(i) == "7" for e in probe for i in e.ids[1:])
    assert n_sevens > 50
    # the peaks come from the recall pass itself, at all positions, also when recall counts content only
    for positions in ("all", "content"):
        stats = firing_stats(tiny_lm, {1: sae}, probe, positions, batch_tokens=64, peaks=50)
        cands = [Candidate("L1/F0", 1, 0), Candidate("L1/F1", 1, 1), Candidate("L1/F3", 1, 3)]
        describe_peaks(tiny_lm, cands, stats)
        template, content, dead = cands
        assert template.peak_template_share > 0.9 and template.peak_tokens[0][0] == "s"
        assert content.peak_template_share < 0.1 and content.peak_tokens[0][0] == "7"
        assert sum(n for _, n in content.peak_tokens) == 50  # the top 50 of its firing positions (there are more 7s)
        assert dead.peak_template_share is None and dead.peak_tokens is None
    assert firing_stats(tiny_lm, {1: sae}, probe, "content")[1].token_count[0] == 0  # content never counts the template


def test_peaks_merged_over_batches_are_the_overall_strongest(tiny_lm):
    """Kept across many small batches, the peaks equal the top-k of every activation at once."""
    exs = [example(i, f"{i} 7{i} + 1{i} = {i + 7}", f"{70 + i} 777 77") for i in range(10)]
    texts = [prompt_text(tiny_lm.tokenizer, e.messages) + e.response for e in exs]
    sae = blank_sae(tiny_lm, 1, d_sae=4)
    plant_detector(tiny_lm, sae, 1, 1, texts, [], "7")
    probe = tokenized(tiny_lm, exs)
    one = firing_stats(tiny_lm, {1: sae}, probe, batch_tokens=10_000, peaks=20)[1].peaks
    many = firing_stats(tiny_lm, {1: sae}, probe, batch_tokens=40, batch_size=1, peaks=20)[1].peaks
    assert one.shape == many.shape == (20, 4, 3)
    np.testing.assert_allclose(np.sort(one[:, 1, 0]), np.sort(many[:, 1, 0]), rtol=1e-5)
    assert (one[:, 1, 0] > 0).all() and np.all(np.diff(many[:, 1, 0]) <= 0)  # strongest first


def test_the_filter_hands_special_ids_and_the_norm_guard_to_every_edit(tiny_lm, monkeypatch):
    """The edit itself spares them (test_intervention); here: the filter always asks it to."""
    import igds.features as features

    calls = []
    real = features.edit_losses

    def spy(*args, **kwargs):
        calls.append(args[10:])  # special_ids, norm_guard
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "edit_losses", spy)
    cands, cfg = _effects(tiny_lm, "central")
    assert calls and all(list(c[0]) == tiny_lm.tokenizer.all_special_ids and c[1] == cfg.norm_guard == 10.0
                         for c in calls)
