"""Image and pixel AUROC / AUPRC / F1max and pixel AUPRO per category, as one torchmetrics ``Metric``.

What torchmetrics gives here: the ``Metric`` base (list states gathered across processes under DDP, ``reset``,
device moves). What is written by hand, and why:

- The curves. torchmetrics 1.9's functional ``binary_auroc`` / ``binary_average_precision`` apply a sigmoid to
  scores outside ``[0, 1]``; in float32 the sigmoid saturates, so large unnormalised scores become ties
  (``binary_auroc(tensor([20., 30., .5]), tensor([0, 1, 0]))`` is 0.75, not 1.0). Each of them also sorts the
  scores again; here one sort per category serves AUROC, AP, F1max and AUPRO (:mod:`.curve`), and the sort is done
  in bounded chunks (:mod:`.exact`).
- F1max and AUPRO, which torchmetrics does not have (:mod:`.f1_max`, :mod:`.aupro`).
- The binned mode (:mod:`.binned`), because torchmetrics' binned update is ``O(N T)`` for large inputs.

Categories are free strings; every process maps them to the same 64-bit key (a BLAKE2b digest), so states sync
without an agreed category list.
"""

import hashlib
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence

import torch
from rich.progress import track
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from anomaly_diff.errors import ConfigError, InvalidSampleError
from anomaly_diff.metrics.aupro import AUPROAccumulator
from anomaly_diff.metrics.auroc import AUROCAccumulator
from anomaly_diff.metrics.average_precision import AveragePrecisionAccumulator
from anomaly_diff.metrics.binned import binned_threshold_counts, image_histograms
from anomaly_diff.metrics.curve import ThresholdCounts, sweep
from anomaly_diff.metrics.exact import exact_threshold_counts, floats_to_keys_, ordered_keys
from anomaly_diff.metrics.f1_max import F1MaxAccumulator
from anomaly_diff.metrics.regions import label_regions, overlap_weights

IMAGE_METRICS = ("image_AUROC", "image_AUPRC", "image_F1max")
PIXEL_METRICS = ("pixel_AUROC", "pixel_AUPRC", "pixel_F1max", "pixel_AUPRO")
METRIC_NAMES = IMAGE_METRICS + PIXEL_METRICS


_NON_FINITE_HINT = (
    "the model computed them (check its checkpoint for a diverged training, or run with --trainer.precision=32-true)"
)


def category_key(name: str) -> int:
    """The signed 64-bit key of a category name, the same in every process."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class AnomalyMetrics(Metric):
    """Multi-class anomaly detection metrics: each metric per category and their unweighted mean.

    Image metrics rank the image scores against the image labels; pixel metrics rank the map values of all
    pixels of a category against the masks. AUROC is the trapezoidal area under the ROC curve; AUPRC is average
    precision, the step sum ``sum_k (R_k - R_{k-1}) P_k`` of sklearn's ``average_precision_score`` (not a
    trapezoid); F1max is the best F1 over all thresholds; AUPRO is the per-region overlap (regions: 8-connected
    components of each mask, per image) integrated over FPR in ``[0, aupro_fpr_limit]`` and divided by the limit.
    The exact mode uses every distinct score as a threshold. Scores are compared as float32.

    A metric a category cannot define (image metrics without both normal and anomalous images, pixel metrics
    without both normal and anomalous pixels) is NaN, reported in one warning and left out of the mean.

    Pixel metrics are **not available** (NaN, listed under ``not_available``, left out of the pixel means) for a
    category with any image whose ground truth is not known (``has_masks`` False), whose all-zero mask would count
    the defect's pixels as normal (README, "Data without masks").

    Memory: exact mode keeps 5 bytes per pixel (float32 map, uint8 mask) and sorts in chunks
    (:mod:`anomaly_diff.metrics.exact`); binned mode ``16 * num_bins`` bytes per image
    (:mod:`anomaly_diff.metrics.binned` for its error). Measurements: ``experiments/results/bench_metrics.md``.

    Args:
        num_bins: ``None`` for exact pixel metrics; an integer ``>= 2`` for pixel metrics over that many equal
            score bins spanning ``score_range``. Image metrics are always exact. Defaults to None.
        score_range: ``(low, high)`` of the bins in binned mode; pixel scores outside it are clamped into the end
            bins (with a warning). Defaults to ``(0.0, 1.0)``.
        aupro_fpr_limit: The FPR up to which the PRO curve is integrated. Defaults to 0.3.
        chunk_size: The most scores sorted at once in exact mode. Defaults to ``2**22``.
        **kwargs: Passed to ``torchmetrics.Metric`` (e.g. ``process_group``).

    Example:
        >>> metrics = AnomalyMetrics()
        >>> metrics.update(torch.rand(2, 8, 8), torch.zeros(2, 8, 8), torch.rand(2), torch.tensor([0, 1]), ["a", "a"])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_bins: int | None = None,
        score_range: tuple[float, float] = (0.0, 1.0),
        aupro_fpr_limit: float = 0.3,
        chunk_size: int = 1 << 22,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_bins is not None and num_bins < 2:
            raise ConfigError(f"num_bins must be None (exact) or >= 2, got {num_bins}")
        low, high = score_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"score_range must be finite (low, high) with low < high, got {score_range}")
        if not 0.0 < aupro_fpr_limit <= 1.0:
            raise ConfigError(f"aupro_fpr_limit must be in (0, 1], got {aupro_fpr_limit}")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_bins = num_bins
        self.score_range = (float(low), float(high))
        self.aupro_fpr_limit = aupro_fpr_limit
        self.chunk_size = chunk_size
        self.show_progress = False  # a rich progress bar over the categories in compute(); the Evaluator sets it
        per_sample = ["category_keys", "sample_ids", "image_scores", "image_labels", "category_names", "has_masks"]
        if num_bins is None:
            per_sample += ["map_sizes", "maps", "masks"]
        else:
            per_sample += ["histograms", "overlap_histograms", "region_counts", "clamped_pixels"]
        for name in per_sample:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        anomaly_maps: Tensor,
        masks: Tensor,
        image_scores: Tensor,
        image_labels: Tensor,
        categories: Sequence[str],
        sample_ids: Tensor | None = None,
        has_masks: Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            anomaly_maps: ``(B, H, W)`` float anomaly maps, higher is more anomalous.
            masks: ``(B, H, W)`` ground truth in ``{0, 1}``, the size of the maps.
            image_scores: ``(B,)`` float image scores.
            image_labels: ``(B,)`` labels in ``{0, 1}``; an image labelled 0 must have an empty mask.
            categories: ``B`` category names.
            sample_ids: ``(B,)`` int64 ids ``>= 0`` unique per sample (the batch's ``index``). A sample seen
                again with the same id (the padding of a distributed sampler) is counted once. Give them in
                every update or in none.
            has_masks: ``(B,)`` bool, whether each sample's mask is its ground truth (the batch's ``has_mask``);
                ``None``: all are. A category with any sample without one gets no pixel metrics (not available).

        Raises:
            InvalidSampleError: A sample is invalid (non-finite values, mask or label outside ``{0, 1}``, a normal
                label with anomalous pixels, a map of another size than its mask); ``index`` says which.
            ValueError: The batch's parts disagree in length or have the wrong number of dimensions.
        """
        batch = _validate(anomaly_maps, masks, image_scores, image_labels, categories, sample_ids, has_masks)
        device = self.device
        if sample_ids is None:
            sample_ids = torch.full((batch,), -1, dtype=torch.int64)
        if has_masks is None:
            has_masks = torch.ones(batch, dtype=torch.bool)
        self.has_masks.append(has_masks.detach().to(device=device, dtype=torch.uint8, copy=True))
        names = b"".join(name.encode("utf-8") + b"\0" for name in sorted(set(categories)))
        self.category_names.append(torch.tensor(list(names), dtype=torch.uint8, device=device))
        self.category_keys.append(torch.tensor([category_key(c) for c in categories], device=device))
        self.sample_ids.append(sample_ids.detach().to(device=device, dtype=torch.int64, copy=True))
        self.image_scores.append(image_scores.detach().to(device=device, dtype=torch.float32, copy=True))
        self.image_labels.append(image_labels.detach().to(device=device, dtype=torch.int64, copy=True))
        anomaly_maps = anomaly_maps.detach().to(device=device, dtype=torch.float32)
        masks = (masks.detach() > 0).to(device=device, dtype=torch.uint8)
        if self.num_bins is None:
            self.map_sizes.append(torch.tensor([anomaly_maps.shape[1:]] * batch, device=device))
            self.maps.append(anomaly_maps.reshape(-1).clone())
            self.masks.append(masks.reshape(-1).clone())
        else:
            counts, overlaps, regions, clamped = image_histograms(anomaly_maps, masks, self.num_bins, self.score_range)
            self.histograms.append(counts)
            self.overlap_histograms.append(overlaps)
            self.region_counts.append(regions)
            self.clamped_pixels.append(clamped)

    def compute(self) -> dict[str, dict]:
        """Compute every metric per category and their means.

        Returns:
            ``{"mean": {metric: value}, "per_category": {category: {metric: value}}, "not_available": {category:
            {"metrics": [metric, ...], "reason": str}}, "categories_in_mean": {metric: count}}`` with the metrics
            of :data:`METRIC_NAMES`, values in ``[0, 1]`` or NaN where undefined or not available; categories
            sorted by name. ``not_available`` lists the categories whose pixel metrics are not available (images
            without ground-truth mask), ``categories_in_mean`` how many categories each mean is over.

        Raises:
            ValueError: No sample was added, or sample ids were given in some updates only, or one id was given
                to samples that differ.
        """
        keys = _cat(self.category_keys, torch.int64)
        if keys.numel() == 0:
            raise ValueError("AnomalyMetrics.compute() has no samples: call update() with at least one batch first")
        names = _decode_names(_cat(self.category_names, torch.uint8))
        selected = self._unique_samples(keys)
        scores, labels = _cat(self.image_scores, torch.float32), _cat(self.image_labels, torch.int64)
        pixels = self._exact_pixels() if self.num_bins is None else self._binned_pixels()
        known = _cat(self.has_masks, torch.uint8).bool()
        per_category, undefined, not_available = {}, [], {}
        ordered = sorted(names, key=names.get)
        description = "Computing metrics per category"
        for key in track(ordered, description=description, transient=True, disable=not self.show_progress):
            samples = selected[keys[selected] == key]
            if samples.numel() == 0:
                continue
            reason = _missing_masks(known[samples], labels[samples])
            if reason:
                not_available[names[key]] = {"metrics": list(PIXEL_METRICS), "reason": reason}
            values, reasons = self._category_metrics(
                scores[samples], labels[samples], None if reason else pixels(samples)
            )
            per_category[names[key]] = values
            if reasons:
                undefined.append(f"{names[key]} ({'; '.join(reasons)})")
        if undefined:
            rank_zero_warn(
                "AnomalyMetrics: some metrics are undefined (NaN, left out of the mean) for "
                + ", ".join(undefined),
                UserWarning,
            )
        if not_available:
            with_masks = len(per_category) - len(not_available)
            rank_zero_warn(
                "AnomalyMetrics: pixel metrics are not available (reported as null / n/a, left out of the mean, "
                f"which is over the {with_masks} of {len(per_category)} categories with masks) for "
                + ", ".join(f"{name} ({entry['reason']})" for name, entry in not_available.items()),
                UserWarning,
            )
        self._warn_clamped(selected)
        mean, counts = {}, {}
        for metric in METRIC_NAMES:
            defined = [v[metric] for v in per_category.values() if not math.isnan(v[metric])]
            mean[metric] = sum(defined) / len(defined) if defined else math.nan
            counts[metric] = len(defined)
        return {
            "mean": mean, "per_category": per_category, "not_available": not_available, "categories_in_mean": counts
        }

    def _unique_samples(self, keys: Tensor) -> Tensor:
        """Indices of the samples to count: all of them without ids; else one per id, in increasing id order."""
        ids = _cat(self.sample_ids, torch.int64)
        if bool((ids < 0).all()):
            return torch.arange(ids.numel(), device=ids.device)
        if bool((ids < 0).any()):
            raise ValueError("sample_ids were given in some AnomalyMetrics.update() calls and not in others")
        order = torch.argsort(ids, stable=True)
        sorted_ids = ids[order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        kept = order[first]
        representative = kept[first.cumsum(0) - 1]
        labels, sizes = _cat(self.image_labels, torch.int64), self._sample_sizes()
        differs = (
            (keys[order] != keys[representative])
            | (labels[order] != labels[representative])
            | (sizes[order] != sizes[representative])
        )
        if bool(differs.any()):
            bad = int(sorted_ids[differs.nonzero()[0, 0]])
            raise ValueError(
                f"sample id {bad} was given to two samples with different categories, labels or map sizes: "
                "sample_ids must identify a sample (the batch's `index`), unique across all test dataloaders"
            )
        return kept

    def _sample_sizes(self) -> Tensor:
        """``(S,)`` the number of pixels of each sample (map size in exact mode, histogram total in binned mode)."""
        if self.num_bins is None:
            return _cat(self.map_sizes, torch.int64).reshape(-1, 2).prod(1)
        return _cat(self.histograms, torch.int32).reshape(-1, 2 * self.num_bins).long().sum(1)

    def _category_metrics(
        self,
        scores: Tensor,
        labels: Tensor,
        pixels: tuple[Iterable[ThresholdCounts], int, int, int] | None,
    ) -> tuple[dict[str, float], list[str]]:
        """The metrics of one category and the reasons any of them is undefined.

        Args:
            scores: ``(S,)`` the category's image scores.
            labels: ``(S,)`` its image labels.
            pixels: The threshold counts of its pixels, its numbers of anomalous and normal pixels and of
                ground-truth regions; ``None`` when its pixel metrics are not available (NaN, no reason given here).
        """
        anomalous = int(labels.sum())
        values, reasons = {}, []
        if 0 < anomalous < len(labels):
            segments = exact_threshold_counts(ordered_keys(scores), labels, None, self.chunk_size)
            values.update(_curve_metrics("image", segments, anomalous, len(labels) - anomalous))
        else:
            values.update(dict.fromkeys(IMAGE_METRICS, math.nan))
            reasons.append("no anomalous test image" if anomalous == 0 else "no normal test image")
        if pixels is None:
            values.update(dict.fromkeys(PIXEL_METRICS, math.nan))
            return {name: values[name] for name in METRIC_NAMES}, reasons
        pixel_segments, positives, negatives, regions = pixels
        if positives > 0 and negatives > 0:
            values.update(_curve_metrics("pixel", pixel_segments, positives, negatives, regions, self.aupro_fpr_limit))
        else:
            values.update(dict.fromkeys(PIXEL_METRICS, math.nan))
            reasons.append("no anomalous pixel in its masks" if positives == 0 else "no normal pixel in its masks")
        return {name: values[name] for name in METRIC_NAMES}, reasons

    def _exact_pixels(self) -> Callable[[Tensor], tuple[Iterable[ThresholdCounts], int, int, int]]:
        """A function from a category's sample indices to its pixel threshold counts and totals (exact mode).

        The category's pixels are gathered as sort keys and region codes (8 bytes per pixel), labelled per image.
        """
        sizes = _cat(self.map_sizes, torch.int64).reshape(-1, 2)
        numels = sizes.prod(1)
        starts = (numels.cumsum(0) - numels).tolist()
        maps, masks = _Parts(self.maps), _Parts(self.masks)

        def pixels(samples: Tensor) -> tuple[Iterable[ThresholdCounts], int, int, int]:
            total = int(numels[samples].sum())
            values = torch.empty(total, dtype=torch.float32, device=self.device)
            codes = torch.empty(total, dtype=torch.int32, device=self.device)
            region_sizes, position, next_code = [], 0, 1
            for sample in samples.tolist():
                start, numel = starts[sample], int(numels[sample])
                values[position : position + numel] = maps.read(start, numel)
                mask = masks.read(start, numel).reshape(sizes[sample].tolist())
                codes[position : position + numel], image_regions = label_regions(mask, first_code=next_code)
                region_sizes.append(image_regions)
                next_code += len(image_regions)
                position += numel
            region_sizes = torch.cat(region_sizes)
            positives = int(region_sizes.sum())
            keys = floats_to_keys_(values)
            segments = exact_threshold_counts(keys, codes, overlap_weights(region_sizes), self.chunk_size)
            return segments, positives, total - positives, len(region_sizes)

        return pixels

    def _binned_pixels(self) -> Callable[[Tensor], tuple[Iterable[ThresholdCounts], int, int, int]]:
        """A function from a category's sample indices to its pixel threshold counts and totals (binned mode)."""
        all_counts = _cat(self.histograms, torch.int32).reshape(-1, 2, self.num_bins)
        all_overlaps = _cat(self.overlap_histograms, torch.float64).reshape(-1, self.num_bins)
        all_regions = _cat(self.region_counts, torch.int64)

        def pixels(samples: Tensor) -> tuple[Iterable[ThresholdCounts], int, int, int]:
            counts = all_counts[samples].long().sum(0)
            segments = [binned_threshold_counts(counts, all_overlaps[samples].sum(0))]
            return segments, int(counts[1].sum()), int(counts[0].sum()), int(all_regions[samples].sum())

        return pixels

    def _warn_clamped(self, samples: Tensor) -> None:
        if self.num_bins is None:
            return
        clamped = int(_cat(self.clamped_pixels, torch.int64)[samples].sum())
        if clamped:
            total = int(self._sample_sizes()[samples].sum())
            rank_zero_warn(
                f"AnomalyMetrics: {clamped} of {total} pixel scores lie outside score_range={self.score_range} and "
                "were clamped into the end bins, which makes them ties; set score_range to cover the maps",
                UserWarning,
            )


def _missing_masks(known: Tensor, labels: Tensor) -> str | None:
    """Why a category's pixel metrics are not available (some of its images have no ground-truth mask), or None."""
    unknown = int((~known).sum())
    if unknown == 0:
        return None
    if unknown == int((~known & (labels == 1)).sum()):
        return f"{unknown} of its {int((labels == 1).sum())} anomalous test images have no ground-truth mask"
    return f"{unknown} of its {known.numel()} test images have no ground-truth mask"


def _curve_metrics(
    level: str,
    segments: Iterable[ThresholdCounts],
    positives: int,
    negatives: int,
    regions: int = 0,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Run one sweep with the level's accumulators; AUPRO only when regions are counted (pixel level)."""
    accumulators = {
        f"{level}_AUROC": AUROCAccumulator(positives, negatives),
        f"{level}_AUPRC": AveragePrecisionAccumulator(positives),
        f"{level}_F1max": F1MaxAccumulator(positives),
    }
    if regions:
        accumulators[f"{level}_AUPRO"] = AUPROAccumulator(negatives, regions, fpr_limit)
    sweep(segments, list(accumulators.values()))
    return {name: accumulator.compute() for name, accumulator in accumulators.items()}


def _validate(
    anomaly_maps: Tensor,
    masks: Tensor,
    image_scores: Tensor,
    image_labels: Tensor,
    categories: Sequence[str],
    sample_ids: Tensor | None,
    has_masks: Tensor | None = None,
) -> int:
    """Check a batch for :meth:`AnomalyMetrics.update` and return its size."""
    if anomaly_maps.ndim != 3 or not anomaly_maps.is_floating_point():
        raise ValueError(
            f"anomaly_maps must be a float (B, H, W) tensor, got {anomaly_maps.dtype} {tuple(anomaly_maps.shape)}"
        )
    batch = anomaly_maps.shape[0]
    if masks.ndim != 3 or masks.shape[0] != batch:
        raise ValueError(f"masks must be (B, H, W) with B = {batch} like anomaly_maps, got {tuple(masks.shape)}")
    if masks.shape != anomaly_maps.shape:
        raise InvalidSampleError(
            f"anomaly map size {tuple(anomaly_maps.shape[1:])} differs from the mask size {tuple(masks.shape[1:])}: "
            "the model must return maps at the resolution of the ground-truth masks",
            index=0,
        )
    sized = (("image_scores", image_scores), ("image_labels", image_labels), ("sample_ids", sample_ids),
             ("has_masks", has_masks))
    for name, value in sized:
        if value is not None and tuple(value.shape) != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) like anomaly_maps, got {tuple(value.shape)}")
    if len(categories) != batch or not all(isinstance(c, str) and c and "\0" not in c for c in categories):
        raise ValueError(f"categories must be {batch} non-empty names, got {list(categories)}")
    if sample_ids is not None and (sample_ids.is_floating_point() or bool((sample_ids < 0).any())):
        raise ValueError(f"sample_ids must be integers >= 0, got {sample_ids.tolist()}")
    if has_masks is not None and (has_masks.is_floating_point() or bool(((has_masks != 0) & (has_masks != 1)).any())):
        raise ValueError(f"has_masks must be booleans, got {has_masks.tolist()}")
    checks = (
        (~torch.isfinite(anomaly_maps).flatten(1).all(1), f"its anomaly map has NaN or Inf values; {_NON_FINITE_HINT}"),
        (~torch.isfinite(image_scores), f"its image score is not finite: {image_scores.tolist()}; {_NON_FINITE_HINT}"),
        (((masks != 0) & (masks != 1)).flatten(1).any(1), "its mask has values other than 0 and 1"),
        ((image_labels != 0) & (image_labels != 1), f"its label is not 0 or 1: {image_labels.tolist()}"),
        ((image_labels == 0) & (masks != 0).flatten(1).any(1), "it is labelled normal (0) but its mask is not empty"),
    )
    for bad, reason in checks:
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise InvalidSampleError(f"sample {index} of the batch is invalid: {reason}", index)
    return batch


def _cat(state: list[Tensor] | Tensor, dtype: torch.dtype) -> Tensor:
    """A list state as one tensor (after a DDP sync it already is one)."""
    if isinstance(state, Tensor):
        return state.to(dtype)
    return torch.cat(state).to(dtype) if state else torch.zeros(0, dtype=dtype)


def _decode_names(encoded: Tensor) -> dict[int, str]:
    """``{key: name}`` from the NUL-terminated UTF-8 names of every update."""
    names = bytes(encoded.cpu().tolist()).split(b"\0")
    return {category_key(name): name for name in (n.decode("utf-8") for n in names if n)}


class _Parts:
    """A flat per-pixel state read by global offset, without concatenating its per-update parts.

    Args:
        state: The list of per-update tensors (or one tensor after a DDP sync).
    """

    def __init__(self, state: list[Tensor] | Tensor) -> None:
        self.parts = [state] if isinstance(state, Tensor) else list(state)
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + part.numel())

    def read(self, start: int, length: int) -> Tensor:
        """The ``length`` values from global offset ``start`` (a sample never spans two updates)."""
        index = bisect_right(self.starts, start) - 1
        local = start - self.starts[index]
        return self.parts[index][local : local + length]
