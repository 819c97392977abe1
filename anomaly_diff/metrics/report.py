"""The result of :class:`~anomaly_diff.metrics.AnomalyMetrics` as JSON, CSV, Markdown and a terminal table.

Tables hold one row per category and a last ``mean`` row; Markdown and terminal tables show percentages, and a
metric a category cannot define shows as ``n/a`` with a note saying it is left out of the mean.
"""

import csv
import io
import json
import math

from rich.table import Table

from anomaly_diff.metrics.anomaly_metrics import METRIC_NAMES

UNDEFINED_NOTE = (
    "n/a: undefined for the category (image metrics need normal and anomalous test images, pixel metrics normal "
    "and anomalous pixels); left out of the mean."
)


def to_json(results: dict[str, dict]) -> str:
    """The result dict as JSON, undefined values (NaN) as ``null``."""
    return json.dumps(_nan_to_none(results), indent=2) + "\n"


def to_table(results: dict[str, dict]) -> tuple[list[str], list[list]]:
    """Columns ``category, <metric>...``, one row per category and ``mean`` last; values in [0, 1], NaN undefined."""
    rows = [[name, *(float(values[m]) for m in METRIC_NAMES)] for name, values in _rows(results)]
    return ["category", *METRIC_NAMES], rows


def to_csv(results: dict[str, dict]) -> str:
    """:func:`to_table` as CSV (``nan`` where undefined)."""
    columns, rows = to_table(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([name, *(repr(value) for value in values)] for name, *values in rows)
    return buffer.getvalue()


def to_markdown(results: dict[str, dict]) -> str:
    """A Markdown table in percent with two decimals, the mean row in bold, and a note if any value is undefined."""
    lines = [
        "Values in percent. AUPRC is average precision (step sum); AUPRO is normalised by its FPR limit.",
        "",
        "| category | " + " | ".join(METRIC_NAMES) + " |",
        "|---" * (len(METRIC_NAMES) + 1) + "|",
    ]
    for name, values in _rows(results):
        cells = [_percent(values[m]) for m in METRIC_NAMES]
        if name == "mean":
            name, cells = f"**{name}**", [f"**{c}**" for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if _has_undefined(results):
        lines += ["", UNDEFINED_NOTE]
    return "\n".join(lines) + "\n"


def to_rich_table(results: dict[str, dict], title: str) -> Table:
    """The same table as :func:`to_markdown` for a ``rich`` console, with the note as caption."""
    table = Table(title=title, caption=UNDEFINED_NOTE if _has_undefined(results) else None)
    table.add_column("category")
    for metric in METRIC_NAMES:
        table.add_column(metric, justify="right")
    for name, values in _rows(results):
        if name == "mean":
            table.add_section()
        table.add_row(name, *(_percent(values[m]) for m in METRIC_NAMES), style="bold" if name == "mean" else None)
    return table


def _rows(results: dict[str, dict]) -> list[tuple[str, dict[str, float]]]:
    return [*results["per_category"].items(), ("mean", results["mean"])]


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _has_undefined(results: dict[str, dict]) -> bool:
    return any(math.isnan(v) for _, values in _rows(results) for v in values.values())


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value
