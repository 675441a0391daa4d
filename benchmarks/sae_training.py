"""Throughput of SAE training on this machine: activation collection vs SAE steps.

    python benchmarks/sae_training.py [--model smollm2-135m] [--layer 15] [--examples 48]
                                      [--steps 20] [--out benchmarks/results/sae_training.md]

Collection: the stopped forward (``igds.train_sae.ActivationStream``: hooks, no
blocks above ``--layer``, no LM head) over GSM8K train questions + answers in the
chat template, counted tokens per second (first/special/padding/extreme-norm
tokens excluded, as in training). Steps: ``TopKTrainer.step`` (forward, AuxK off,
backward, Adam, decoder renormalisation) on random activations of the model's
width, at 8x width and k=32, for two batch sizes. Writes a Markdown snippet.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from igds.artifacts import atomic_write_text
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def bench_collection(lm, layer: int, n_examples: int) -> dict[str, float]:
    from igds.config import TrainSAEConfig
    from igds.sae_data import ActivationStream, load_training_examples

    spec = f"{SHARED / 'gsm8k' / 'train.jsonl'}::prompt_field=question,response_field=answer,limit={n_examples}"
    cfg = TrainSAEConfig(model=lm.name, layers=[layer], data=[spec], max_length=512)
    examples = load_training_examples(cfg, lm.tokenizer)
    stream = ActivationStream(lm, examples, [layer], cfg)
    stream.calibrate()
    t = time.perf_counter()
    got = 0
    for i, acts in stream.iter_from(0):
        got += acts[layer].shape[0]
        if i == stream.batches_per_pass:
            break
    dt = time.perf_counter() - t
    total = sum(len(e.ids) for e in examples)
    return {"examples": len(examples), "input_tokens": total, "kept_tokens": got, "seconds": dt,
            "input_tok_s": total / dt, "kept_tok_s": got / dt}


def bench_steps(d_in: int, batch: int, steps: int, expansion: int = 8, k: int = 32) -> dict[str, float]:
    from igds.config import TrainSAEConfig
    from igds.train_sae import TopKTrainer

    cfg = TrainSAEConfig(k=k, auxk_alpha=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((steps + 3) * batch, d_in, generator=g) * 6
    tr = TopKTrainer(d_in, expansion * d_in, k, cfg, g, torch.device("cpu"))
    tr.init_from_data(x[:batch])
    for i in range(3):  # warm-up
        tr.step(x[i * batch : (i + 1) * batch], 1e-4)
    t = time.perf_counter()
    for i in range(3, steps + 3):
        tr.step(x[i * batch : (i + 1) * batch], 1e-4)
    dt = (time.perf_counter() - t) / steps
    return {"batch": batch, "s_per_step": dt, "tok_s": batch / dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sae_training.md"))
    args = p.parse_args(argv)
    from igds.model import load_model

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    lm = load_model(args.model)
    col = bench_collection(lm, args.layer, args.examples)
    steps = [bench_steps(lm.d_model, b, args.steps) for b in (1024, 4096)]
    cmd = "python benchmarks/sae_training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` on {date.today().isoformat()}: {args.model}, layer {args.layer}, fp32, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs "
        f"({platform.machine()}). Wall time {time.perf_counter() - started:.0f} s; 1-min load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| stage | work | throughput |",
        "|---|---|---|",
        f"| collect activations (stopped forward to layer {args.layer}) | {col['examples']} GSM8K train examples, "
        f"{col['input_tokens']:,} tokens ({col['kept_tokens']:,} kept) in {col['seconds']:.1f} s | "
        f"{col['input_tok_s']:,.0f} input tok/s ({col['kept_tok_s']:,.0f} kept tok/s) |",
    ]
    for s in steps:
        lines.append(f"| TopK SAE step (d={lm.d_model}, 8x = {8 * lm.d_model}, k=32, Adam) | batch {s['batch']} tokens, "
                     f"{s['s_per_step']:.3f} s/step | {s['tok_s']:,.0f} tok/s |")
    ratio = steps[0]["tok_s"] / col["kept_tok_s"]
    lines += ["", f"An SAE step consumes tokens ~{ratio:.0f}x faster than the forward produces them, so "
              "`--activation-tokens N` (collect N once, train several epochs over them) is the cheap recipe "
              "on CPU; streaming (`--buffer-tokens`) suits GPUs.", ""]
    text = "\n".join(lines)
    atomic_write_text(Path(args.out), "### SAE training throughput\n\n" + text)
    splice("sae-training", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
