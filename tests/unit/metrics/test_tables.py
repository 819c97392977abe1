import csv
import io
import json
import math

from anomaly_diff.metrics import METRIC_NAMES
from anomaly_diff.metrics.tables import UNDEFINED_NOTE, to_csv, to_json, to_markdown, to_rich_table

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


UNMASKED = {
    "mean": {**dict.fromkeys(METRIC_NAMES[:3], 0.75), **dict.fromkeys(METRIC_NAMES[3:], 0.5)},
    "per_category": {
        "bottle": {**dict.fromkeys(METRIC_NAMES[:3], 1.0), **dict.fromkeys(METRIC_NAMES[3:], 0.5)},
        "photos": {**dict.fromkeys(METRIC_NAMES[:3], 0.5), **dict.fromkeys(METRIC_NAMES[3:], math.nan)},
    },
    "not_available": {"photos": {"metrics": list(METRIC_NAMES[3:]), "reason": "2 of its 2 anomalous test images "
                                                                                "have no ground-truth mask"}},
    "categories_in_mean": {**dict.fromkeys(METRIC_NAMES[:3], 2), **dict.fromkeys(METRIC_NAMES[3:], 1)},
}


def test_values_not_available_are_null_with_their_reason_and_n_a_in_every_table():
    loaded = json.loads(to_json(UNMASKED))
    assert loaded["per_category"]["photos"]["pixel_AUROC"] is None and loaded["per_category"]["photos"]["image_AUROC"]
    assert loaded["not_available"]["photos"]["reason"] == "2 of its 2 anomalous test images have no ground-truth mask"
    assert loaded["categories_in_mean"]["pixel_AUPRO"] == 1
    rows = list(csv.reader(io.StringIO(to_csv(UNMASKED))))
    assert rows[2] == ["photos", "0.5", "0.5", "0.5", "n/a", "n/a", "n/a", "n/a"]
    assert rows[3] == ["mean", "0.75", "0.75", "0.75", "0.5", "0.5", "0.5", "0.5"]
    lines = to_markdown(UNMASKED).splitlines()
    assert "| photos | 50.00 | 50.00 | 50.00 | n/a | n/a | n/a | n/a |" in lines
    assert UNDEFINED_NOTE not in lines  # nothing is undefined, only not available
    assert lines[-1] == (
        "n/a (no ground-truth mask): pixel metrics are not available for photos (2 of its 2 anomalous test images "
        "have no ground-truth mask); left out of the mean, which is over the categories that have a value "
        "(image_AUROC, image_AUPRC, image_F1max over 2 of 2; pixel_AUROC, pixel_AUPRC, pixel_F1max, pixel_AUPRO over "
        "1 of 2 categories)."
    )
    assert to_rich_table(UNMASKED, title="t").caption == lines[-1]
    both = {**UNMASKED, "per_category": {**UNMASKED["per_category"], "zipper": dict.fromkeys(METRIC_NAMES, math.nan)}}
    assert to_markdown(both).splitlines()[-3:] == [UNDEFINED_NOTE, "", lines[-1].replace("of 2", "of 3")]
