import torch

from anomaly_diff.models.components.sample_cache import SampleCache


def test_only_unseen_keys_are_computed_and_rows_come_back_in_key_order():
    cache = SampleCache()
    seen = []

    def compute(rows):
        seen.append(rows.clone())
        return rows * 10

    first = cache(["a", "b"], torch.tensor([[1.0], [2.0]]), compute)
    second = cache(["c", "a", "b"], torch.tensor([[3.0], [99.0], [99.0]]), compute)
    torch.testing.assert_close(first, torch.tensor([[10.0], [20.0]]))
    # "a" and "b" come from the cache (not from the new, different inputs)
    torch.testing.assert_close(second, torch.tensor([[30.0], [10.0], [20.0]]))
    assert [rows.tolist() for rows in seen] == [[[1.0], [2.0]], [[3.0]]]
    assert len(cache) == 3
