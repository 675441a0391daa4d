"""``python -m igds.quickstart OUT_DIR [--seed S]``: write the quickstart's task.jsonl and pool.jsonl."""

from .data import main

main()
