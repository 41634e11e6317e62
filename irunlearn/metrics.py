"""The metric registry: every evaluation metric is a small registered function the evaluator looks up.

As open-unlearning's `@unlearning_metric`, a metric is a function `(evaluator, model) -> MetricResult`
that returns its aggregate values (one metric may give several columns, e.g. the SAE and the residual
probe) and optionally one row per item (target, question, attack step). It declares what it needs from
the evaluator (`unknown_reference`, `oracle`, ...) so a missing reference is a clear error before any work,
and its `group` says when `Evaluator.evaluate` runs it (`"genuineness"` metrics run with
`genuineness=True`; other groups run when named). Register your own with `@register_metric(...)`; no
package file needs editing.

>>> @register_metric("target_name_length", group="custom", higher_is_better=None)
... def target_name_length(evaluator, model):
...     names = [t.name for t in evaluator.targets]
...     return MetricResult({"target_name_length": sum(map(len, names)) / len(names)})
>>> evaluator.metrics(edited_model, ["target_name_length"])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
from transformer_lens import HookedTransformer

if TYPE_CHECKING:
    from irunlearn.evaluation import Evaluator

MetricFn = Callable[["Evaluator", HookedTransformer], "MetricResult"]


@dataclass(frozen=True)
class MetricResult:
    """A metric's aggregate columns and, optionally, its per-item values."""

    values: dict[str, float]
    per_item: pd.DataFrame | None = None


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, what it needs from the evaluator, and how to read it.

    `higher_is_better` applies to the main column (`name`): True, False, or None where "better" is
    closeness to a reference (e.g. relearning at the stranger's level).
    """

    name: str
    fn: MetricFn
    group: str
    needs: tuple[str, ...] = ()
    higher_is_better: bool | None = None
    description: str = ""
    columns: tuple[str, ...] = field(default=())


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    group: str = "genuineness",
    needs: tuple[str, ...] = (),
    higher_is_better: bool | None = None,
    columns: tuple[str, ...] = (),
) -> Callable[[MetricFn], MetricFn]:
    """Register `fn` under `name` (its docstring's first paragraph becomes the metric's description).

    Re-registering a name replaces the metric, so a notebook cell can be rerun.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        description = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        METRICS[name] = Metric(name, fn, group, tuple(needs), higher_is_better, description, columns or (name,))
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    """The metric registered under `name`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}. Registered: {sorted(METRICS)}")
    return METRICS[name]


def metrics_in(group: str) -> list[Metric]:
    """The registered metrics of `group`, in registration order."""
    return [m for m in METRICS.values() if m.group == group]


def metric_table() -> pd.DataFrame:
    """One row per registered metric: name, group, columns, needs, direction and description."""
    return pd.DataFrame(
        [
            {
                "metric": m.name,
                "group": m.group,
                "columns": ", ".join(m.columns),
                "needs": ", ".join(m.needs),
                "higher_is_better": m.higher_is_better,
                "description": m.description,
            }
            for m in METRICS.values()
        ]
    )
