"""features.json: typed candidates round-trip unchanged, and a bad file is one clear line."""

import json
import math

import pytest

from igds.artifacts import atomic_write_json
from igds.feature_set import Candidate, Effect, FeatureInfo, FeatureSet, SampleInfo

# a recalled, tested and validated candidate exactly as features.json has always held it
RECALLED = {"key": "L3/F17", "layer": 3, "feature": 17, "task_freq": 0.5, "ref_freq": 0.01,
            "task_example_freq": 0.9, "task_mean_act": 2.5, "ref_mean_act": 0.4, "enrichment": 3.9,
            "recall_score": 1.2, "recall_rank": 1,
            "effect": {"metric": "ref_loss", "alpha": 2.0, "n": 3, "mean_delta": 0.01, "se": 0.002,
                       "ci_low": 0.00608, "ci_high": 0.01392, "base_loss": 1.7, "per_example": [0.01, 0.012, 0.008]},
            "validated": True, "scale": 0.75, "promoted_tokens": [[" seven", 3.2], ["\n", 2.1]]}
# the "no recall" ablation's random candidate, not validated
RANDOM = {"key": "L3/F4", "layer": 3, "feature": 4, "task_freq": 0.1, "task_example_freq": 0.3, "task_mean_act": 1.0,
          "recall_rank": 2, "random_candidate": True,
          "effect": {"metric": "ref_loss", "alpha": 2.0, "n": 1, "mean_delta": -0.5, "se": float("nan"),
                     "ci_low": float("nan"), "ci_high": float("nan"), "base_loss": 1.7, "per_example": [-0.5]},
          "validated": False, "scale": 1.0}
FILE = {"model": "tiny", "saes": [{"layer": 3, "architecture": "topk"}], "layers": [3],
        "probe": {"n_examples": 8, "n_tokens": 90, "source": "task.jsonl"},
        "reference": {"n_examples": 8, "n_tokens": 80, "source": "builtin:generic"}, "validation": {"n_examples": 4},
        "recall": {"n_candidates": 2}, "filter": {"alpha": 2.0}, "cache_key": "abc", "seconds": 1.5,
        "task_source": "task.jsonl", "reference_source": "builtin:generic",
        "candidates": [RECALLED, RANDOM], "validated": ["L3/F17"], "warnings": ["a warning"]}


def test_candidate_round_trips_through_features_json_unchanged(tmp_path):
    cand = Candidate("L3/F17", 3, 17, task_freq=0.5, ref_freq=0.01, task_example_freq=0.9, task_mean_act=2.5,
                     ref_mean_act=0.4, enrichment=3.9, recall_score=1.2, recall_rank=1,
                     effect=Effect("ref_loss", 2.0, 3, 0.01, 0.002, 0.00608, 0.01392, 1.7, [0.01, 0.012, 0.008]),
                     validated=True, scale=0.75, promoted_tokens=[[" seven", 3.2], ["\n", 2.1]])
    fs = FeatureSet([cand], ["L3/F17"], FeatureInfo(model="tiny", probe=SampleInfo(8, 90, "task.jsonl")))
    fs.save(tmp_path / "features.json")
    again = FeatureSet.load(tmp_path / "features.json")
    assert again == fs and again.candidates[0] == cand
    assert cand.to_dict() == RECALLED and list(cand.to_dict()) == list(RECALLED)


def test_a_features_json_reads_and_writes_back_byte_for_byte(tmp_path):
    src, out = tmp_path / "old.json", tmp_path / "new.json"
    atomic_write_json(src, FILE)
    fs = FeatureSet.load(src)
    assert fs.candidates[1].random_candidate and fs.candidates[1].ref_freq is None
    assert math.isnan(fs.candidates[1].effect.se) and fs.info.probe.source == "task.jsonl"
    assert [c.key for c in fs.validated_features] == ["L3/F17"]
    fs.save(out)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("edit,expect", [
    (lambda d: d["candidates"][0].pop("feature"), r"candidates\[0\] \(L3/F17\): field 'feature' is missing$"),
    (lambda d: d["candidates"][1]["effect"].pop("mean_delta"),
     r"candidates\[1\] \(L3/F4\)\.effect: field 'mean_delta' is missing$"),
    (lambda d: d["candidates"][0].update(layer="3"), r"candidates\[0\] \(L3/F17\): field 'layer': expected an integer"),
    (lambda d: d["candidates"][0].update(promoted_tokens=["x"]), r"field 'promoted_tokens': expected \[\[token, logit\]"),
    (lambda d: d["candidates"][0].update(colour="red"), r"candidates\[0\] \(L3/F17\): unknown field 'colour'"),
    (lambda d: d["probe"].pop("n_examples"), r"features\.json: probe: field 'n_examples' is missing$"),
    (lambda d: d.pop("validated"), r"not a features\.json \(missing 'validated'\)$"),
    (lambda d: d.update(validated=["L9/F9"]), r"field 'validated': \['L9/F9'\] not among the candidates$"),
])
def test_a_malformed_features_json_is_one_clear_line(tmp_path, edit, expect):
    data = json.loads(json.dumps(FILE))
    edit(data)
    path = tmp_path / "features.json"
    atomic_write_json(path, data)
    with pytest.raises(ValueError, match=expect) as err:
        FeatureSet.load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "features.json"
    path.write_text('{"candidates": [\n  {"key": "L3/F1",\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"features\.json:3: malformed JSON"):
        FeatureSet.load(path)


def test_the_filter_tests_and_peak_fields_round_trip(tmp_path):
    """Files written since the BH filter carry p-values, the halves and where the feature fires; files
    from before (FILE above) load without them."""
    data = json.loads(json.dumps(FILE))
    data["candidates"][0]["effect"].update(estimator="central", p_value=0.001, p_adjusted=0.02, half_a_mean=0.012,
                                           half_b_mean=0.01, half_b_p=0.03, confirmed=True)
    data["candidates"][0].update(peak_template_share=0.25, peak_tokens=[["7", 30], [" +", 20]])
    # the outcome is the last info field, before the lists
    data = {**{k: v for k, v in data.items() if k not in ("candidates", "validated", "warnings")},
            "filter_outcome": "kept 1 of 2 candidates (BH q=0.1, confirmed on the held-out half)",
            **{k: data[k] for k in ("candidates", "validated", "warnings")}}
    src, out = tmp_path / "new.json", tmp_path / "again.json"
    atomic_write_json(src, data)
    fs = FeatureSet.load(src)
    eff = fs.candidates[0].effect
    assert (eff.p_adjusted, eff.confirmed, eff.estimator) == (0.02, True, "central")
    assert fs.candidates[0].peak_template_share == 0.25 and fs.info.filter_outcome.startswith("kept 1")
    fs.save(out)
    assert out.read_bytes() == src.read_bytes()
    old = FeatureSet.load(_write(tmp_path, FILE))
    assert old.candidates[0].effect.p_adjusted is None and old.info.filter_outcome is None
    data["candidates"][0]["effect"]["confirmed"] = "yes"
    with pytest.raises(ValueError, match=r"effect: field 'confirmed': expected true or false"):
        FeatureSet.load(_write(tmp_path, data))


def _write(tmp_path, data):
    path = tmp_path / "features.json"
    atomic_write_json(path, data)
    return path
