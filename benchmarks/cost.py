"""Cost of igds against the model-based baselines and the hardware, in one run.

    python benchmarks/cost.py [--pool-size 256] [--features 16] [--out benchmarks/results/cost.md]

Measured on the same real pool (the T0 instruction pool in ../shared/data, falling
back to the shipped example pool), with SmolLM2-135M and its shipped layer-15 SAE:

(a) a bare forward stopped at the SAE layer (the floor for any SAE scorer),
(b) igds scoring (the same forward + restricted SAE encode of the validated features),
(c) the Loss baseline (full forward, LM head on response tokens),
(d) IFD (two full forwards: with and without the instruction),
(c') and (d') the same two as the peers' reference code runs them (full-vocabulary
logits at every position),
the causal filter for K features with the cached prefix vs naive full re-runs, and
achieved GFLOP/s of (a) against the machine's measured fp32 matmul rate.

Peak memory against pool size is measured by ``--memory``, which scores pools of
1k, 4k and 16k short examples in fresh processes. Ratios measured in one run are
the claims; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from igds.activations import count_mask, iter_activation_batches, length_batches, pad
from igds.artifacts import atomic_write_text
from igds.selectors import answer_only, ifd_scores, loss_scores
from igds.config import ScoreConfig
from igds.data import load_examples, tokenize_example
from igds.feature_set import Candidate, FeatureSet
from igds.intervention import feature_effects
from igds.losses import target_mask
from igds.model import load_model
from igds.sae_loading import load_sae
from igds.scoring import FeatureScorer
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))
LAYER = 15


def pool_examples(n: int, max_chars: int | None = None):
    path = SHARED / "instruction_pool" / "t0_pool.jsonl"
    if not path.exists():
        from igds.quickstart import write_example_data
        path = write_example_data(ROOT / ".bench" / "examples")["pool"]
    exs = load_examples(path, limit=None)
    rng = random.Random(0)
    exs = rng.sample(exs, min(n, len(exs)))
    return exs, str(path)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def forward_flops_per_token(lm, layers: int, avg_len: float) -> float:
    """2 x parameters of blocks 0..L-1 per token, plus attention's QK^T and AV."""
    params = sum(p.numel() for b in list(lm.blocks)[:layers] for p in b.parameters())
    cfg = lm.model.config
    attn = 2 * 2 * avg_len / 2 * cfg.hidden_size * layers  # causal: half the keys on average
    return 2 * params + attn


@torch.no_grad()
def full_logits_losses(lm, toks, max_tokens: int = 8192, max_batch: int = 16) -> list[float]:
    """Response loss the way the peers' reference code computes it: ``model(ids).logits`` over the
    whole vocabulary at every position, then cross-entropy on the response tokens."""
    out = []
    for idx in length_batches([len(t.ids) for t in toks], max_tokens, max_batch):
        batch = [toks[i] for i in idx]
        ids, mask = pad(batch, lm.tokenizer.pad_token_id)
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        tgt = target_mask(batch, ids.shape[1])[:, :-1]
        out += ((ce * tgt).sum(dim=1) / tgt.sum(dim=1).clamp_min(1)).tolist()
    return out


def random_features(sae, k: int, seed: int = 0) -> FeatureSet:
    feats = sorted(random.Random(seed).sample(range(sae.d_sae), k))
    cands = [Candidate(f"L{LAYER}/F{j}", LAYER, j, scale=1.0, validated=True) for j in feats]
    return FeatureSet(cands, [c.key for c in cands])


def bench(args) -> dict:
    torch.manual_seed(0)
    lm = load_model("smollm2-135m")
    sae = load_sae("default", model_name="smollm2-135m", layer=LAYER)
    exs, source = pool_examples(args.pool_size)
    toks = [tokenize_example(lm.tokenizer, e, args.max_length) for e in exs]
    real_tokens = sum(len(t.ids) for t in toks)
    res: dict = {"pool": source, "pool_size": len(exs), "real_tokens": real_tokens, "max_length": args.max_length,
                 "threads": torch.get_num_threads()}

    def bare():  # tokenizing is part of every scorer's work, so the floor pays for it too
        toks = [tokenize_example(lm.tokenizer, e, args.max_length) for e in exs]
        for _ in iter_activation_batches(lm, toks, [LAYER], exclude_special=False):
            pass

    bare()  # warm-up (allocator, kernels)
    _, res["bare_s"] = timed(bare)
    fs = random_features(sae, args.features)
    scorer = FeatureScorer(lm, {LAYER: sae}, fs, ScoreConfig(top_examples=0, max_length=args.max_length))
    _, res["igds_s"] = timed(lambda: scorer.activations(exs))
    _, res["loss_s"] = timed(lambda: loss_scores(lm, exs, max_length=args.max_length))
    _, res["ifd_s"] = timed(lambda: ifd_scores(lm, exs, max_length=args.max_length))
    alone = [answer_only(lm.tokenizer, e, args.max_length) for e in exs]
    _, res["loss_hf_s"] = timed(lambda: full_logits_losses(lm, toks))
    _, res["ifd_hf_s"] = timed(lambda: (full_logits_losses(lm, toks), full_logits_losses(lm, alone)))
    for k in ("bare", "igds", "loss", "ifd", "loss_hf", "ifd_hf"):
        res[f"{k}_tok_s"] = real_tokens / res[f"{k}_s"]

    # causal filter: K features on V validation examples, cached prefix vs naive
    val = toks[: args.val_size]
    ids, mask = pad(val, lm.tokenizer.pad_token_id)
    tgt, edit = target_mask(val, ids.shape[1]), count_mask(val, ids.shape[1])
    feats = [c.feature for c in fs.validated_features][: args.filter_features]
    for name, cached in (("filter_cached_s", True), ("filter_naive_s", False)):
        (base, amp), res[name] = timed(lambda: feature_effects(lm, sae, LAYER, feats, ids, mask, tgt, edit, 4.0,
                                                               chunk=8, cached_prefix=cached))
        # examples whose response was truncated away have no target: NaN, left out of the mean
        res[name.replace("_s", "_delta_mean")] = float(np.nanmean((base - amp).cpu().numpy()))
    res["filter_features"], res["filter_val"] = len(feats), len(val)

    gflops = matmul_gflops()
    avg_len = real_tokens / len(toks)
    res["matmul_gflops"] = gflops
    res["bare_gflops"] = forward_flops_per_token(lm, LAYER + 1, avg_len) * res["bare_tok_s"] / 1e9
    return res


def memory_run(n: int, max_length: int) -> dict:
    """Score a pool file of ``n`` examples with the streaming local engine; peak RSS (fresh process)."""
    import tempfile

    from igds.data import DataSpec
    from igds.scoring import score_pool

    lm = load_model("smollm2-135m")
    sae = load_sae("default", model_name="smollm2-135m", layer=LAYER)
    src = SHARED / "instruction_pool" / "t0_pool.jsonl"
    rows = [json.loads(line) for line in open(src, encoding="utf-8")]
    work = Path(tempfile.mkdtemp(prefix="igds-mem-"))
    with open(work / "pool.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({**rows[i % len(rows)], "id": f"m{i}"}) + "\n")
    del rows
    fs = random_features(sae, 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    score_pool(lm, {LAYER: sae}, fs, str(work / "pool.jsonl"), DataSpec(),
               ScoreConfig(max_length=max_length, shard_size=512), work / "run")
    return {"n": n, "seconds": time.perf_counter() - t, "rss_before_mb": before / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def markdown(res: dict) -> str:
    b = res["bare_tok_s"]
    lines = [
        f"Pool: {res['pool_size']} examples from `{Path(res['pool']).name}`, {res['real_tokens']} real tokens "
        f"(max_length {res['max_length']}), {res['threads']} threads, SmolLM2-135M fp32, SAE layer {LAYER}.",
        "",
        "| pass | seconds | real tokens/s | time vs igds scoring |",
        "|---|---|---|---|",
    ]
    rows = [("bare", "(a) tokenize + bare forward stopped at layer 15"), ("igds", "(b) igds scoring"),
            ("loss", "(c) Loss baseline (igds: LM head at response tokens only)"),
            ("ifd", "(d) IFD (igds: two such passes)"),
            ("loss_hf", "(c') Loss as the peers' code runs it (full-vocab logits at every position)"),
            ("ifd_hf", "(d') IFD as the peers' code runs it (two such passes)")]
    for k, name in rows:
        if k + "_s" in res:
            lines.append(f"| {name} | {res[k + '_s']:.1f} | {res[k + '_tok_s']:.0f} | "
                         f"{res[k + '_s'] / res['igds_s']:.2f}x |")
    peers = (f"; vs (c') **{res['igds_s'] / res['loss_hf_s']:.2f}**" if "loss_hf_s" in res else "",
             f"; vs (d') **{res['igds_s'] / res['ifd_hf_s']:.2f}**" if "ifd_hf_s" in res else "")
    lines += [
        "",
        f"- igds scoring throughput / bare stopped forward: **{res['igds_tok_s'] / b:.2f}** (target >= 0.9)",
        f"- igds scoring time / Loss pass: **{res['igds_s'] / res['loss_s']:.2f}**{peers[0]} (target <= 0.4)",
        f"- igds scoring time / IFD: **{res['igds_s'] / res['ifd_s']:.2f}**{peers[1]} (target <= 0.2)",
        f"- causal filter, {res['filter_features']} features x {res['filter_val']} validation examples: cached prefix "
        f"{res['filter_cached_s']:.1f} s vs naive {res['filter_naive_s']:.1f} s = "
        f"**{res['filter_naive_s'] / res['filter_cached_s']:.2f}x** faster (target >= 1.8x); mean delta identical "
        f"({res['filter_cached_delta_mean']:.5f} vs {res['filter_naive_delta_mean']:.5f})",
        f"- roofline: the bare forward reaches {res['bare_gflops']:.0f} GFLOP/s of a measured "
        f"{res['matmul_gflops']:.0f} GFLOP/s fp32 matmul peak ({res['bare_gflops'] / res['matmul_gflops']:.0%})",
    ]
    return "\n".join(lines) + "\n"


def memory_markdown(mem: list[dict]) -> str:
    lines = [f"Peak memory of `score_pool` (streaming, shards of 512, max_length {mem[0].get('max_length')}), "
             "each pool in a fresh process:", "",
             "| pool size | seconds | RSS after model load (MB) | peak RSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {m['n']} | {m['seconds']:.0f} | {m['rss_before_mb']:.0f} | {m['peak_rss_mb']:.0f} |" for m in mem]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool-size", type=int, default=256)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--val-size", type=int, default=16)
    p.add_argument("--filter-features", type=int, default=16)
    p.add_argument("--memory", action="store_true", help="also measure peak memory at 1k/4k/16k examples")
    p.add_argument("--memory-sizes", default="1000,4000,16000")
    p.add_argument("--memory-max-length", type=int, default=24)
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cost.md"))
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(memory_run(args.memory_child, args.memory_max_length)))
        return
    res = bench(args)
    mem = []
    if args.memory:
        for n in map(int, args.memory_sizes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--memory-max-length",
                                  str(args.memory_max_length)], check=True, capture_output=True, text=True)
            mem.append({**json.loads(out.stdout.strip().splitlines()[-1]), "max_length": args.memory_max_length})
    text = markdown(res)
    splice("cost", text)
    if mem:
        text += "\n" + memory_markdown(mem)
        splice("cost-memory", memory_markdown(mem))
    atomic_write_text(Path(args.out), text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps({"results": res, "memory": mem}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
