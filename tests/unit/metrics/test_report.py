import csv
import io
import json
import math

from anomaly_diff.metrics import METRIC_NAMES
from anomaly_diff.metrics.report import UNDEFINED_NOTE, to_csv, to_json, to_markdown, to_rich_table

RESULTS = {
    "mean": dict.fromkeys(METRIC_NAMES, 0.875),
    "per_category": {"bottle": dict.fromkeys(METRIC_NAMES, 0.875), "zipper": dict.fromkeys(METRIC_NAMES, math.nan)},
}


def test_json_round_trips_with_undefined_as_null():
    loaded = json.loads(to_json(RESULTS))
    assert loaded["mean"] == RESULTS["mean"] and loaded["per_category"]["bottle"] == RESULTS["per_category"]["bottle"]
    assert loaded["per_category"]["zipper"] == dict.fromkeys(METRIC_NAMES)


def test_csv_has_a_row_per_category_and_the_mean_last():
    rows = list(csv.reader(io.StringIO(to_csv(RESULTS))))
    assert rows[0] == ["category", *METRIC_NAMES]
    assert [r[0] for r in rows[1:]] == ["bottle", "zipper", "mean"]
    assert [float(v) for v in rows[1][1:]] == [0.875] * 7 and rows[2][1:] == ["nan"] * 7


def test_markdown_marks_undefined_values_and_bolds_the_mean():
    lines = to_markdown(RESULTS).splitlines()
    assert "| bottle | " + " | ".join(["87.50"] * 7) + " |" in lines
    assert "| zipper | " + " | ".join(["n/a"] * 7) + " |" in lines
    assert "| **mean** | " + " | ".join(["**87.50**"] * 7) + " |" in lines
    assert lines[-1] == UNDEFINED_NOTE
    defined = {"mean": RESULTS["mean"], "per_category": {"bottle": RESULTS["per_category"]["bottle"]}}
    assert UNDEFINED_NOTE not in to_markdown(defined)


def test_rich_table_has_the_same_rows():
    table = to_rich_table(RESULTS, title="Test metrics")
    assert [c.header for c in table.columns] == ["category", *METRIC_NAMES]
    assert list(table.columns[0].cells) == ["bottle", "zipper", "mean"]
    assert list(table.columns[7].cells) == ["87.50", "n/a", "87.50"] and table.caption == UNDEFINED_NOTE
