"""Stage 1 diagnostics: what the validated features fire on, how reliable their effects are,
whether recalled candidates pass the causal filter more often than random ones, and what Stage 1
costs next to scoring a 400-row pool (issue #13's diagnostics section).

    python benchmarks/filter_diagnostics.py                       # every task and variant (resumable)
    python benchmarks/filter_diagnostics.py --tasks math --variants content-recalled content-random

For each task the feature-discovery data of the quality benchmark (``benchmarks/quality/<task>.yaml``:
128 training rows in the task's format, probe 96 / validation 32, the layer-15 SAE those configs pin: v1)
goes through Stage 1 once per variant, each cached in ``runs/bench/filter-diagnostics/<task>/<variant>/``:

* ``paper``: the paper preset (all positions, frequency recall, the one-sided amplification edit),
  under the new keep rule (BH at q = 0.1, split-half confirmation);
* ``all-recalled`` / ``all-random``: all positions, the central estimator; recalled vs random candidates;
* ``content-recalled`` / ``content-random``: the same on content positions;
* ``content-attribution``: content positions, candidates ranked by gradient attribution;
* ``all-gradient``: all positions, recalled candidates, the ``gradient`` estimator (one backward
  pass instead of two edited forwards per candidate: the cheap Stage 1);
* ``all-screened`` / ``content-screened`` / ``content-screened-random``: the ``screened``
  estimator (the gradient ranks the candidates on half A, the best ``confirm_top`` get the central
  edit), on all or content positions; recalled vs random candidates.

Every variant uses ``filter.on_empty: recall_only`` so that a run where nothing passes still
reports its candidates. Per variant: candidates, how many passed BH on half A and how many half B
confirmed, the template share of the candidates' peak tokens (mean over candidates and over the
validated ones), the split-half reliability of the effects (Pearson r of half A's and half B's
mean effect across candidates), and Stage 1's wall time; per task, the wall time of scoring 400
task rows with the ``content-recalled`` features. Writes ``benchmarks/results/filter_diagnostics.{md,json}``
and the BENCHMARKS.md block ``filter-diagnostics``. That JSON is also where a new machine starts
from: the summaries of tasks and variants it does not re-run are kept from it.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from igds.artifacts import atomic_write_json, atomic_write_text, read_json
from igds.config import with_preset
from igds.experiment import Experiment, load_experiment_config, run_config
from igds.experiment.runner import materialize
from igds.feature_set import FeatureSet
from igds.features import passes
from igds.inputs import load_saes, read_examples
from igds.pipeline import features
from igds.scoring import feature_activations
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("math", "summarization", "translation", "translation-zh")
VARIANTS = ("paper", "all-recalled", "all-random", "content-recalled", "content-random", "content-attribution",
            "all-gradient", "all-screened", "content-screened", "content-screened-random")
RESULTS = ROOT / "benchmarks" / "results" / "filter_diagnostics.json"
OUT = Path("runs/bench/filter-diagnostics")
SCORED_ROWS = 400  # the pool size the issue measures Stage 1 against


def variant_config(base: Any, variant: str) -> Any:
    """The RunConfig of one variant, from the task's igds section."""
    cfg = with_preset(base, "paper") if variant == "paper" else replace(base)
    positions = "content" if variant.startswith("content") else "all"
    cfg.recall = replace(cfg.recall, positions=positions,
                         method="attribution" if variant == "content-attribution" else "frequency")
    cfg.filter = replace(cfg.filter, enabled=True, positions=positions, on_empty="recall_only",
                         random_candidates=variant.endswith("random"))
    if variant != "paper":
        estimator = "gradient" if variant == "all-gradient" else "screened" if "screened" in variant else "central"
        cfg.filter = replace(cfg.filter, estimator=estimator)
    cfg.score = replace(cfg.score, positions=positions)
    return cfg


def summarize(fs: Any) -> dict[str, Any]:
    cands = fs.candidates
    q = fs.info.filter.get("q", 0.1)
    effects = [c.effect for c in cands if c.effect is not None]
    passed_a = sum(1 for e in effects if e.p_adjusted is not None and e.p_adjusted <= q)
    confirmed = sum(1 for e in effects if passes(e, q))  # the keep rule itself: BH on half A and half B's p
    # per-feature agreement: same sign on both halves (r across candidates can be high from a shared
    # curvature term alone under the one-sided amplify edit)
    # the candidates measured on both halves (screened leaves the ones it did not edit without a mean)
    both = [e for e in effects if e.half_a_mean is not None and e.half_b_mean is not None
            and np.isfinite(e.half_a_mean) and np.isfinite(e.half_b_mean)]
    same_sign = [np.sign(e.half_a_mean) == np.sign(e.half_b_mean) for e in both]
    a = np.array([e.half_a_mean for e in both])
    b = np.array([e.half_b_mean for e in both])
    reliability = float(np.corrcoef(a, b)[0, 1]) if len(a) >= 3 and a.std() > 0 and b.std() > 0 else None

    def share(cs: list[Any]) -> float | None:
        vals = [c.peak_template_share for c in cs if c.peak_template_share is not None]
        return float(np.mean(vals)) if vals else None

    validated = [c for c in cands if c.effect is not None and passes(c.effect, q)]
    return {"candidates": len(cands), "passed_half_a": passed_a, "confirmed": confirmed,
            "template_share_candidates": share(cands), "template_share_validated": share(validated),
            "split_half_r": reliability, "split_half_same_sign": float(np.mean(same_sign)) if same_sign else None,
            "seconds": fs.info.seconds, "outcome": fs.info.filter_outcome,
            "validated": [{"key": c.key, "effect": c.effect.mean_delta, "p_adjusted": c.effect.p_adjusted,
                           "template_share": c.peak_template_share,
                           "peak_tokens": (c.peak_tokens or [])[:5]} for c in validated]}


def scoring_seconds(exp: Experiment, cfg: Any, fs: Any, saes: Any) -> float | None:
    """Wall time of scoring SCORED_ROWS training rows of the task with ``fs``'s validated features."""
    if not fs.validated:
        return None
    dc = materialize(exp.the_task(), replace(exp.cfg.igds.pool, limit=SCORED_ROWS), OUT / f"pool400-{exp.cfg.name}.jsonl")
    rows = read_examples(dc, "pool")
    t0 = time.perf_counter()
    feature_activations(exp.model(), saes, fs, rows, replace(cfg.score, top_examples=0),
                        use_chat_template=cfg.use_chat_template)
    return round(time.perf_counter() - t0, 2)


def run_task(task: str, variants: list[str]) -> dict[str, Any]:
    exp = Experiment(load_experiment_config(ROOT / "benchmarks" / "quality" / f"{task}.yaml"))
    base = run_config(exp.cfg, "igds", exp.data())
    saes = load_saes(base, exp.model())
    path = OUT / task / "summary.json"
    out = read_json(path) if path.exists() else archived().get(task, {})
    for variant in variants:
        cfg = variant_config(base, variant)
        run_dir = OUT / task / variant
        run_dir.mkdir(parents=True, exist_ok=True)
        fs = features(cfg, exp.model(), saes, run_dir)
        out[variant] = summarize(fs)
        if variant == "content-recalled":
            out["scoring_seconds_400"] = scoring_seconds(exp, cfg, fs, saes)
        atomic_write_json(path, out)
        print(f"filter diagnostics: {task} {variant}: {out[variant]['outcome']}")
    return out


def archived() -> dict[str, Any]:
    """The committed results: what an earlier machine measured."""
    return read_json(RESULTS) if RESULTS.exists() else {}


def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def fisher_greater(a: int, n_a: int, b: int, n_b: int) -> float:
    """One-sided Fisher exact p that group A's share a/n_a exceeds group B's b/n_b: the
    hypergeometric probability of A holding at least ``a`` of the ``a + b`` successes."""
    total, hits = n_a + n_b, a + b
    tail = sum(math.comb(n_a, k) * math.comb(n_b, hits - k) for k in range(a, min(n_a, hits) + 1))
    return tail / math.comb(total, hits)


def pooled_recalled_vs_random(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The filter-default rule (BENCHMARKS.md): kept recalled vs random candidates at all positions, pooled."""
    tasks = [t for t, r in results.items() if r.get("all-recalled") and r.get("all-random")]
    if not tasks:
        return None
    a = sum(results[t]["all-recalled"]["confirmed"] for t in tasks)
    n_a = sum(results[t]["all-recalled"]["candidates"] for t in tasks)
    b = sum(results[t]["all-random"]["confirmed"] for t in tasks)
    n_b = sum(results[t]["all-random"]["candidates"] for t in tasks)
    return {"tasks": tasks, "recalled": a, "n_recalled": n_a, "random": b, "n_random": n_b,
            "p": fisher_greater(a, n_a, b, n_b)}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| task | variant | candidates | pass BH (half A) | kept (BH on A, confirmed on B) | template share, "
             "candidates | template share, kept | split-half r | same sign on both halves | Stage 1 s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, res in results.items():
        for variant in VARIANTS:
            r = res.get(variant)
            if r:
                lines.append(f"| {task} | {variant} | {r['candidates']} | {r['passed_half_a']} | {r['confirmed']} | "
                             f"{_f(r['template_share_candidates'])} | {_f(r['template_share_validated'])} | "
                             f"{_f(r['split_half_r'])} | {_f(r.get('split_half_same_sign'))} | "
                             f"{_f(r['seconds'], '.0f')} |")
    lines += ["", "Scoring 400 task rows with the content-recalled features (s): " +
              ", ".join(f"{t} {_f(r.get('scoring_seconds_400'), '.0f')}" for t, r in results.items()) + "."]
    pooled = pooled_recalled_vs_random(results)
    if pooled:
        lines += ["", f"Pooled over {', '.join(pooled['tasks'])} (all positions, central): recalled candidates kept "
                  f"{pooled['recalled']} of {pooled['n_recalled']}, random ones {pooled['random']} of "
                  f"{pooled['n_random']}; one-sided Fisher exact p = {pooled['p']:.3g}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--collect-only", action="store_true")
    args = ap.parse_args(argv)
    results, kept = {}, archived()
    for task in TASKS:
        if task in args.tasks and not args.collect_only:
            results[task] = run_task(task, args.variants)
        elif (OUT / task / "summary.json").exists():
            results[task] = read_json(OUT / task / "summary.json")
            for variant in VARIANTS:  # summaries are re-read from each variant's features.json
                if (OUT / task / variant / "features.json").exists():
                    results[task][variant] = summarize(FeatureSet.load(OUT / task / variant / "features.json"))
        elif task in kept:
            results[task] = kept[task]
    if not results:
        print("nothing to collect")
        return 1
    text = table(results)
    atomic_write_text(ROOT / "benchmarks" / "results" / "filter_diagnostics.md",
                      "# Stage 1 diagnostics (`python benchmarks/filter_diagnostics.py`)\n\n" + text + "\n")
    atomic_write_json(RESULTS, results)
    splice("filter-diagnostics", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
