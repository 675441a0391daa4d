"""Deterministic example data for the quickstart: a math task and a mixed candidate pool.

``task.jsonl`` holds grade-school arithmetic word problems (Alpaca dialect) whose
rationales end in ``#### N``. ``pool.jsonl`` mixes more word problems, *noisy* math
rows whose output does not help (a bare wrong number, "I don't know"), and templated
non-math instructions; every pool row names its ``source`` so that the precision of a
selection can be measured. Everything is generated from ``random.Random(seed)`` with
the standard library, so the same seed gives byte-identical files on any machine.

Run ``python -m igds.quickstart OUT_DIR [--seed S]`` to write both files.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any, Callable

from ..artifacts import atomic_write_jsonl
from .instructions import generic_instruction
from .word_problems import noisy_output, word_problem

# Planned pool mix; the rest of the pool is templated non-math instructions.
_POOL_MATH_SHARE = 0.35
_POOL_NOISY_SHARE = 0.10
_TASK_MAX_STEPS = 3
_POOL_MAX_STEPS = 4


def _unique(make: Callable[[], tuple[str, dict[str, Any]]], seen: set[str], what: str) -> dict[str, Any]:
    """Draw from ``make`` until its key is new; templates have finite variety, so give up loudly."""
    for _ in range(1000):
        key, row = make()
        if key not in seen:
            seen.add(key)
            return row
    raise RuntimeError(f"could not draw a new {what} example after 1000 tries; ask for fewer rows")


def _math_row(rng: random.Random, max_steps: int, noisy: bool = False) -> tuple[str, dict[str, Any]]:
    template, prob = word_problem(rng, max_steps)
    output = noisy_output(rng, prob.answer) if noisy else prob.rationale()
    return prob.question, {"instruction": prob.question, "input": "", "output": output, "template": template}


def _generic_row(rng: random.Random) -> tuple[str, dict[str, Any]]:
    family, instruction, inp, output = generic_instruction(rng)
    return instruction + "\n" + inp, {"instruction": instruction, "input": inp, "output": output, "source": family}


def _make_task(rng: random.Random, n: int, seen: set[str]) -> list[dict[str, Any]]:
    """``n`` word problems with 1 to 3 reasoning steps, ids ``task-00000`` ..."""
    rows = [_unique(lambda: _math_row(rng, _TASK_MAX_STEPS), seen, "task") for _ in range(n)]
    return [{"id": f"task-{i:05d}", **row} for i, row in enumerate(rows)]


def _make_pool(rng: random.Random, n: int, seen: set[str]) -> list[dict[str, Any]]:
    """``n`` shuffled pool rows: math, noisy math and templated non-math instructions."""
    n_math, n_noisy = round(_POOL_MATH_SHARE * n), round(_POOL_NOISY_SHARE * n)
    rows = [{**_unique(lambda: _math_row(rng, _POOL_MAX_STEPS), seen, "math"), "source": "math"}
            for _ in range(n_math)]
    rows += [{**_unique(lambda: _math_row(rng, _POOL_MAX_STEPS, noisy=True), seen, "noisy"), "source": "math_noisy"}
             for _ in range(n_noisy)]
    rows += [_unique(lambda: _generic_row(rng), seen, "generic") for _ in range(n - n_math - n_noisy)]
    rng.shuffle(rows)
    return [{"id": f"pool-{i:05d}", **row} for i, row in enumerate(rows)]


def write_example_data(out_dir: str | Path, seed: int = 0, n_task: int = 160, n_pool: int = 400) -> dict[str, Path]:
    """Write ``task.jsonl`` and ``pool.jsonl`` under ``out_dir``; return ``{"task": path, "pool": path}``.

    The same ``seed`` gives byte-identical files. No task instruction appears in the pool."""
    out = Path(out_dir)
    # Separate streams so that the pool does not shift when n_task changes.
    task_rng, pool_rng = random.Random(f"igds-task-{seed}"), random.Random(f"igds-pool-{seed}")
    seen: set[str] = set()
    task = _make_task(task_rng, n_task, seen)
    pool = _make_pool(pool_rng, n_pool, seen)
    paths = {"task": out / "task.jsonl", "pool": out / "pool.jsonl"}
    atomic_write_jsonl(paths["task"], task)
    atomic_write_jsonl(paths["pool"], pool)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m igds.quickstart OUT_DIR [--seed S] [--n-task N] [--n-pool N]``."""
    parser = argparse.ArgumentParser(prog="python -m igds.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write task.jsonl and pool.jsonl into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-task", type=int, default=160)
    parser.add_argument("--n-pool", type=int, default=400)
    args = parser.parse_args(argv)
    for name, path in write_example_data(args.out_dir, args.seed, args.n_task, args.n_pool).items():
        print(f"{name}: {path}")
