"""The HTML report: content from a synthetic run directory, graceful gaps, and a real browser render."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from igds.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_parquet, atomic_write_text
from igds.report import ReportError, correlations, render_report, write_report
from igds.selection import make_score_table, select_indices, write_score_table

REPO = Path(__file__).resolve().parents[1]
NP_ID = "gemma-2-2b/3-gemmascope-res-16k"
VALIDATED = ["L3/F17", "L3/F42", "L5/F7"]
DROPPED = ["L3/F99", "L5/F120", "L5/F3"]
SOURCES = ("gsm8k", "alpaca", "sharegpt-math")


def _cand(key: str, rank: int, rng: np.random.Generator) -> dict:
    layer, feat = int(key.split("/")[0][1:]), int(key.split("/")[1][1:])
    kept = key in VALIDATED
    delta = 0.0123 if key == "L3/F17" else float(rng.uniform(0.002, 0.03) if kept else rng.uniform(-0.02, 0.003))
    se = 0.0041 if key == "L3/F17" else float(rng.uniform(0.001, 0.006))
    return {"key": key, "layer": layer, "feature": feat,
            "task_freq": float(rng.uniform(0.4, 0.9)), "ref_freq": float(rng.uniform(0.0, 0.2)),
            "task_mean_act": float(rng.uniform(1, 4)), "ref_mean_act": float(rng.uniform(0.2, 1.5)),
            "enrichment": float(rng.uniform(2, 8)), "recall_score": float(rng.uniform(0.5, 3)), "recall_rank": rank,
            "effect": {"metric": "ref_loss", "alpha": 4.0, "n": 64, "mean_delta": delta, "se": se,
                       "ci_low": delta - 1.96 * se, "ci_high": delta + 1.96 * se,
                       "per_example": [float(x) for x in rng.normal(delta, 0.01, 8)]},
            "validated": kept, "scale": float(rng.uniform(1, 3)),
            "promoted_tokens": [[" seven", 3.2], [" <eq>", 2.9], ["\n", 2.1], [" sum", 1.7]]}


def make_synthetic_run(root: Path, n_pool: int = 240, seed: int = 0) -> Path:
    """A small run directory in the schemas of docs/design.md (plus baselines and experiment results)."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    run.mkdir(parents=True)
    cands = [_cand(k, i + 1, rng) for i, k in enumerate(VALIDATED + DROPPED)]
    cands[-1]["effect"].update(se=float("nan"), ci_low=float("nan"), ci_high=float("nan"))  # n=1: no spread
    atomic_write_json(run / "features.json", {
        "model": "tiny-llama",
        "saes": [{"layer": 3, "architecture": "jumprelu", "d_in": 64, "d_sae": 256, "k": None,
                  "source": "gemma-scope:layer_3/width_16k", "neuronpedia_id": NP_ID},
                 {"layer": 5, "architecture": "topk", "d_in": 64, "d_sae": 256, "k": 16,
                  "source": "trained:sae-L5", "neuronpedia_id": None}],
        "layers": [3, 5],
        "probe": {"source": "task.jsonl", "n_examples": 128, "n_tokens": 9000},
        "reference": {"source": "builtin:generic", "n_examples": 128, "n_tokens": 9100},
        "recall": {"min_task_freq": 0.3, "top_k": 50}, "filter": {"alpha": 4.0, "metric": "ref_loss"},
        "candidates": cands, "validated": VALIDATED, "warnings": ["layer 5: 3 dead latents"]})
    layers = np.repeat([3, 5], 256)
    feats = np.tile(np.arange(256), 2)
    atomic_write_parquet(run / "feature_stats.parquet", pa.table({
        "layer": pa.array(layers, pa.int64()), "feature": pa.array(feats, pa.int64()),
        "task_freq": pa.array(rng.beta(0.5, 6, len(feats))), "ref_freq": pa.array(rng.beta(0.5, 6, len(feats))),
        "task_mean_act": pa.array(rng.gamma(2, 1, len(feats))), "ref_mean_act": pa.array(rng.gamma(2, 1, len(feats)))}))
    n_tokens = rng.integers(20, 400, n_pool)
    acts = {f"f:{k}": np.maximum(0, rng.normal(0.2, 1, n_pool)) * (n_tokens / 200) for k in VALIDATED}
    score = sum(acts.values())
    ids = [f"pool-{i}" for i in range(n_pool)]
    table = make_score_table(ids, score, n_tokens, extra=acts,
                             meta={"method": "igds", "aggregation": "sum", "features": VALIDATED})
    write_score_table(run / "scores.parquet", table)
    pool = [{"id": ids[i], "instruction": f"Question {i} <i>?</i>", "output": f"Answer {i}",
             "source_dataset": SOURCES[i % 3]} for i in range(n_pool)]
    atomic_write_jsonl(root / "pool.jsonl", pool)
    sel = select_indices(table, ratio=0.5)
    atomic_write_jsonl(run / "selection.jsonl", [{**pool[i], "igds_score": float(score[i])} for i in sel])
    toks = ["The", " answer", " is", " <b>", "7", "</b>", "\n", "<script>alert(1)</script>", " done"]
    top = {k: [{"index": int(i), "id": ids[i], "value": float(score[i]), "tokens": toks,
                "acts": [0.0, 0.5, 1.25, 4.5 - j, 2.0, 0.0, 0.0, 3.0, 0.1]} for j, i in enumerate(sel[:6])]
           for k in VALIDATED}
    atomic_write_json(run / "top_examples.json", top)
    atomic_write_text(run / "config.yaml", f"model:\n  name: tiny-llama\nsae:\n  layers: [3, 5]\n"
                                           f"pool:\n  path: {root / 'pool.jsonl'}\n  limit: null\n"
                                           "select:\n  ratio: 0.5\n  budget: null\nseed: 0\n")
    atomic_write_json(run / "run.json", {"versions": {"igds": "0.1.0", "torch": "2.13.0", "transformers": "5.23"},
                                         "timings_s": {"features": 41.5, "scoring": 130.2, "selection": 0.4},
                                         "wall_s": 172.1, "device": "cpu", "dtype": "float32", "started_at": "2026-11-24T05:00:00Z", "pool_size": n_pool,
                                         "n_truncated": 3, "n_rejected": 0})
    write_score_table(run / "baselines" / "random.parquet",
                      make_score_table(ids, rng.random(n_pool), n_tokens, meta={"method": "random"}))
    write_score_table(run / "baselines" / "longest.parquet",
                      make_score_table(ids, n_tokens.astype(float), n_tokens, meta={"method": "longest"}))
    runs = []
    for method, base_amp in (("igds", 0.3), ("random", 0.1), ("longest", 0.15)):
        for ratio in (0.25, 0.5):
            for s in (0, 1):
                amp = base_amp + 0.05 * s + 0.1 * ratio
                runs.append({"method": method, "ratio": ratio, "seed": s, "n_train": int(ratio * n_pool),
                             "metrics": {"exact_match": 0.05 + amp / 3, "ref_loss": 2.3 - amp},
                             "feature_amplification": amp, "task_gain": amp / 3})
    atomic_write_json(run / "experiment" / "results.json", {
        "task": "arith", "metric": "exact_match", "base": {"metrics": {"exact_match": 0.05, "ref_loss": 2.31}},
        "runs": runs, "correlation": {"pearson": 0.987, "spearman": 0.953, "n": len(runs)}})
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_synthetic_run(tmp_path)


def _no_remote_loads(page: str) -> None:
    assert not re.search(r"""src\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""<link[^>]+href\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page


def test_report_content(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    for sid in ("summary", "features", "feature-cards", "selection", "experiment"):
        assert f'<section id="{sid}">' in page
    # every candidate appears, the validated ones with a card
    for key in VALIDATED + DROPPED:
        assert key in page
    for key in VALIDATED:
        assert f'id="card-{key.replace("/", "-")}"' in page
    assert "L3/F99" in page and 'id="card-L3-F99"' not in page
    # numbers from features.json as shown: mean_delta 0.0123 -> +0.0123, se 0.0041 -> 0.0041
    assert 'data-v="0.0123">+0.0123</td>' in page
    assert "mean Δ <strong>+0.0123</strong> ± 0.0041" in page
    # token highlighting, escaped; the activation is the tooltip
    assert '<span class="tok" style="background:rgba(255,140,0,1.00)" title="4.5" data-act="4.5"> &lt;b&gt;</span>' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page and " <b>" not in page
    # promoted tokens (escaped, spaces shown)
    assert "<code>␣&lt;eq&gt;</code>" in page and "<code>↵</code>" in page
    # neuronpedia link only for the SAE that has an id
    assert f'href="https://www.neuronpedia.org/{NP_ID}/17"' in page
    links = re.findall(r'href="https://www\.neuronpedia\.org/([^"]+)"', page)
    assert sorted(set(links)) == [f"{NP_ID}/17", f"{NP_ID}/42", f"{NP_ID}/99"]  # layer 5 has no neuronpedia_id
    assert len(links) == 3 + 2  # table rows of the 3 layer-3 candidates, cards of the 2 validated ones
    # summary facts
    assert "tiny-llama" in page and "2 min 52 s" in page and "torch 2.13.0" in page
    assert "120 of 240 (50.0%)" in page and "layer 5: 3 dead latents" in page
    # selection: correlations printed, source mix from the pool, baseline overlap
    assert 'id="length-correlation"' in page and "Pearson r = <strong>" in page
    assert "Mix by <code>source_dataset</code>" in page and "sharegpt-math" in page
    assert "<td>random</td>" in page and "<td>longest</td>" in page
    assert "2 min 52 s" in page and "cpu · float32" in page
    # experiment: correlation from results.json, results table
    assert "Pearson r = <strong>+0.987</strong>, Spearman ρ = <strong>+0.953</strong>, n = 12" in page
    assert 'id="results-table"' in page and "base model" in page
    assert page.count("data:image/png;base64,") >= 9
    assert "Not available" not in page
    _no_remote_loads(page)


def test_overlap_numbers_match_selection(run_dir: Path) -> None:
    """The longest baseline's overlap is recomputed here from the tables and must match the report."""
    import pyarrow.parquet as pq

    igds = pq.read_table(run_dir / "scores.parquet")
    longest = pq.read_table(run_dir / "baselines" / "longest.parquet")
    a, b = set(select_indices(igds, budget=120)), set(select_indices(longest, budget=120))
    jac = len(a & b) / len(a | b)
    page = render_report(run_dir)
    row = re.search(r"<tr><td>longest</td>(.*?)</tr>", page).group(1)
    assert f">{len(a & b)}</td>" in row and f">{jac:.3f}</td>" in row and f">{100 * len(a & b) / 120:.1f}</td>" in row


def test_correlations_known_values() -> None:
    x = [1, 2, 3, 4, 5]
    r, rho, n = correlations(x, [1, 4, 9, 16, 25])
    assert n == 5 and rho == pytest.approx(1.0) and r == pytest.approx(0.98104, abs=1e-4)
    r, rho, n = correlations([1, 2, 2, 3, float("nan")], [3, 2, 2, 1, 0])
    assert n == 4 and rho == pytest.approx(-1.0)


def test_missing_parts_degrade(tmp_path: Path) -> None:
    full = make_synthetic_run(tmp_path / "full")
    run = tmp_path / "minimal"
    run.mkdir()
    shutil.copy(full / "features.json", run)
    shutil.copy(full / "scores.parquet", run)
    page = write_report(run).read_text(encoding="utf-8")
    for sid in ("summary", "features", "feature-cards", "selection", "experiment"):
        assert f'<section id="{sid}">' in page
    assert "config.yaml, run.json" in page  # named as missing in the summary
    for missing in ("feature_stats.parquet</code> not found", "top_examples.json</code> not found",
                    "experiment/results.json</code> not found", "no score tables under <code>baselines/"):
        assert missing in page, missing
    assert "showing the top 50%" in page  # neither selection.jsonl nor a ratio: said, not hidden
    assert 'data-v="0.0123">+0.0123</td>' in page
    _no_remote_loads(page)
    # only scores, nothing else: still a page
    only = tmp_path / "only-scores"
    only.mkdir()
    shutil.copy(full / "scores.parquet", only)
    page = render_report(only)
    assert "features.json</code> not found" in page and 'id="length-correlation"' in page


NO_PLOTS = "plots need matplotlib: pip install 'igds[report]'"


def test_report_without_matplotlib_is_written_with_a_note(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib is an extra: without it every plot gives way to one install note and the rest stays."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    page = write_report(run_dir).read_text(encoding="utf-8")
    # features, selection and experiment once each, and the histogram of each of the 3 validated feature cards
    assert page.count(NO_PLOTS) == 3 + len(VALIDATED)
    assert "<img" not in page
    for sid in ("summary", "features", "feature-cards", "selection", "experiment"):
        assert f'<section id="{sid}">' in page
    assert 'id="length-correlation"' in page and "sampled points" not in page
    assert 'id="amp-gain-correlation"' in page and "<strong>+0.987</strong>" in page
    assert 'id="overlap-table"' in page and 'id="card-L3-F17"' in page


@pytest.mark.parametrize("name,content,expect", [
    ("features.json", '{"candidates": [\n  {"key": "L3/F1", "layer": 3}\n', r"features\.json:3: malformed JSON"),
    ("features.json", '{"candidates": [{"key": "L3/F1", "layer": 3, "feature": 1, "task_freq": "high"}], '
                      '"validated": []}',
     r"features\.json: candidates\[0\] \(L3/F1\): field 'task_freq': expected a number"),
    ("features.json", '{"candidates": [{"key": "L3/F1", "layer": 3}], "validated": []}',
     r"features\.json: candidates\[0\] \(L3/F1\): field 'feature' is missing"),
    ("features.json", '{"candidates": [{"key": "L3/F1", "layer": 3, "feature": 1, "effect": {"n": 4}}], '
                      '"validated": []}',
     r"features\.json: candidates\[0\] \(L3/F1\)\.effect: field 'metric' is missing"),
    ("top_examples.json", '{"L3/F17": [{"tokens": ["a", "b"], "acts": [1.0]}]}',
     r"top_examples\.json: 'L3/F17'\[0\]: 2 tokens but 1 activations"),
    ("features.json", '{"candidates": [{"key": "L3/F1", "layer": 3, "feature": 1}], "validated": ["L3/F9"]}',
     r"features\.json: field 'validated': \['L3/F9'\] not among the candidates"),
    ("config.yaml", "model: [unclosed\n", r"config\.yaml:\d+: malformed YAML"),
    ("experiment/results.json", '{"runs": [{"method": "igds", "ratio": 0.5, "metrics": {}}]}',
     r"results\.json: runs\[0\]: field 'seed' is missing"),
])
def test_bad_file_is_an_error_not_a_gap(run_dir: Path, name: str, content: str, expect: str) -> None:
    (run_dir / name).write_text(content, encoding="utf-8")
    with pytest.raises(ReportError, match=expect):
        render_report(run_dir)
    assert not (run_dir / "report.html").exists()


def test_baseline_of_other_pool_is_an_error(run_dir: Path) -> None:
    write_score_table(run_dir / "baselines" / "zip.parquet", make_score_table(["a", "b"], [1.0, 2.0], [3, 4]))
    with pytest.raises(ReportError, match=r"zip\.parquet: 2 rows, but scores\.parquet has 240"):
        render_report(run_dir)


# ---------------------------------------------------------------------- headless browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _chromium()
    if path is None:
        script = REPO / "scripts" / "install_chromium.sh"
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = _chromium()
        if path is None:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            pytest.skip(f"chromium not installed and scripts/install_chromium.sh could not install it: {tail}")
    return path


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="igds-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_renders_in_headless_chromium(run_dir: Path, chromium: str, tmp_path: Path) -> None:
    report = write_report(run_dir)
    url = report.resolve().as_uri()
    proc = _browser(chromium, "--virtual-time-budget=5000", "--dump-dom", url + "#selftest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-report-ready="ok"' in dom, proc.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert "data-js-errors" not in html_tag, html_tag  # set by the page's error listener
    assert 'data-selftest="pass"' in dom, re.search(r'data-selftest="[^"]*"', dom)
    n_tables = int(re.search(r'data-sortable-tables="(\d+)"', dom).group(1))
    assert n_tables >= 5
    for sid in ("summary", "features", "feature-cards", "selection", "experiment"):
        assert f'<section id="{sid}">' in dom
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    shot = tmp_path / "report.png"
    proc = _browser(chromium, "--window-size=1280,2400", f"--screenshot={shot}", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] == 2400 and img.shape[1] == 1280
    assert float(img[..., :3].std()) > 0.05  # not a blank page
    if keep := os.environ.get("IGDS_REPORT_SCREENSHOT"):  # for looking at it by hand
        shutil.copy(shot, keep)


def test_pool_mix_falls_back_to_selection_when_rows_were_rejected(run_dir: Path) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    atomic_write_json(run_dir / "run.json", {**info, "n_rejected": 2})
    page = render_report(run_dir)
    assert "Mix by <code>source_dataset</code> (pool vs selection)" not in page
    assert "Mix of the selection by <code>source_dataset</code>" in page


def test_report_of_a_real_pipeline_run(tiny_lm, tmp_path: Path) -> None:
    """`igds run` on the tiny model with a planted SAE writes report.html from its real artifacts."""
    from planted import save_model_and_seven_detector

    from igds.cli import main

    task = [{"id": f"t{i}", "instruction": f"add 7{i} and 17", "output": f"the sum is 7{i + 17}"} for i in range(12)]
    ref = [{"id": f"r{i}", "instruction": f"describe the garden {chr(97 + i)}", "output": "green"} for i in range(10)]
    pool = [{"id": f"p{i}", "prompt": f"what is 7{i} + 7" if i % 2 else f"name a <b>colour</b> {i}",
             "completion": "seventy" if i % 2 else "blue", "source": "math" if i % 2 else "other"} for i in range(16)]
    save_model_and_seven_detector(tiny_lm, tmp_path, [r["instruction"] for r in task], [r["instruction"] for r in ref])
    for name, rows in (("task", task), ("ref", ref), ("pool", pool)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae"),
                 "--task-data", str(tmp_path / "task.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
                 "--pool", str(tmp_path / "pool.jsonl"), "--ratio", "0.5", "--out", str(out),
                 "filter.enabled=false", "recall.n_candidates=4", "score.shard_size=8"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="card-L1-F5"' in page and "causal filter was off" in page
    assert "8 of 16 (50.0%)" in page and "Mix by <code>source</code> (pool vs selection)" in page
    assert re.search(r'<span class="tok" style="background:rgba\(255,140,0,[0-9.]+\)" title="[0-9.e-]+" '
                     r'data-act="[0-9.e-]+">7</span>', page)
    assert "experiment/results.json</code> not found" in page
    _no_remote_loads(page)


def test_screened_out_candidates_are_marked_in_the_features_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under filter.estimator=screened a candidate the gradient screen left unedited says so."""
    from types import SimpleNamespace

    import igds.report.features as report_features
    from igds.feature_set import Candidate, Effect, FeatureInfo, FeatureSet

    def effect(edited: bool, mean: float) -> Effect:
        return Effect("ref_loss", 2.0, 8 if edited else 0, mean, 0.01, mean - 0.02, mean + 0.02,
                      estimator="screened", p_adjusted=0.01 if edited else 1.0, confirmed=edited,
                      screen_t=4.0 if edited else -2.0, edited=edited)

    kept = Candidate("L1/F0", 1, 0, effect=effect(True, 0.2), validated=True)
    out = Candidate("L1/F1", 1, 1, effect=effect(False, float("nan")))
    fs = FeatureSet([kept, out], ["L1/F0"], FeatureInfo(filter={"estimator": "screened"}))
    monkeypatch.setattr(report_features, "pyplot", lambda: None)
    page = report_features.section_features(SimpleNamespace(features=fs))
    assert page.count("screened out") == 2  # the intro's explanation and F1's status
    assert re.search(r"L1/F1.*screened out</span>", page) and not re.search(r"L1/F0</a>.*?screened out</span>.*L1/F1",
                                                                            page)
    assert "ranked highest" in page
