"""The quickstart's synthetic data, kept out of the core package: ``write_example_data(out_dir, seed)``.

``word_problems`` (the math task and the math rows of the pool), ``instructions`` (the pool's
non-math rows) and ``data`` (assembly into ``task.jsonl`` and ``pool.jsonl``, and the command line).
"""

from .data import main, write_example_data

__all__ = ["main", "write_example_data"]
