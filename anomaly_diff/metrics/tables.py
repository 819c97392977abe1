"""The result of :class:`~anomaly_diff.metrics.AnomalyMetrics` as JSON, CSV, Markdown and a terminal table.

Tables hold one row per category and a last ``mean`` row; Markdown and terminal tables show percentages, and a
metric a category cannot define shows as ``n/a`` with a note saying it is left out of the mean. Pixel metrics that
are not available (the result's ``not_available``: images without ground-truth mask) show as ``n/a`` in every table,
the CSV's included, with a note naming the categories, the reason and how many categories the means are over.
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
    """:func:`to_table` as CSV (``nan`` where undefined, ``n/a`` where not available)."""
    columns, rows = to_table(results)
    missing = _not_available(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for name, *values in rows:
        cells = zip(columns[1:], values, strict=True)
        writer.writerow([name, *("n/a" if (name, metric) in missing else repr(value) for metric, value in cells)])
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
    lines += [line for note in _notes(results) for line in ("", note)]
    return "\n".join(lines) + "\n"


def to_rich_table(results: dict[str, dict], title: str) -> Table:
    """The same table as :func:`to_markdown` for a ``rich`` console, with the note as caption."""
    table = Table(title=title, caption="\n".join(_notes(results)) or None)
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


def _not_available(results: dict[str, dict]) -> set[tuple[str, str]]:
    """``(category, metric)`` of every value that is not available (no ground-truth mask)."""
    return {(name, metric) for name, entry in results.get("not_available", {}).items() for metric in entry["metrics"]}


def _has_undefined(results: dict[str, dict]) -> bool:
    """Whether a category's value is NaN for another reason than being not available.

    A mean is NaN only when all of its categories' values are, so only the categories' values are looked at.
    """
    missing = _not_available(results)
    if not results["per_category"]:
        return any(math.isnan(v) for v in results["mean"].values())
    return any(
        math.isnan(v) and (name, metric) not in missing
        for name, values in results["per_category"].items()
        for metric, v in values.items()
    )


def _notes(results: dict[str, dict]) -> list[str]:
    """The notes under a table: undefined values, and values not available with what the means are over."""
    notes = [UNDEFINED_NOTE] if _has_undefined(results) else []
    not_available = results.get("not_available", {})
    if not_available:
        total = len(results["per_category"])
        counts = results.get("categories_in_mean", {})
        groups: dict[int, list[str]] = {}
        for metric in METRIC_NAMES:
            if metric in counts:
                groups.setdefault(counts[metric], []).append(metric)
        over = "; ".join(f"{', '.join(metrics)} over {count} of {total}" for count, metrics in groups.items())
        notes.append(
            "n/a (no ground-truth mask): pixel metrics are not available for "
            + ", ".join(f"{name} ({entry['reason']})" for name, entry in not_available.items())
            + f"; left out of the mean, which is over the categories that have a value ({over} categories)."
        )
    return notes


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value
