import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_diff.errors import InvalidSampleError
from anomaly_diff.metrics import METRIC_NAMES, AnomalyMetrics
from anomaly_diff.metrics.anomaly_metrics import IMAGE_METRICS, PIXEL_METRICS
from tests.unit.metrics.metrics_reference import random_case, reference_results


def run(metric, maps, masks, scores, labels, names, batch=4, ids=None):
    for start in range(0, len(labels), batch):
        part = slice(start, start + batch)
        metric.update(
            torch.as_tensor(maps[part]),
            torch.as_tensor(masks[part]),
            torch.as_tensor(scores[part]),
            torch.as_tensor(labels[part]),
            names[part],
            None if ids is None else torch.as_tensor(ids[part]),
        )
    return metric.compute()


def assert_results_close(actual, expected, atol=1e-9):
    assert actual["per_category"].keys() == expected["per_category"].keys()
    for name, values in expected["per_category"].items():
        for metric in METRIC_NAMES:
            assert actual["per_category"][name][metric] == pytest.approx(values[metric], abs=atol), (name, metric)
    for metric in METRIC_NAMES:
        assert actual["mean"][metric] == pytest.approx(expected["mean"][metric], abs=atol), metric


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunk_size", [1 << 22, 97])
def test_exact_mode_matches_sklearn_and_slow_aupro(ties, chunk_size):
    case = random_case(seed=3, ties=ties)
    result = run(AnomalyMetrics(chunk_size=chunk_size), *case)
    assert_results_close(result, reference_results(*case))
    assert all(0.0 <= v <= 1.0 for per in result["per_category"].values() for v in per.values())


def test_unnormalised_large_scores_keep_their_order():
    # torchmetrics' functional AUROC squashes these through a float32 sigmoid into ties (0.75); exact is 1.0
    maps = torch.tensor([20.0, 30.0, 0.5, 25.0]).reshape(4, 1, 1).expand(4, 2, 2).clone()
    masks = torch.zeros(4, 2, 2)
    masks[1] = 1
    masks[3, 0, 0] = 1
    labels = torch.tensor([0, 1, 0, 1])
    metric = AnomalyMetrics()
    metric.update(maps, masks, torch.tensor([20.0, 30.0, 0.5, 25.0]), labels, ["a"] * 4)
    result = metric.compute()["per_category"]["a"]
    assert result["image_AUROC"] == 1.0
    # 4 anomalous pixels at 30 beat all 11 normal ones; the one at 25 beats 8 and ties with 3
    assert result["pixel_AUROC"] == pytest.approx((4 * 11 + 8 + 0.5 * 3) / (5 * 11), abs=1e-15)


def test_mean_is_unweighted_over_categories():
    maps, masks, scores, labels, names = random_case(seed=5, categories=("a", "b", "c"), per_category=4)
    result = run(AnomalyMetrics(), maps, masks, scores, labels, names)
    for metric in METRIC_NAMES:
        values = [result["per_category"][c][metric] for c in "abc"]
        assert result["mean"][metric] == pytest.approx(sum(values) / 3, abs=1e-12)


def test_constant_scores_have_known_values():
    masks = torch.zeros(2, 4, 4)
    masks[1, :2, :2] = 1  # P = 4, N = 28
    metric = AnomalyMetrics()
    metric.update(torch.full((2, 4, 4), 0.7), masks, torch.full((2,), 3.0), torch.tensor([0, 1]), ["a", "a"])
    result = metric.compute()["per_category"]["a"]
    assert result["image_AUROC"] == 0.5 and result["image_AUPRC"] == 0.5 and result["image_F1max"] == 2 / 3
    assert result["pixel_AUROC"] == 0.5
    assert result["pixel_AUPRC"] == pytest.approx(4 / 32, abs=1e-15)
    assert result["pixel_F1max"] == pytest.approx(8 / 36, abs=1e-15)
    # one threshold: the PRO curve is the diagonal, so AUPRO = (0.3 * 0.3 / 2) / 0.3
    assert result["pixel_AUPRO"] == pytest.approx(0.15, abs=1e-15)


def test_single_pixel_region_has_known_values():
    values = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.5, 0.2, 0.1, 0.05, 0.0]).reshape(1, 3, 3)
    mask = torch.zeros(1, 3, 3)
    mask[0, 1, 1] = 1  # the 0.5 pixel; only 0.9 and 0.8 of the 17 normal pixels score higher
    maps = torch.cat([values, values / 2])
    masks = torch.cat([mask, torch.zeros(1, 3, 3)])
    metric = AnomalyMetrics()
    metric.update(maps, masks, torch.tensor([1.0, 0.0]), torch.tensor([1, 0]), ["a", "a"])
    result = metric.compute()["per_category"]["a"]
    assert result["pixel_AUROC"] == pytest.approx(15 / 17, abs=1e-15)
    assert result["pixel_AUPRC"] == pytest.approx(1 / 3, abs=1e-15)
    assert result["pixel_F1max"] == pytest.approx(2 / 4, abs=1e-15)
    # PRO jumps from 0 to 1 at FPR 2/17, then stays 1 up to 0.3
    assert result["pixel_AUPRO"] == pytest.approx((0.3 - 2 / 17) / 0.3, abs=1e-12)


def test_category_without_anomalies_is_nan_warned_once_and_left_out_of_the_mean():
    maps, masks, scores, labels, names = random_case(seed=7, categories=("a", "b"), per_category=4)
    normal_only = np.array(names) == "b"
    labels[normal_only], masks[normal_only] = 0, 0
    with pytest.warns(UserWarning, match=r"undefined.*b \(no anomalous test image; no anomalous pixel") as record:
        result = run(AnomalyMetrics(), maps, masks, scores, labels, names)
    assert len([w for w in record if "undefined" in str(w.message)]) == 1
    assert all(math.isnan(v) for v in result["per_category"]["b"].values())
    assert result["mean"] == result["per_category"]["a"]


def test_anomalous_images_with_empty_masks_keep_image_metrics():
    maps, masks, scores, labels, names = random_case(seed=8, categories=("a",), per_category=6)
    masks[:] = 0
    with pytest.warns(UserWarning, match=r"a \(no anomalous pixel in its masks\)"):
        result = run(AnomalyMetrics(), maps, masks, scores, labels, names)["per_category"]["a"]
    assert not math.isnan(result["image_AUROC"])
    assert all(math.isnan(result[m]) for m in METRIC_NAMES if m.startswith("pixel"))


def unmasked_case(seed=13):
    """Categories a and b; b's second anomalous image has no ground-truth mask (all zero, has_masks False)."""
    maps, masks, scores, labels, names = random_case(seed=seed, categories=("a", "b"), per_category=6)
    has_masks = np.ones(len(labels), dtype=bool)
    unmasked = [i for i, (c, y) in enumerate(zip(names, labels, strict=True)) if c == "b" and y == 1][1]
    masks[unmasked], has_masks[unmasked] = 0, False
    return maps, masks, scores, labels, names, has_masks


@pytest.mark.parametrize("num_bins", [None, 32])
def test_category_with_an_unmasked_anomaly_gets_image_metrics_and_no_pixel_metrics(num_bins):
    maps, masks, scores, labels, names, has_masks = unmasked_case()
    metric = AnomalyMetrics(num_bins=num_bins, score_range=(0.0, 1.7))
    for start in range(0, len(labels), 4):
        part = slice(start, start + 4)
        metric.update(torch.as_tensor(maps[part]), torch.as_tensor(masks[part]), torch.as_tensor(scores[part]),
                      torch.as_tensor(labels[part]), names[part], torch.arange(start, start + 4),
                      torch.as_tensor(has_masks[part]))
    with pytest.warns(UserWarning, match=r"pixel metrics are not available .* over the 1 of 2 categories with masks"
                                         r"\) for b \(1 of its 3 anomalous test images have no ground-truth mask\)"):
        result = metric.compute()
    a, b = (np.array(names) == c for c in "ab")
    # image metrics of both categories as usual: sklearn on the image scores
    for category, where in (("a", a), ("b", b)):
        values = result["per_category"][category]
        assert values["image_AUROC"] == pytest.approx(roc_auc_score(labels[where], scores[where]), abs=1e-12)
        assert values["image_AUPRC"] == pytest.approx(average_precision_score(labels[where], scores[where]), abs=1e-12)
    # pixel metrics of a: sklearn on a's pixels (exact mode); of b: not available, whatever its other masks say
    if num_bins is None:
        expected = roc_auc_score(masks[a].ravel(), maps[a].ravel())
        assert result["per_category"]["a"]["pixel_AUROC"] == pytest.approx(expected, abs=1e-9)
    assert all(math.isnan(result["per_category"]["b"][m]) for m in PIXEL_METRICS)
    assert not any(math.isnan(result["per_category"]["a"][m]) for m in METRIC_NAMES)
    assert result["not_available"] == {
        "b": {"metrics": list(PIXEL_METRICS), "reason": "1 of its 3 anomalous test images have no ground-truth mask"}
    }
    assert result["categories_in_mean"] == {**dict.fromkeys(IMAGE_METRICS, 2), **dict.fromkeys(PIXEL_METRICS, 1)}
    for m in IMAGE_METRICS:
        assert result["mean"][m] == pytest.approx((result["per_category"]["a"][m] + result["per_category"]["b"][m]) / 2)
    for m in PIXEL_METRICS:
        assert result["mean"][m] == result["per_category"]["a"][m]


def test_has_masks_all_true_changes_nothing_and_invalid_flags_are_refused():
    maps, masks, scores, labels, names, _ = unmasked_case()
    with_flags = AnomalyMetrics()
    with_flags.update(torch.as_tensor(maps), torch.as_tensor(masks), torch.as_tensor(scores), torch.as_tensor(labels),
                      names, has_masks=torch.ones(len(labels), dtype=torch.bool))
    result = with_flags.compute()
    assert result == run(AnomalyMetrics(), maps, masks, scores, labels, names)
    assert result["not_available"] == {} and set(result["categories_in_mean"].values()) == {2}
    with pytest.raises(ValueError, match=r"has_masks must be booleans, got \[2, 1\]"):
        AnomalyMetrics().update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4), torch.rand(2), torch.tensor([0, 0]),
                                ["a", "a"], has_masks=torch.tensor([2, 1]))
    with pytest.raises(ValueError, match=r"has_masks must have shape \(2,\)"):
        AnomalyMetrics().update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4), torch.rand(2), torch.tensor([0, 0]),
                                ["a", "a"], has_masks=torch.ones(3, dtype=torch.bool))


def test_no_category_defines_a_metric_gives_nan_mean():
    metric = AnomalyMetrics()
    metric.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4), torch.rand(2), torch.tensor([0, 0]), ["a", "a"])
    with pytest.warns(UserWarning):
        result = metric.compute()
    assert all(math.isnan(v) for v in result["mean"].values())


def test_sample_ids_drop_duplicates_and_order_does_not_matter():
    maps, masks, scores, labels, names = random_case(seed=11)
    n = len(labels)
    expected = run(AnomalyMetrics(), maps, masks, scores, labels, names)
    # shuffled and with samples 0 and 5 seen twice, as a padding distributed sampler would
    order = np.concatenate([np.random.default_rng(0).permutation(n), [0, 5]])
    pick = [names[i] for i in order]
    result = run(AnomalyMetrics(), maps[order], masks[order], scores[order], labels[order], pick, ids=order)
    assert result == expected
    counted_twice = run(AnomalyMetrics(), maps[order], masks[order], scores[order], labels[order], pick)
    assert counted_twice["per_category"] != expected["per_category"]


def test_sample_ids_given_to_different_samples_is_an_error():
    metric = AnomalyMetrics()
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4), torch.rand(1), torch.tensor([0]), ["a"], torch.tensor([3]))
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4), torch.rand(1), torch.tensor([0]), ["b"], torch.tensor([3]))
    with pytest.raises(ValueError, match="sample id 3 was given to two samples"):
        metric.compute()


def test_sample_ids_in_some_updates_only_is_an_error():
    metric = AnomalyMetrics()
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4), torch.rand(1), torch.tensor([0]), ["a"], torch.tensor([0]))
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4), torch.rand(1), torch.tensor([0]), ["a"])
    with pytest.raises(ValueError, match="some AnomalyMetrics.update"):
        metric.compute()


def test_maps_of_another_size_than_masks_are_rejected():
    maps, masks = torch.rand(2, 8, 8), torch.zeros(2, 16, 16)
    with pytest.raises(InvalidSampleError, match=r"anomaly map size \(8, 8\) differs from the mask size \(16, 16\)"):
        AnomalyMetrics().update(maps, masks, torch.rand(2), torch.tensor([0, 1]), ["a", "a"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("maps", math.nan, "sample 1 of the batch is invalid: its anomaly map has NaN or Inf"),
        ("maps", math.inf, "sample 1 of the batch is invalid: its anomaly map has NaN or Inf"),
        ("scores", math.nan, "sample 1 of the batch is invalid: its image score is not finite"),
        ("masks", 0.5, "sample 1 of the batch is invalid: its mask has values other than 0 and 1"),
        ("labels", 2, "sample 1 of the batch is invalid: its label is not 0 or 1"),
        ("normal_mask", 1.0, "sample 1 of the batch is invalid: it is labelled normal"),
    ],
)
def test_invalid_samples_name_their_position(field, value, message):
    maps, masks, scores, labels = torch.rand(3, 4, 4), torch.zeros(3, 4, 4), torch.rand(3), torch.tensor([1, 0, 1])
    if field == "maps":
        maps[1, 2, 2] = value
    elif field == "scores":
        scores[1] = value
    elif field == "masks":
        masks[1, 0, 0] = value
    elif field == "labels":
        labels[1] = value
    else:
        masks[1, 0, 0] = value
    with pytest.raises(InvalidSampleError, match=message) as error:
        AnomalyMetrics().update(maps, masks, scores, labels, ["a"] * 3)
    assert error.value.index == 1


def test_compute_without_samples_is_an_error():
    metric = AnomalyMetrics()
    with pytest.raises(ValueError, match="no samples"), pytest.warns(UserWarning):
        metric.compute()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_bins": 1}, "num_bins must be None"),
        ({"score_range": (1.0, 1.0)}, "score_range must be finite"),
        ({"aupro_fpr_limit": 0.0}, "aupro_fpr_limit must be in"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnomalyMetrics(**kwargs)


def test_binned_mode_equals_exact_mode_on_bin_indices():
    maps, masks, scores, labels, names = random_case(seed=13)
    num_bins, low, high = 16, 0.2, 1.4  # some values fall outside and are clamped
    with pytest.warns(UserWarning, match="outside score_range"):
        binned = run(AnomalyMetrics(num_bins=num_bins, score_range=(low, high)), maps, masks, scores, labels, names)
    quantised = np.clip(np.floor((maps.astype(np.float64) - low) * num_bins / (high - low)), 0, num_bins - 1)
    exact = run(AnomalyMetrics(), quantised.astype(np.float32), masks, scores, labels, names)
    assert_results_close(binned, exact, atol=1e-12)


def test_binned_mode_is_close_to_exact_with_fine_bins():
    case = random_case(seed=17)
    binned = run(AnomalyMetrics(num_bins=4096, score_range=(0.0, 1.7)), *case)
    assert_results_close(binned, reference_results(*case), atol=2e-3)


def test_reset_forgets_earlier_samples():
    first, second = random_case(seed=19), random_case(seed=23)
    metric = AnomalyMetrics()
    run(metric, *first)
    metric.reset()
    assert run(metric, *second) == run(AnomalyMetrics(), *second)


@pytest.mark.slow  # about 10 s: two spawned processes import torch
@pytest.mark.parametrize("unmasked", [False, True], ids=["masks", "an unmasked anomaly"])
def test_two_process_ddp_gives_the_single_process_result(tmp_path, unmasked):
    import socket

    import torch.multiprocessing as mp

    from tests.unit.metrics.ddp_worker import worker

    maps, masks, scores, labels, names = random_case(seed=29, per_category=7)  # 14 samples: rank 1 repeats sample 0
    maps, masks, scores, labels = maps[:-1], masks[:-1], scores[:-1], labels[:-1]  # 13: padding needed
    names = names[:-1]
    has_masks = None
    if unmasked:  # one anomalous cable image has no mask: cable's pixel metrics are not available on every rank
        has_masks = np.ones(len(labels), dtype=bool)
        assert labels[-1] == 1 and names[-1] == "cable"
        masks[-1], has_masks[-1] = 0, False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(2, port, (maps, masks, scores, labels, names, has_masks), str(tmp_path)), nprocs=2)
    ids = np.arange(len(labels))
    flags = None if has_masks is None else torch.as_tensor(has_masks)
    single = {}
    for mode, kwargs in (("exact", {"chunk_size": 300}), ("binned", {"num_bins": 64, "score_range": (0.0, 1.7)})):
        metric = AnomalyMetrics(**kwargs)
        metric.update(torch.as_tensor(maps), torch.as_tensor(masks), torch.as_tensor(scores), torch.as_tensor(labels),
                      names, torch.as_tensor(ids), flags)
        single[mode] = metric.compute()
        assert set(single[mode]["not_available"]) == ({"cable"} if unmasked else set())
    for rank in range(2):  # compared as JSON text: NaN (not available) equals NaN there
        assert json.dumps(torch.load(tmp_path / f"rank{rank}.pt")) == json.dumps(single)
