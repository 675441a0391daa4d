import json

import numpy as np
import pytest
import torch

from igds.config import FilterConfig, RecallConfig
from igds.feature_set import Candidate
from igds.features import (FeatureSet, NoFeaturesPassed, choose_validated, find_task_features, firing_stats,
                            intervention_effects, recall_candidates)

from planted import blank_sae, example, plant_always_on, plant_detector, tokenized

TASK = [f"compute 7{i} plus 7{i + 3} and 77 more" for i in range(12)]
REF = [f"write a short note about the river number {chr(97 + i)}" for i in range(12)]


def _recall_sae(lm):
    sae = blank_sae(lm, 1)
    plant_detector(lm, sae, 5, 1, TASK, REF, "7")
    plant_always_on(sae, 2)
    return sae


def test_recall_finds_planted_task_feature_not_always_on(tiny_lm):
    sae = _recall_sae(tiny_lm)
    task = tokenized(tiny_lm, [example(i, t, "ok") for i, t in enumerate(TASK)])
    ref = tokenized(tiny_lm, [example(i, t, "ok") for i, t in enumerate(REF)])
    t_stats = firing_stats(tiny_lm, {1: sae}, task)
    r_stats = firing_stats(tiny_lm, {1: sae}, ref)
    assert t_stats[1].freq[2] == 1.0 and r_stats[1].freq[2] == 1.0  # the always-on feature does fire
    assert t_stats[1].freq[5] > 5 * r_stats[1].freq[5]
    cands, table = recall_candidates(t_stats, r_stats, RecallConfig(n_candidates=4))
    keys = [c.key for c in cands]
    assert keys[0] == "L1/F5"
    assert "L1/F2" not in keys
    assert table.num_rows == sae.d_sae


def _steering_sae(lm, layer, token_id):
    """Feature 0 pushes the residual towards the unembedding of the answer token, feature 1 away."""
    sae = blank_sae(lm, layer, d_sae=4)
    W_U = lm.model.get_output_embeddings().weight.detach()
    direction = torch.nn.functional.normalize(W_U[token_id], dim=0)
    with torch.no_grad():
        sae.W_dec[0] = direction * 3.0
        sae.W_dec[1] = -direction * 3.0
    plant_always_on(sae, 0)
    plant_always_on(sae, 1)
    return sae


@pytest.mark.parametrize("estimator", ["central", "amplify"])
def test_filter_keeps_helpful_and_drops_harmful(tiny_lm, estimator):
    layer = tiny_lm.n_layers - 1
    tok = tiny_lm.tokenizer
    answer = "zzzzzz"
    token_id = tok.convert_tokens_to_ids(tok.tokenize("z"))[0]
    sae = _steering_sae(tiny_lm, layer, token_id)
    val = tokenized(tiny_lm, [example(i, f"question number {i}", answer) for i in range(10)])
    # The planted features fire everywhere, so recall would drop them; test the filter directly.
    cands = [Candidate(f"L{layer}/F{j}", layer, j) for j in (0, 1)]
    cfg = FilterConfig(enabled=True, alpha=3.0, estimator=estimator)
    intervention_effects(tiny_lm, {layer: sae}, cands, val, cfg)
    helpful, harmful = cands
    assert helpful.effect.mean_delta > 0 > harmful.effect.mean_delta
    assert helpful.effect.estimator == estimator and len(helpful.effect.per_example) == 10
    assert helpful.effect.n == 5  # the estimate is the confirming half's
    assert helpful.effect.confirmed and helpful.effect.p_adjusted < 0.01 and harmful.effect.p_value > 0.9
    validated, warnings, outcome = choose_validated(cands, cfg)
    assert validated == [f"L{layer}/F0"] and not warnings and outcome.startswith("kept 1 of 2")
    assert helpful.validated and not harmful.validated


def test_find_task_features_end_to_end_and_json_round_trip(tiny_lm, tmp_path):
    sae = _recall_sae(tiny_lm)
    task = tokenized(tiny_lm, [example(i, t, "answer 7") for i, t in enumerate(TASK)])
    ref = tokenized(tiny_lm, [example(i, t, "fine") for i, t in enumerate(REF)])
    # no random-decoder feature lowers the loss by 10 nats: nothing passes, and recall_only keeps them all
    filt = FilterConfig(enabled=True, min_delta=10.0, on_empty="recall_only")
    fs = find_task_features(tiny_lm, {1: sae}, task[:8], ref, task[8:], RecallConfig(n_candidates=3), filt,
                            stats_path=tmp_path / "stats.parquet")
    assert fs.candidates[0].key == "L1/F5"
    assert all(c.effect is not None and c.effect.p_adjusted > filt.q for c in fs.candidates)
    assert fs.info.filter_outcome == "none passed; kept recall-only candidates"
    assert len(fs.warnings) == 1 and "filter.on_empty=recall_only" in fs.warnings[0]
    assert fs.validated == [c.key for c in fs.candidates]
    assert all(c.scale > 0 for c in fs.validated_features)
    assert all(c.promoted_tokens for c in fs.validated_features)
    # the "7" detector's peaks are the 7s of the questions and answers: content, not template
    seven = fs.candidates[0]
    assert seven.peak_tokens[0][0] == "7" and seven.peak_template_share < 0.1
    assert fs.info.probe.n_examples == 8 and fs.info.validation.n_examples == 4 and fs.info.layers == [1]
    fs.save(tmp_path / "features.json")
    again = FeatureSet.load(tmp_path / "features.json")
    assert again == fs
    # the file keeps its historical shape: info first, then per candidate its fields in this order
    raw = json.loads((tmp_path / "features.json").read_text())
    assert list(raw)[:3] == ["model", "saes", "layers"] and list(raw)[-3:] == ["candidates", "validated", "warnings"]
    assert raw["filter_outcome"] == "none passed; kept recall-only candidates"
    assert list(raw["candidates"][0]) == ["key", "layer", "feature", "task_freq", "ref_freq", "task_example_freq",
                                          "task_mean_act", "ref_mean_act", "enrichment", "recall_score", "recall_rank",
                                          "effect", "validated", "scale", "promoted_tokens", "peak_template_share",
                                          "peak_tokens"]


def test_on_empty_stop_is_one_clear_line(tiny_lm):
    sae = _recall_sae(tiny_lm)
    task = tokenized(tiny_lm, [example(i, t, "answer 7") for i, t in enumerate(TASK)])
    ref = tokenized(tiny_lm, [example(i, t, "fine") for i, t in enumerate(REF)])
    with pytest.raises(NoFeaturesPassed, match=r"none of 1 candidate features passed .*best BH-adjusted p "
                                               r".*filter\.on_empty=recall_only") as err:
        find_task_features(tiny_lm, {1: sae}, task[:8], ref, task[8:], RecallConfig(n_candidates=3),
                           FilterConfig(enabled=True, min_delta=10.0))
    assert isinstance(err.value, RuntimeError) and "\n" not in str(err.value)


def test_filter_disabled_keeps_every_candidate():
    cands = [Candidate("L1/F1", 1, 1), Candidate("L1/F2", 1, 2)]
    validated, warnings, outcome = choose_validated(cands, FilterConfig(enabled=False))
    assert validated == ["L1/F1", "L1/F2"] and all(c.validated for c in cands)
    assert outcome == "filter off: kept all 2 candidates (recall only)" and not warnings


def test_attribution_recall_ranks_the_helpful_detector_first_and_drops_the_harmful(tiny_lm):
    """Two detectors fire on the same "7"s; the harmful one fires three times harder, so the frequency
    rule ranks it first. Ranked by attribution, the one whose decoder writes the next token ("z") leads
    and the one that writes against it is not a candidate at all."""
    layer = tiny_lm.n_layers - 1
    tok = tiny_lm.tokenizer
    task_texts = [f"compute 7{i} plus 7{i + 3}" for i in range(12)]
    sae = blank_sae(tiny_lm, layer, d_sae=8)
    for j in (5, 6):
        plant_detector(tiny_lm, sae, j, layer, [t + " 7z7z7z7z" for t in task_texts], REF, "7")
    z = torch.nn.functional.normalize(
        tiny_lm.model.get_output_embeddings().weight.detach()[tok.convert_tokens_to_ids(tok.tokenize("z"))[0]], dim=0)
    with torch.no_grad():
        sae.W_enc[:, 6] *= 3
        sae.b_enc[6] *= 3
        sae.W_dec[5], sae.W_dec[6] = 3 * z, -3 * z
    probe = tokenized(tiny_lm, [example(i, t, "7z7z7z7z") for i, t in enumerate(task_texts)])
    ref = tokenized(tiny_lm, [example(i, t, "ok") for i, t in enumerate(REF)])
    saes = {layer: sae}
    t_stats, r_stats = firing_stats(tiny_lm, saes, probe), firing_stats(tiny_lm, saes, ref)
    by_frequency, _ = recall_candidates(t_stats, r_stats, RecallConfig(n_candidates=4))
    assert [c.key for c in by_frequency][:2] == [f"L{layer}/F6", f"L{layer}/F5"]
    fs = find_task_features(tiny_lm, saes, probe, ref, probe[:4], RecallConfig(n_candidates=4, method="attribution"),
                            FilterConfig(enabled=False))
    keys = [c.key for c in fs.candidates]
    assert keys[0] == f"L{layer}/F5" and f"L{layer}/F6" not in keys
    assert fs.candidates[0].attribution_t > 2
    assert FeatureSet.from_dict(json.loads(json.dumps(fs.to_dict()))).candidates[0].attribution_t == \
        fs.candidates[0].attribution_t


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_firing_statistics_equal_the_dense_count_over_many_batches(tiny_lm, architecture):
    """The sparse accumulation (firing entries only; a TopK SAE's k chosen features without the dense
    codes) against a dense count of ``encode``: many features firing, batches of a few examples,
    counted positions only."""
    from igds.activations import iter_activation_batches
    from igds.sae import SAE

    torch.manual_seed(3)
    sae = SAE(tiny_lm.d_model, 32, architecture, k=5 if architecture == "topk" else None)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.normal_(-0.2, 0.2)
        sae.W_dec.normal_(0, 0.1)
    exs = tokenized(tiny_lm, [example(i, t, "7 and 77") for i, t in enumerate(TASK + REF)])
    stats = firing_stats(tiny_lm, {1: sae}, exs, "response", batch_tokens=120, batch_size=3, peaks=6)[1]
    token_count, example_count, act_sum = (torch.zeros(32, dtype=torch.float64) for _ in range(3))
    n_tokens, everywhere = 0, []
    for batch in iter_activation_batches(tiny_lm, exs, [1], "response", max_tokens=10_000):
        with torch.no_grad():
            codes = sae.encode(batch.resid[1])
        acts = codes * batch.counted.unsqueeze(-1)
        n_tokens += int(batch.counted.sum())
        token_count += (acts > 0).sum(dim=(0, 1))
        example_count += (acts > 0).any(dim=1).sum(dim=0)
        act_sum += acts.sum(dim=(0, 1)).double()
    assert stats.n_tokens == n_tokens and 0 < (token_count > 0).sum() < 32  # some features fire, not all
    np.testing.assert_array_equal(stats.token_count, token_count.numpy())
    np.testing.assert_array_equal(stats.example_count, example_count.numpy())
    np.testing.assert_allclose(stats.act_sum, act_sum.numpy(), rtol=1e-5)
    assert (stats.example_count < stats.token_count).any()  # a feature firing twice in an example counts once there
    # the peaks: each feature's 6 strongest activations at every position (prompt too), whatever recall counts
    for batch in iter_activation_batches(tiny_lm, exs, [1], "all", max_tokens=10_000):
        with torch.no_grad():
            everywhere.append((sae.encode(batch.resid[1]) * batch.counted.unsqueeze(-1)).reshape(-1, 32))
    dense_top = torch.cat(everywhere).topk(6, dim=0).values.numpy()
    np.testing.assert_allclose(stats.peaks[..., 0], dense_top, rtol=1e-5)
