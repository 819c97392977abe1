"""Slow, independent reference computations the metric tests compare against (sklearn, skimage, plain loops)."""

import numpy as np
from skimage.measure import label
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over sklearn's precision-recall curve."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


def curve_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AP and F1max of flat labels and scores with sklearn."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    return {
        "AUROC": float(roc_auc_score(labels, scores)),
        "AUPRC": float(average_precision_score(labels, scores)),
        "F1max": f1_max(labels, scores),
    }


def slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """AUPRO by thresholding at every distinct map value, labelling regions with skimage (8-connectivity).

    Args:
        maps: ``(N, H, W)`` anomaly maps.
        masks: ``(N, H, W)`` ground truth in {0, 1}.
        limit: FPR integration limit.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks) > 0
    regions = []
    for image_index, mask in enumerate(masks):
        labelled = label(mask, connectivity=2)
        regions += [(image_index, labelled == r) for r in range(1, labelled.max() + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted[i][region].mean() for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    beyond = np.nonzero(fprs > limit)[0]
    if len(beyond):
        j = beyond[0]
        pro_at_limit = pros[j - 1] + (pros[j] - pros[j - 1]) * (limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
        fprs = np.append(fprs[:j], limit)
        pros = np.append(pros[:j], pro_at_limit)
    return float(np.trapezoid(pros, fprs) / limit)


def reference_results(maps, masks, scores, labels, categories, limit: float = 0.3) -> dict:
    """The full result dict of AnomalyMetrics, computed per category with the references above."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks)
    scores, labels, categories = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(categories)
    per_category = {}
    for name in sorted(set(categories.tolist())):
        chosen = categories == name
        image = curve_metrics(labels[chosen], scores[chosen])
        pixel = curve_metrics(masks[chosen].ravel(), maps[chosen].ravel())
        per_category[name] = {f"image_{k}": v for k, v in image.items()} | {f"pixel_{k}": v for k, v in pixel.items()}
        per_category[name]["pixel_AUPRO"] = slow_aupro(maps[chosen], masks[chosen], limit)
    names = list(next(iter(per_category.values())))
    mean = {k: float(np.mean([v[k] for v in per_category.values()])) for k in names}
    return {"mean": mean, "per_category": per_category}


def random_case(seed: int, categories=("bottle", "cable"), per_category=6, size=12, ties=False):
    """Random maps with blob-shaped defects, scores and labels of a few categories (numpy arrays)."""
    rng = np.random.default_rng(seed)
    n = per_category * len(categories)
    labels = np.tile(np.arange(per_category) % 2, len(categories))
    masks = np.zeros((n, size, size), dtype=np.float32)
    for i in np.nonzero(labels)[0]:
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = rng.random((n, size, size)).astype(np.float32) + 0.7 * masks * rng.random((n, size, size))
    if ties:
        maps = np.round(maps * 8) / 8
    scores = maps.reshape(n, -1).max(1) + 0.3 * rng.random(n).astype(np.float32) * labels
    if ties:
        scores = np.round(scores * 4) / 4
    names = [c for c in categories for _ in range(per_category)]
    return maps.astype(np.float32), masks, scores.astype(np.float32), labels, names


def split_counts(scores, labels, weights=None, pieces=3, seed=0):
    """Per-distinct-threshold counts (highest first) computed with numpy, cut into ``pieces`` random segments.

    Returns a list of ``ThresholdCounts``; ``weights`` (per sample) become the overlaps when given.
    """
    import torch

    from anomaly_diff.metrics.curve import ThresholdCounts

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    distinct, inverse = np.unique(-scores, return_inverse=True)
    positives = np.bincount(inverse, weights=labels > 0, minlength=len(distinct)).astype(np.int64)
    negatives = np.bincount(inverse, weights=labels == 0, minlength=len(distinct)).astype(np.int64)
    overlaps = None if weights is None else np.bincount(inverse, weights=weights, minlength=len(distinct))
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(distinct)), pieces - 1, replace=False))
    segments = []
    for part in np.split(np.arange(len(distinct)), cuts):
        segments.append(
            ThresholdCounts(
                positives=torch.from_numpy(positives[part]),
                negatives=torch.from_numpy(negatives[part]),
                overlaps=None if overlaps is None else torch.from_numpy(overlaps[part]),
            )
        )
    return segments
