"""Matplotlib for the report: the house style, PNGs embedded as base64, and the note shown without it.

matplotlib is an optional extra (``igds[report]``): without it :func:`pyplot` returns None and
each section puts :data:`NO_MATPLOTLIB` where its plots would be, so the page is still written.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from .fmt import esc

KEPT, DROPPED, OTHER = "#2166ac", "#e08214", "#c8c8c8"
SELECTED, REJECTED = "#2166ac", "#bdbdbd"
MAX_SCATTER_POINTS = 20000
NO_MATPLOTLIB = "<p class=\"na\"><span>Not available</span> plots need matplotlib: pip install 'igds[report]'</p>"


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` in the report's style (Agg backend), or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
        "axes.axisbelow": True, "legend.frameon": False, "font.family": "DejaVu Sans",
    })
    return plt


def img(fig: Any, alt: str) -> str:
    """``fig`` as an ``<img>`` with an inline PNG; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # no Software tag, so that the same run directory gives the same bytes
    fig.savefig(buf, format="png", dpi=144, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    w_px = int(fig.get_figwidth() * 96)
    return f'<img class="plot" style="width:{w_px}px" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def subsample(n: int, limit: int = MAX_SCATTER_POINTS) -> np.ndarray:
    """Sorted positions of at most ``limit`` of ``n`` points, the same ones on every call."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))
