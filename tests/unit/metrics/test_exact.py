import numpy as np
import pytest
import torch

from anomaly_diff.metrics import exact
from anomaly_diff.metrics.exact import exact_threshold_counts, ordered_keys


def test_ordered_keys_keep_order_and_ties_of_floats():
    values = torch.tensor([-np.inf, -3.5e38, -1.0, -1e-40, -0.0, 0.0, 1e-45, 0.5, 0.5, 1.0, 3e38, np.inf])
    keys = ordered_keys(values)
    assert keys.dtype == torch.int32
    shuffled = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    for i in shuffled.tolist():
        for j in range(len(values)):
            assert (values[i] < values[j]) == (keys[i] < keys[j])
            assert (values[i] == values[j]) == (keys[i] == keys[j])


def brute_force_counts(scores, codes, weights):
    distinct = np.unique(scores)[::-1]
    positives = np.array([((scores == v) & (codes > 0)).sum() for v in distinct])
    negatives = np.array([((scores == v) & (codes == 0)).sum() for v in distinct])
    overlaps = np.array([weights[codes[scores == v]].sum() for v in distinct])
    return positives, negatives, overlaps


def concatenated(segments):
    segments = list(segments)
    return tuple(torch.cat([getattr(s, f) for s in segments]).numpy() for f in ("positives", "negatives", "overlaps"))


@pytest.mark.parametrize("chunk_size", [1 << 22, 50, 7, 1])
@pytest.mark.parametrize("distribution", ["spread", "ties", "constant"])
def test_chunked_counts_equal_brute_force(chunk_size, distribution):
    rng = np.random.default_rng(1)
    n = 400
    scores = {
        "spread": rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n),
        "ties": np.round(rng.normal(size=n), 1),
        "constant": np.full(n, -2.5),
    }[distribution].astype(np.float32)
    codes = rng.integers(0, 4, n).astype(np.int32) * (rng.random(n) < 0.4)
    weights = np.array([0.0, 0.5, 0.25, 1 / 3])
    expected = brute_force_counts(scores, codes, weights)
    segments = exact_threshold_counts(
        ordered_keys(torch.from_numpy(scores)), torch.from_numpy(codes), torch.from_numpy(weights), chunk_size
    )
    actual = concatenated(segments)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-12)


def test_chunks_are_planned_from_the_top_and_cover_every_key():
    keys = ordered_keys(torch.tensor([5.0] * 10 + [1.0, 2.0, 3.0, -1.0]))
    chunks = list(exact._plan_chunks(keys, scan=1 << 20, chunk_size=3))
    assert chunks[0][2] is True  # the ten 5.0 share one coarse bin and exceed the chunk size
    assert [oversized for _, _, oversized in chunks[1:]] == [False] * (len(chunks) - 1)
    lows = [low for low, _, _ in chunks]
    assert lows == sorted(lows, reverse=True)
    covered = sum(int(((keys >= low) & (keys <= high)).sum()) for low, high, _ in chunks)
    assert covered == len(keys)


def test_counts_without_overlaps_and_invalid_chunk_size():
    segments = list(exact_threshold_counts(ordered_keys(torch.tensor([0.1, 0.3, 0.3])), torch.tensor([0, 1, 0])))
    assert segments[0].overlaps is None
    assert segments[0].positives.tolist() == [1, 0] and segments[0].negatives.tolist() == [1, 1]
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        list(exact_threshold_counts(ordered_keys(torch.tensor([0.1])), torch.tensor([0]), chunk_size=0))
