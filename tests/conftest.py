"""Settings of every test process."""

import os

import torch

# pytest-xdist workers (`make test`) share the cores: each worker, and every process it starts, gets an equal share
# instead of one thread per core each, which would oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no
    _THREADS = max(1, _CORES // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(items: list) -> None:
    """Run the files that hold slow tests first (in collection order otherwise).

    ``make test`` hands out whole files to its workers in this order; a long file handed out last would keep one
    worker busy while the others idle (longest-first scheduling).
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within a file is kept
