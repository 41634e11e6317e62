"""Markdown tables for the analysis scripts (no extra dependency)."""

from __future__ import annotations

import pandas as pd


def markdown(frame: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """`frame` as a GitHub markdown table: floats with `floatfmt` (NaN as "–"), "|" in text escaped as "/"."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "–" if pd.isna(value) else format(value, floatfmt)
        return str(value).replace("|", "/")

    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    rows = "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))
    return header + rows
