"""Markdown tables for the analysis scripts (no extra dependency)."""

from __future__ import annotations

import pandas as pd


def markdown(frame: pd.DataFrame) -> str:
    """`frame` as a GitHub markdown table; floats to 3 significant digits."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    rows = "".join(
        "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |\n"
        for row in frame.itertuples(index=False)
    )
    return header + rows
