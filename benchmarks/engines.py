"""Local vs Ray Data scoring engine: throughput on this machine for the same pool.

    python benchmarks/engines.py [--pool-size 128] [--shard-size 16] [--out benchmarks/results/engines.md]

Both engines score the same pool (the first ``--pool-size`` rows of the T0 instruction
pool in ../shared/data, falling back to the shipped example pool) with SmolLM2-135M and
16 features of its shipped layer-15 SAE. If that SAE is not shipped yet, a random TopK
SAE of the same shape (d_sae 4608, k 32) stands in: the cost of scoring is the forward
pass plus a restricted encode, which does not depend on the SAE's weights, so the
throughput is the same (the scores are not meaningful; the result file says which SAE).

Timings: ``local`` scores with the model already loaded (its load time is given apart);
``ray`` is end to end inside a running local Ray: actor start, model + SAE load in every
actor, shipping shards and writing the table. Every engine starts from an empty cache.
The score tables are checked equal (ids exactly, scores to rtol 1e-4).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from igds.artifacts import atomic_write_text
from igds.config import load_config
from igds.data import load_examples, tokenize_example
from igds.engines import score_features
from igds.feature_set import Candidate, FeatureSet
from igds.inputs import data_spec, load_saes, resolve_source
from igds.model import load_model
from igds.sae import SAE
from igds.scoring import score_pool
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))
MODEL, LAYER = "smollm2-135m", 15


def pool_path() -> Path:
    path = SHARED / "instruction_pool" / "t0_pool.jsonl"
    if path.exists():
        return path
    from igds.quickstart import write_example_data
    return write_example_data(ROOT / ".bench" / "examples")["pool"]


def sae_spec(tmp: Path, d_model: int) -> tuple[str, str]:
    """The shipped SAE if there is one, else a random TopK SAE of its shape saved to ``tmp``."""
    from igds.sae_loading import load_sae

    try:
        load_sae("default", model_name=MODEL, layer=LAYER)
        return "default", f"shipped default SAE ({MODEL}, layer {LAYER})"
    except FileNotFoundError:
        torch.manual_seed(0)
        sae = SAE(d_model, 4608, "topk", k=32, metadata={"layer": LAYER})
        with torch.no_grad():
            sae.W_enc.normal_(0, d_model ** -0.5)
            sae.W_dec.copy_(sae.W_enc.T)
        sae.save(tmp / "random_sae")
        return str(tmp / "random_sae"), f"random TopK SAE (d_sae 4608, k 32, layer {LAYER}): no default SAE shipped"


def features(k: int = 16) -> FeatureSet:
    feats = sorted(random.Random(0).sample(range(4608), k))
    cands = [Candidate(f"L{LAYER}/F{j}", LAYER, j, scale=1.0, validated=True) for j in feats]
    return FeatureSet(cands, [c.key for c in cands])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool-size", type=int, default=128)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--ray-setups", default="1x2,2x1", help="ACTORSxCPUS, comma-separated")
    p.add_argument("--local-threads", default="2,1", help="torch threads of the local engine, comma-separated")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engines.md"))
    args = p.parse_args(argv)

    import ray

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="igds-engines-"))
    t = time.perf_counter()
    lm = load_model(MODEL, "cpu")
    load_s = time.perf_counter() - t
    sae_path, sae_what = sae_spec(tmp, lm.d_model)
    pool = pool_path()
    cfg = load_config(overrides={"model.name": MODEL, "model.device": "cpu", "sae.paths": [sae_path],
                                 "pool.path": str(pool), "pool.limit": args.pool_size,
                                 "score.shard_size": args.shard_size, "score.max_length": args.max_length})
    fs = features()
    saes = load_saes(cfg, lm)
    exs = load_examples(pool, limit=args.pool_size)
    n_tokens = sum(len(tokenize_example(lm.tokenizer, e, args.max_length).ids) for e in exs)

    def run_local(out: Path, limit: int | None = cfg.pool.limit):
        return score_pool(lm, saes, fs, resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), cfg.score, out,
                          limit=limit).table

    run_local(tmp / "warm-up", limit=2)  # allocator and kernels, as a Ray actor's first shard also pays
    rows = []
    default_threads = torch.get_num_threads()
    for threads in (int(n) for n in args.local_threads.split(",")):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        local = run_local(tmp / f"local-{threads}")
        rows.append((f"local, {threads} torch thread(s)", "scoring, model already loaded", time.perf_counter() - t))
    torch.set_num_threads(default_threads)

    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t
    try:
        for setup in args.ray_setups.split(","):
            actors, cpus = setup.split("x")
            cfg.score.engine, cfg.score.ray_actors, cfg.score.ray_cpus_per_actor = "ray", int(actors), float(cpus)
            out = tmp / f"ray-{setup}"
            t = time.perf_counter()
            table = score_features(cfg, lm, saes, fs, out).table
            rows.append((f"ray {actors} actor(s) x {cpus} CPU", "end to end incl. actor start + model load",
                         time.perf_counter() - t))
            assert table.column("id").to_pylist() == local.column("id").to_pylist()
            np.testing.assert_allclose(table.column("score").to_numpy(), local.column("score").to_numpy(), rtol=1e-4)
    finally:
        ray.shutdown()
    t = time.perf_counter()
    run_local(tmp / "local-again")  # the same run after Ray: how much the machine's load moved
    rows.append((f"local, {default_threads} torch thread(s), again after Ray", "as the first row: the drift of the "
                 "machine's load", time.perf_counter() - t))
    shutil.rmtree(tmp, ignore_errors=True)

    cmd = "python benchmarks/engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` on {date.today().isoformat()}: {os.cpu_count()} CPU cores, no GPU; torch "
        f"{torch.__version__}, ray {ray.__version__}. Wall time {time.perf_counter() - started:.0f} s; 1-min load "
        f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", "",
        f"Model {MODEL} (fp32, CPU; load {load_s:.1f} s), {sae_what}, {len(fs.validated)} features. "
        f"Pool: first {len(exs)} rows of `{pool.name}`, {n_tokens} tokens (max_length {args.max_length}), "
        f"shards of {args.shard_size}. Ray start (`ray.init`): {init_s:.1f} s, not included below.", "",
        "| engine | what is timed | wall s | examples/s | tokens/s |", "|---|---|---:|---:|---:|",
    ]
    for name, what, secs in rows:
        lines.append(f"| {name} | {what} | {secs:.1f} | {len(exs) / secs:.2f} | {n_tokens / secs:.0f} |")
    lines += ["", "Score tables equal across engines (ids exactly, scores to rtol 1e-4). Ray sets an actor's "
              "OMP_NUM_THREADS to the CPUs it reserves (floor, at least 1).", ""]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(Path(args.out), "## Scoring engines: local vs Ray Data\n\n" + text)
    splice("engines", text)


if __name__ == "__main__":
    main()
