"""What every irunlearn figure promises, checked from its plotly JSON: titled axes, distinct legend entries."""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go


def _axis_key(ref: str) -> str:
    """'x' -> 'xaxis', 'y3' -> 'yaxis3'."""
    return f"{ref[0]}axis{ref[1:]}"


def figure_problems(fig: go.Figure) -> list[str]:
    """Axes that a trace draws on without a title (an axis that `matches` a titled one counts as titled),
    and legend labels shown more than once. Empty when the figure keeps both promises."""
    layout = fig.layout
    problems = []
    used = {_axis_key(ref) for trace in fig.data for ref in (trace.xaxis or "x", trace.yaxis or "y")}
    for key in sorted(used):
        axis = layout[key]
        titled = bool(axis.title.text)
        if not titled and axis.matches:
            titled = bool(layout[_axis_key(axis.matches)].title.text)
        if not titled:
            problems.append(f"{key} has no title")
    if layout.showlegend is not False:
        shown = [t.name for t in fig.data if t.showlegend is not False and t.name is not None]
        problems += [f"legend label {name!r} shown {n} times" for name, n in Counter(shown).items() if n > 1]
    return problems
