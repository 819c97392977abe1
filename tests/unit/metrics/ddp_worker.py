"""Process body of the 2-process DDP test: each rank updates its share of the samples, as a distributed sampler
would hand them out (padded with a repeated sample), then computes and saves the result."""

import torch
import torch.distributed as dist

from anomaly_diff.metrics import AnomalyMetrics


def distributed_sampler_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """The indices torch's DistributedSampler(shuffle=False) gives a rank: padded with the first ones, strided."""
    total = -(-num_samples // world_size) * world_size
    indices = list(range(num_samples))
    indices += indices[: total - num_samples]
    return indices[rank:total:world_size]


def worker(rank: int, world_size: int, port: int, case: tuple, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a small shared machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        maps, masks, scores, labels, names, *rest = case
        has_masks = rest[0] if rest else None  # (N,) bool, or None: every mask is the ground truth
        mine = distributed_sampler_indices(len(labels), rank, world_size)
        results = {}
        for mode, kwargs in (("exact", {"chunk_size": 300}), ("binned", {"num_bins": 64, "score_range": (0.0, 1.7)})):
            metric = AnomalyMetrics(**kwargs)
            for start in range(0, len(mine), 2):
                batch = mine[start : start + 2]
                metric.update(
                    torch.as_tensor(maps[batch]),
                    torch.as_tensor(masks[batch]),
                    torch.as_tensor(scores[batch]),
                    torch.as_tensor(labels[batch]),
                    [names[i] for i in batch],
                    torch.tensor(batch),
                    None if has_masks is None else torch.as_tensor(has_masks[batch]),
                )
            results[mode] = metric.compute()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
