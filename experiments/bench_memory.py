"""Peak memory of the test and predict stages through the CLI on the embedded data at 1x and 10x its default test size.

The embedded generator writes 9 categories; its default test split is 10 normal + 20 defective images per category
(270 in all). Here it is generated at that size (``x1``) and at 10x (100 + 200 per category, 2,700 images), with 2
training images per category (neither stage reads them), into ``.cache/bench_memory/``. Images are
generated at 256 px and, as in ``configs/data/embedded.yaml``, resized to 144 and centre-cropped to 128, so each
anomaly map has 16,384 pixels (44.2 M pixels at 10x).

Each test run is ``anomaly-diff test --config configs/autoencoder/embedded.yaml`` (the reconstruction-error
baseline) with a freshly initialised, deliberately tiny autoencoder (``block_out_channels=[8, 8]``, seed 0): model
quality is irrelevant here, what is measured is what the evaluation keeps. The metrics run exact
(``evaluator.num_bins=null``, every map and mask kept until the end of the epoch) or binned
(``evaluator.num_bins=1000`` over ``score_range [0, 2]``, the range of the baseline's maps). The heat-map writer, the
CSV logger and checkpoint callback are on, as in any run. Each predict run is ``anomaly-diff predict`` with the same
config, model and data (the test split, which ``predict`` reads without ``--data.path``): the prediction writer
writes an overlay PNG per image and ``predictions.csv``.

Every run is a fresh process (``python experiments/bench_memory.py --child ...``) that calls
``anomaly_diff.cli.main``, the LightningCLI the ``anomaly-diff`` console script runs, with the evaluation callback's
hooks wrapped to record memory (nothing else changes): the resident set size (``/proc/self/statm``) at the start of
the test epoch and after every test batch, the bytes of the metric's states and of all live tensors (found by the
garbage collector) at the start of the test epoch and just before ``compute``, and the peak RSS (``getrusage``
``ru_maxrss``) before and after ``compute``. Predict runs wrap the prediction writer's hooks instead: RSS at the start
of predict and after every batch, live tensors and the memory blocks of Python's objects at the start
and just before the CSV is written, the predictions Lightning's predict loop kept, and the peak RSS before and after
the CSV. The parent starts each child with ``nice -n 5`` and reads the child's whole-process peak RSS and wall time
with ``os.wait4``.

Usage (from the repository root): ``make bench-memory`` or ``.venv/bin/python experiments/bench_memory.py``
(every row, about 20 minutes on 2 cores); ``--only predict`` runs the predict rows alone (about 4 minutes) and copies
the test rows from the existing bench_memory.json, which the results then say.
Writes experiments/results/bench_memory.json and bench_memory.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench_common import header_lines, results_header

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WORK = REPO / ".cache" / "bench_memory"
DEFAULT_GOOD, DEFAULT_DEFECTIVE, CATEGORIES = 10, 20, 5  # the embedded generator's default test split
NUM_TRAIN = 2
MAP_SIDE = 128  # crop_size of configs/data/embedded.yaml
NUM_BINS, SCORE_RANGE = 1000, (0.0, 2.0)
SCALES = (1, 10)
MODES = ("exact", "binned")
HEATMAPS_PER_KIND = 3  # heatmaps.per_category's default
PREDICT = "predict"  # the ``anomaly-diff predict`` rows (no metrics: the prediction writer's CSV and overlays)
RAM_LIMIT_GIB = 24
# What exact mode must hold per pixel: the float32 map and the uint8 mask.
EXACT_BYTES_PER_PIXEL = 4 + 1
# exact_x10 measured with this script before HeatmapWriter copied the samples it keeps (same machine, same day):
# each kept sample was a numpy view of its batch's tensors and so held the whole batch (image, map and mask).
BEFORE_HEATMAP_FIX = {
    "exact_x10": {
        "rss_test_start_bytes": 880807936,
        "rss_before_compute_bytes": 1262923776,
        "peak_rss_after_compute_bytes": 1767997440,
        "metric_state_bytes": 122946621,
    },
    "live_tensor_bytes_batches_10_to_29": {"before_fix": 99 * 2**20, "after_fix": 24 * 2**20,
                                           "metric_state_growth": 24 * 2**20},
}


# The predict rows measured with this script (``--only predict``) on the commit before the prediction writer wrote its
# rows to a file as they came (the same data, the same machine, the same day), and a separate tracemalloc check: the
# bytes Python allocated and kept between predict batches 5 and 55 (800 images) of the 10x set, per image, before
# and after the fix.
BEFORE_PREDICT_FIX = {
    "when": "commit 4a3c644, the one before this fix, on 2026-11-30: same script, data and machine",
    "predict_x1": {"images": 270, "peak_rss_bytes": 1176739840, "python_blocks_added": 2657, "writer_kept_rows": 270},
    "predict_x10": {"images": 2700, "peak_rss_bytes": 1173590016, "python_blocks_added": 21239,
                    "writer_kept_rows": 2700},
    "tracemalloc_bytes_kept_per_image": {"before_fix": 671, "of_which_writer_rows": 541, "after_fix": 100,
                                         "of_which_lightning": 37},
}


# A separate check (binned, 10x, test batches 10 to 79 = 1,104 images, glibc's malloc_trim(0) called at batch 10 and
# at batch 79 after reading RSS; not run by this script since trimming would change the peaks measured here).
ALLOCATOR_CHECK = {
    "rss_added_bytes": 116 * 2**20,
    "rss_added_after_malloc_trim_bytes": 36 * 2**20,
    "live_tensor_bytes_added": 17 * 2**20,
    "metric_state_bytes_added": 17 * 2**20,
    "python_objects_added": 939,
}


def rss_bytes() -> int:
    """The current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def data_root(scale: int) -> Path:
    return WORK / f"x{scale}"


def cli_args(scale: int, mode: str) -> list[str]:
    """The ``anomaly-diff test`` (``mode`` exact or binned) or ``anomaly-diff predict`` arguments of one run."""
    args = [
        "predict" if mode == PREDICT else "test",
        "--config", "configs/autoencoder/embedded.yaml",
        f"--data.init_args.root={data_root(scale)}",
        f"--data.init_args.num_train={NUM_TRAIN}",
        f"--data.init_args.num_test_good={DEFAULT_GOOD * scale}",
        f"--data.init_args.num_test_defective={DEFAULT_DEFECTIVE * scale}",
        "--model.init_args.block_out_channels=[8,8]",
        "--model.init_args.norm_num_groups=8",
        "--model.init_args.export_dir=null",
        f"--trainer.logger.init_args.save_dir={WORK / 'runs'}",
        f"--trainer.logger.init_args.name={mode}_x{scale}",
        "--trainer.enable_progress_bar=false",
    ]
    if mode == "binned":
        args += [f"--evaluator.num_bins={NUM_BINS}", f"--evaluator.score_range=[{SCORE_RANGE[0]},{SCORE_RANGE[1]}]"]
    return args


def state_bytes(metric) -> int:
    """Bytes held by a torchmetrics metric's list states."""
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        parts = value if isinstance(value, list) else [value]
        total += sum(part.numel() * part.element_size() for part in parts)
    return total


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of all tensors the garbage collector can see (CPU tensors here)."""
    import gc

    import torch

    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def child(scale: int, mode: str, probe_path: Path) -> None:
    """Run the CLI's test stage in this process with the evaluation callback's hooks recording memory."""
    from anomaly_diff import cli
    from anomaly_diff.callbacks.evaluation import Evaluator

    probe: dict = {"batches": []}
    original_start = Evaluator.on_test_epoch_start
    original_batch_end = Evaluator.on_test_batch_end
    original_end = Evaluator.on_test_epoch_end

    @functools.wraps(original_start)
    def on_test_epoch_start(self, trainer, pl_module):
        probe["live_tensor_bytes_test_start"] = live_tensor_bytes()
        probe["rss_test_start"] = rss_bytes()
        probe["peak_rss_before_test"] = peak_rss_bytes()
        probe["started"] = time.perf_counter()
        probe["images"] = probe["pixels"] = 0
        original_start(self, trainer, pl_module)

    @functools.wraps(original_batch_end)
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        original_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        probe["images"] += len(batch["label"])
        probe["pixels"] += outputs["anomaly_map"].numel()
        probe["batches"].append([probe["images"], rss_bytes()])

    @functools.wraps(original_end)
    def on_test_epoch_end(self, trainer, pl_module):
        probe["test_loop_s"] = time.perf_counter() - probe["started"]
        probe["live_tensor_bytes_before_compute"] = live_tensor_bytes()
        probe["metric_state_bytes"] = state_bytes(self._metrics["test"])
        probe["rss_before_compute"] = rss_bytes()
        probe["peak_rss_before_compute"] = peak_rss_bytes()
        started = time.perf_counter()
        original_end(self, trainer, pl_module)
        probe["compute_and_write_s"] = time.perf_counter() - started
        probe["peak_rss_after_compute"] = peak_rss_bytes()
        probe["rss_after_compute"] = rss_bytes()
        probe["results_mean"] = self.results["mean"]

    Evaluator.on_test_epoch_start = on_test_epoch_start
    Evaluator.on_test_batch_end = on_test_batch_end
    Evaluator.on_test_epoch_end = on_test_epoch_end
    os.chdir(REPO)
    cli.main(cli_args(scale, mode))
    probe_path.write_text(json.dumps(probe))


def python_blocks() -> int:
    """The memory blocks Python's allocator holds for objects (``sys.getallocatedblocks``), after a collection.

    Every live object counts, strings and dicts of strings too (which the garbage collector does not track).
    """
    import gc

    gc.collect()
    return sys.getallocatedblocks()


def predict_child(scale: int, probe_path: Path) -> None:
    """Run the CLI's predict stage in this process with the prediction writer's hooks recording memory."""
    from anomaly_diff import cli
    from anomaly_diff.callbacks.predictions import PredictionWriter

    probe: dict = {"batches": []}
    original_start = PredictionWriter.on_predict_start
    original_batch_end = PredictionWriter.write_on_batch_end
    original_end = PredictionWriter.on_predict_epoch_end

    @functools.wraps(original_start)
    def on_predict_start(self, trainer, pl_module):
        probe["python_blocks_predict_start"] = python_blocks()
        probe["live_tensor_bytes_predict_start"] = live_tensor_bytes()
        probe["rss_predict_start"] = rss_bytes()
        probe["peak_rss_before_predict"] = peak_rss_bytes()
        probe["started"] = time.perf_counter()
        probe["images"] = probe["pixels"] = 0
        original_start(self, trainer, pl_module)

    @functools.wraps(original_batch_end)
    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        original_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx)
        probe["images"] += len(batch["path"])
        probe["pixels"] += prediction["anomaly_map"].numel()
        probe["batches"].append([probe["images"], rss_bytes()])

    @functools.wraps(original_end)
    def on_predict_epoch_end(self, trainer, pl_module):
        probe["predict_loop_s"] = time.perf_counter() - probe["started"]
        probe["python_blocks_before_csv"] = python_blocks()
        probe["live_tensor_bytes_before_csv"] = live_tensor_bytes()
        probe["lightning_kept_predictions"] = sum(len(kept) for kept in trainer.predict_loop._predictions)
        probe["writer_kept_rows"] = len(getattr(self, "_rows", ()))  # the writer's row store before the fix
        probe["rss_before_csv"] = rss_bytes()
        probe["peak_rss_before_csv"] = peak_rss_bytes()
        started = time.perf_counter()
        original_end(self, trainer, pl_module)
        probe["csv_s"] = time.perf_counter() - started
        probe["peak_rss_after_csv"] = peak_rss_bytes()

    PredictionWriter.on_predict_start = on_predict_start
    PredictionWriter.write_on_batch_end = write_on_batch_end
    PredictionWriter.on_predict_epoch_end = on_predict_epoch_end
    os.chdir(REPO)
    cli.main(cli_args(scale, PREDICT))
    probe_path.write_text(json.dumps(probe))


def generate(scale: int) -> float:
    """Write the embedded set at ``scale`` times its default test size (skipped when already there)."""
    started = time.perf_counter()
    subprocess.run(
        [
            "nice", "-n", "5", str(Path(sys.executable).parent / "anomaly-diff-data"),
            "--output", str(data_root(scale)), "--num-train", str(NUM_TRAIN),
            "--num-test-good", str(DEFAULT_GOOD * scale), "--num-test-defective", str(DEFAULT_DEFECTIVE * scale),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def slope_bytes_per_image(batches: list[list[int]]) -> float:
    """Least-squares slope of RSS against images seen, over the second half of the test batches."""
    points = batches[len(batches) // 2 :]
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else float("nan")


def run_child(scale: int, mode: str) -> dict:
    name = f"{mode}_x{scale}"
    print(f"running {name} ...", flush=True)
    probe_path = WORK / f"probe_{name}.json"
    probe_path.unlink(missing_ok=True)
    log_path = WORK / f"{name}.log"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["nice", "-n", "5", sys.executable, __file__, "--child", mode, "--scale", str(scale),
             "--probe", str(probe_path)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {process.returncode}; see {log_path}")
    probe = json.loads(probe_path.read_text())
    batches = probe.pop("batches")
    measured = {
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # the whole child process (nice exec()s into python)
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        **probe,
        "rss_slope_bytes_per_image": slope_bytes_per_image(batches),
        "rss_per_batch": batches,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }
    if mode == PREDICT:
        measured["rss_growth_during_predict_bytes"] = batches[-1][1] - probe["rss_predict_start"]
        added = probe["python_blocks_before_csv"] - probe["python_blocks_predict_start"]
        kept = f"Python blocks added over the loop {added}"
    else:
        measured["rss_growth_during_test_bytes"] = batches[-1][1] - probe["rss_test_start"]
        kept = f"metric state {probe['metric_state_bytes'] / 2**20:.1f} MiB"
    print(f"  {name}: {wall:.0f} s, peak RSS {measured['peak_rss_bytes'] / 2**20:.0f} MiB, {kept}", flush=True)
    return measured


def analysis(runs: dict) -> dict:
    """Scaling of memory with the test-set size, per mode."""
    out = {}
    for mode in MODES:
        small, large = runs[f"{mode}_x1"], runs[f"{mode}_x10"]
        added_pixels = large["pixels"] - small["pixels"]
        added_images = large["images"] - small["images"]
        out[mode] = {
            "peak_rss_ratio_x10_vs_x1": large["peak_rss_bytes"] / small["peak_rss_bytes"],
            "state_ratio_x10_vs_x1": large["metric_state_bytes"] / small["metric_state_bytes"],
            "state_bytes_per_pixel_x10": large["metric_state_bytes"] / large["pixels"],
            "state_bytes_per_image_x10": large["metric_state_bytes"] / large["images"],
            "marginal_peak_bytes_per_pixel": (large["peak_rss_bytes"] - small["peak_rss_bytes"]) / added_pixels,
            "marginal_state_bytes_per_image": (large["metric_state_bytes"] - small["metric_state_bytes"])
            / added_images,
            "rss_growth_during_test_x10_bytes": large["rss_growth_during_test_bytes"],
            "compute_peak_over_test_start_x10_bytes": large["peak_rss_after_compute"] - large["rss_test_start"],
        }
    small, large = runs[f"{PREDICT}_x1"], runs[f"{PREDICT}_x10"]
    added_images = large["images"] - small["images"]
    out[PREDICT] = {
        "peak_rss_ratio_x10_vs_x1": large["peak_rss_bytes"] / small["peak_rss_bytes"],
        "marginal_peak_bytes_per_image": (large["peak_rss_bytes"] - small["peak_rss_bytes"]) / added_images,
        "rss_growth_during_predict_x10_bytes": large["rss_growth_during_predict_bytes"],
        **{f"python_blocks_added_over_the_loop_x{scale}": runs[f"{PREDICT}_x{scale}"]["python_blocks_before_csv"]
           - runs[f"{PREDICT}_x{scale}"]["python_blocks_predict_start"] for scale in SCALES},
        "live_tensor_bytes_added_x10": large["live_tensor_bytes_before_csv"] - large["live_tensor_bytes_predict_start"],
    }
    return out


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def predict_markdown(report: dict) -> list[str]:
    """The predict rows and what they show."""
    runs, scaling = report["runs"], report["analysis"][PREDICT]
    small, large = runs[f"{PREDICT}_x1"], runs[f"{PREDICT}_x10"]
    before = BEFORE_PREDICT_FIX
    added_images = large["images"] - small["images"]
    lines = [
        "",
        "## Predict: does memory grow with the number of images?",
        "",
        "Each run is `anomaly-diff predict` with the same config, model and arguments as the test rows (no evaluator "
        "arguments), on the test split (what `predict` reads without `--data.path`) of the data set as generated "
        f"now: {small['images'] // (DEFAULT_GOOD + DEFAULT_DEFECTIVE)} categories, {small['images']} images at 1x and "
        f"{large['images']} at 10x. The prediction writer writes an overlay PNG per image and `predictions.csv`; "
        "`return_predictions` is false (the CLI's default for predict); the model is uncalibrated (no thresholds: "
        "empty decisions, each overlay on its own map range). Peak RSS: as above. Python blocks added: the memory "
        "blocks of Python's objects (`sys.getallocatedblocks()`, after a collection) just before the CSV is written "
        "minus those at the start of predict, i.e. what the loop kept, strings and dicts included. RSS growth: RSS "
        "after the last batch minus RSS at the start of predict.",
        "",
        "| run | images | wall (s) | predict loop (s) | CSV (s) | peak RSS (MiB) | RSS at predict start (MiB) "
        "| RSS growth over the batches (MiB) | Python blocks added over the loop | live tensors added (MiB) "
        "| predictions kept by Lightning | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in (f"{PREDICT}_x{scale}" for scale in SCALES):
        m = runs[name]
        lines.append(
            f"| {name} | {m['images']} | {m['wall_s']:.0f} | {m['predict_loop_s']:.0f} | {m['csv_s']:.2f} "
            f"| {mib(m['peak_rss_bytes'])} | {mib(m['rss_predict_start'])} "
            f"| {mib(m['rss_growth_during_predict_bytes'])} "
            f"| {m['python_blocks_before_csv'] - m['python_blocks_predict_start']} "
            f"| {mib(m['live_tensor_bytes_before_csv'] - m['live_tensor_bytes_predict_start'])} "
            f"| {m['lightning_kept_predictions']} | "
            + " / ".join(f"{v:.1f}" for v in m["load_average_1min"])
            + " |"
        )
    blocks = {scale: scaling[f"python_blocks_added_over_the_loop_x{scale}"] for scale in SCALES}
    lines += [
        "",
        f"- **Peak RSS x10 / x1: {scaling['peak_rss_ratio_x10_vs_x1']:.3f}** ({mib(small['peak_rss_bytes'])} MiB for "
        f"{small['images']} images, {mib(large['peak_rss_bytes'])} MiB for {large['images']}); the target is at most "
        f"1.05. Python blocks added over the loop: {blocks[1]} at 1x, {blocks[10]} at 10x, i.e. "
        f"{(blocks[10] - blocks[1]) / added_images:.1f} per added image. Live tensors added over the 10x loop: "
        f"{mib(scaling['live_tensor_bytes_added_x10'])} MiB; predictions kept by Lightning's predict loop: "
        f"{large['lightning_kept_predictions']}. RSS rises by about {mib(small['rss_growth_during_predict_bytes'])} "
        f"MiB over the batches at 1x and {mib(large['rss_growth_during_predict_bytes'])} MiB at 10x: a warm-up of "
        "the first batches (allocator, libraries), the same at both sizes; over the second half of the 10x batches "
        f"the slope is {large['rss_slope_bytes_per_image'] / 1024:.1f} KiB per image.",
    ]
    if before:
        b1, b10 = before["predict_x1"], before["predict_x10"]
        traced = before["tracemalloc_bytes_kept_per_image"]
        lines += [
            f"- **Before the fix** ({before['when']}): peak RSS {mib(b1['peak_rss_bytes'])} MiB at 1x and "
            f"{mib(b10['peak_rss_bytes'])} MiB at 10x, ratio {b10['peak_rss_bytes'] / b1['peak_rss_bytes']:.3f}: "
            "already flat. Python blocks added over the loop: "
            f"{b1['python_blocks_added']} and {b10['python_blocks_added']}, i.e. "
            f"{(b10['python_blocks_added'] - b1['python_blocks_added']) / added_images:.1f} per added image; the "
            f"writer held {b10['writer_kept_rows']} rows at 10x.",
            "- **What was kept per image**: the prediction writer kept every CSV row (a dict of 7 strings, keyed by "
            "dataloader and image index) until the end of predict, to sort them by path; measured with tracemalloc "
            f"over 800 images of the 10x set, the predict loop kept {traced['before_fix']} bytes per image, "
            f"{traced['of_which_writer_rows']} of them the rows. **Fix** "
            "(`anomaly_diff/callbacks/predictions.py`, `PredictionWriter`): each row goes to an unnamed temporary "
            "file in the run directory as its batch ends, and the CSV is copied from it row by row when the images "
            "came in path order (a folder given with `--data.path`; this test split too); otherwise, and under DDP, "
            "the rows are read back and sorted at the end, as before. Same CSV, byte for byte. After the fix the "
            f"loop keeps {traced['after_fix']} bytes per image over the same images, {traced['of_which_lightning']} "
            "of them Lightning's: in predict it always wraps the batch sampler "
            "(`_IndexBatchSamplerWrapper.seen_batch_indices`, one list of indices per batch, kept until the next "
            "epoch) and indexes that list by batch, so it cannot be emptied from a callback; about 40 MB per "
            "million images, left as is.",
            "- The issue's figure (about 0.28 MB more per image, 600 against 100 images at 128 px) is not reproduced "
            "here: the rows were about 0.5 KB per image, and the peak RSS of these runs varies by a few percent from "
            "run to run (before the fix the 1x run peaked above the 10x one). Growth of that order per image does "
            "happen with `--return_predictions=true`, when Lightning keeps every step output on the CPU (computed "
            "from the output sizes, not measured: 64 KiB per image at 128 px, the map every model's `predict_step` "
            "returns); the CLI sets it to false unless asked.",
        ]
    return lines


def markdown(report: dict) -> str:
    runs, scaling = report["runs"], report["analysis"]
    exact, binned = scaling["exact"], scaling["binned"]
    x10 = runs["exact_x10"]
    bx10 = runs["binned_x10"]
    before = BEFORE_HEATMAP_FIX["exact_x10"]
    categories = runs["exact_x1"]["images"] // (DEFAULT_GOOD + DEFAULT_DEFECTIVE)
    kept_samples = HEATMAPS_PER_KIND * report.get("test_folders", 25)  # 25: 5 categories x 5 folders before
    lines = [
        "# Peak memory of the test and predict stages at 1x and 10x the embedded test set",
        "",
        *header_lines(report)[:-1],
        header_lines(report)[-1] + "  ",
        *([f"Test rows (exact, binned): copied from the previous run of this script ({reused['command']}, written "
           f"{reused['written']}); only the predict rows were run by the command above."]
          if (reused := report.get("test_rows_from")) else []),
        "",
        f"Data: the embedded generator's {categories} categories, test split {DEFAULT_GOOD} + {DEFAULT_DEFECTIVE} "
        f"images per category at 1x ({runs['exact_x1']['images']} images) and 10x ({x10['images']} images, "
        f"{x10['pixels'] / 1e6:.1f} M map pixels), {MAP_SIDE} x {MAP_SIDE} maps (the embedded config's crop), "
        f"{NUM_TRAIN} training images per category (unused by `test`), in `.cache/bench_memory/`. Generating them "
        "(or finding them already there, as in this run when a set takes a few seconds) took "
        + ", ".join(f"{s:.0f} s at {k}" for k, s in report["generation_s"].items())
        + "; about 25 s at 10x when generated (not in the run times).",
        "Model: `configs/autoencoder/embedded.yaml` with a freshly initialised tiny autoencoder "
        "(`block_out_channels=[8,8]`, seed 0); its metrics are those of an untrained model and beside the point. "
        f"Binned: `--evaluator.num_bins={NUM_BINS} --evaluator.score_range=[{SCORE_RANGE[0]},{SCORE_RANGE[1]}]`.",
        "Each run is a fresh process through `anomaly_diff.cli.main` (see the script's docstring). Peak RSS: the "
        "whole process (`os.wait4` ru_maxrss, includes Python, torch, Lightning, the model and the data loader). "
        "Metric state: the bytes of the metric's tensors just before `compute`. Live tensors added: the bytes of all "
        "tensors alive just before `compute` minus those at the start of the test epoch. RSS growth: RSS after the "
        "last test batch minus RSS at the start of the test epoch. Compute peak: peak RSS after `compute` minus RSS "
        "at the start of the test epoch.",
        "",
        "| run | images | wall (s) | test loop (s) | compute + write (s) | peak RSS (MiB) | RSS at test start (MiB) "
        "| metric state (MiB) | state bytes / pixel | live tensors added (MiB) | RSS growth over the batches (MiB) "
        "| compute peak over test "
        "start (MiB) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in runs.items():
        if name.startswith(PREDICT):
            continue
        lines.append(
            f"| {name} | {m['images']} | {m['wall_s']:.0f} | {m['test_loop_s']:.0f} | {m['compute_and_write_s']:.1f} "
            f"| {mib(m['peak_rss_bytes'])} | {mib(m['rss_test_start'])} | {m['metric_state_bytes'] / 2**20:.1f} "
            f"| {m['metric_state_bytes'] / m['pixels']:.2f} "
            f"| {mib(m['live_tensor_bytes_before_compute'] - m['live_tensor_bytes_test_start'])} "
            f"| {mib(m['rss_growth_during_test_bytes'])} "
            f"| {mib(m['peak_rss_after_compute'] - m['rss_test_start'])} | "
            + " / ".join(f"{v:.1f}" for v in m["load_average_1min"])
            + " |"
        )
    lines += [
        "",
        "## Does memory grow with the test-set size?",
        "",
        f"- **Exact** keeps every map and mask: its state is {exact['state_bytes_per_pixel_x10']:.3f} bytes per "
        f"pixel at 10x against the theoretical {EXACT_BYTES_PER_PIXEL} (float32 map + uint8 mask; the rest are the "
        f"per-image scores, labels, ids and sizes), so it grows linearly: {exact['state_ratio_x10_vs_x1']:.1f}x "
        f"state for 10x images. The whole-process peak grows {exact['peak_rss_ratio_x10_vs_x1']:.2f}x "
        f"({exact['marginal_peak_bytes_per_pixel']:.1f} bytes per added pixel): the held state plus, during "
        "`compute`, one category's pixels as sort keys and region codes (8 bytes per pixel) and the chunked sort "
        "(at most about 80 bytes x `chunk_size` = 2**22, i.e. ~340 MB, whatever the set size), which the 1x "
        "categories (0.5 M pixels each) do not reach.",
        f"- **Binned** keeps per-image histograms (2 x {NUM_BINS} int32 counts and {NUM_BINS} float64 overlaps = "
        f"{binned['state_bytes_per_image_x10'] / 1024:.1f} KiB per image, whatever the image size) so its state "
        f"also grows linearly with the number of images ({binned['state_ratio_x10_vs_x1']:.1f}x), but it is "
        f"{exact['state_bytes_per_image_x10'] / binned['state_bytes_per_image_x10']:.1f}x smaller than exact at "
        f"{MAP_SIDE} px ({(MAP_SIDE**2 * EXACT_BYTES_PER_PIXEL) / 1024:.0f} KiB per image) and would be about "
        f"{(256**2 * EXACT_BYTES_PER_PIXEL) / binned['state_bytes_per_image_x10']:.0f}x smaller at 256 px; its "
        f"whole-process peak is nearly flat ({binned['peak_rss_ratio_x10_vs_x1']:.2f}x).",
        "- Nothing else accumulates: the live tensors (the distinct storages of every tensor the garbage collector "
        "sees) grow over the 10x test by "
        f"{mib(x10['live_tensor_bytes_before_compute'] - x10['live_tensor_bytes_test_start'])} MiB in exact mode "
        f"(state {mib(x10['metric_state_bytes'])} MiB) and "
        f"{mib(bx10['live_tensor_bytes_before_compute'] - bx10['live_tensor_bytes_test_start'])} MiB in binned mode "
        f"(state {mib(bx10['metric_state_bytes'])} MiB), i.e. the state plus the heat-map writer's copies (at most "
        f"{kept_samples} x {MAP_SIDE**2 * 5 * 4 / 2**20:.2f} MiB). The writer keeps at most `heatmaps.per_category` "
        "(3) images per category and defect type (copies, see below), Lightning's test loop keeps no step outputs, "
        "and the metric's states are freed after `compute` (`Evaluator._finish` resets them). The rest of the RSS "
        f"growth (slope over the second half of the 10x batches: {x10['rss_slope_bytes_per_image'] / 1024:.0f} KiB "
        f"per image in exact mode, {bx10['rss_slope_bytes_per_image'] / 1024:.0f} in binned, against "
        f"{exact['marginal_state_bytes_per_image'] / 1024:.0f} and "
        f"{binned['marginal_state_bytes_per_image'] / 1024:.0f} KiB of state) is freed memory that glibc's malloc "
        "keeps in the process: in a separate check (binned, 10x, "
        f"test batches 10 to 79) RSS rose {mib(ALLOCATOR_CHECK['rss_added_bytes'])} MiB, only "
        f"{mib(ALLOCATOR_CHECK['rss_added_after_malloc_trim_bytes'])} MiB after `malloc_trim(0)`, while the live "
        f"tensors rose {mib(ALLOCATOR_CHECK['live_tensor_bytes_added'])} MiB (the state) and Python's object count "
        f"by {ALLOCATOR_CHECK['python_objects_added']}. That memory is reused by later allocations, not live data.",
        "- **Found and fixed** (`anomaly_diff/callbacks/heatmaps.py`): the heat-map writer kept its samples as numpy "
        "views of `batch[...][i]` (`.float().cpu()` is a no-op on float CPU tensors), so every kept sample held its "
        f"whole batch's images, maps and masks: up to {kept_samples} batches here (3 per category and defect type), "
        "about 5 MB "
        "each at batch 16 and 128 px, far more at paper size (a 32-image batch of 256 px images is 25 MB). Counting "
        "the live tensors between test batches 10 and 29 of the 10x set: +"
        f"{BEFORE_HEATMAP_FIX['live_tensor_bytes_batches_10_to_29']['before_fix'] / 2**20:.0f} MiB before the fix, +"
        f"{BEFORE_HEATMAP_FIX['live_tensor_bytes_batches_10_to_29']['after_fix'] / 2**20:.0f} MiB after it, which "
        "is exactly the metric state added. Before the fix the exact 10x run grew by "
        f"{mib(before['rss_before_compute_bytes'] - before['rss_test_start_bytes'])} MiB over the test batches "
        f"(now {mib(x10['rss_growth_during_test_bytes'])}) and peaked at "
        f"{mib(before['peak_rss_after_compute_bytes'])} MiB (now "
        f"{mib(runs['exact_x10']['peak_rss_bytes'])}). The writer now copies the kept arrays "
        "(`tests/unit/callbacks/test_heatmaps.py::test_kept_samples_do_not_hold_their_batch`).",
        f"- Headroom: exact at 10x peaks at {runs['exact_x10']['peak_rss_bytes'] / 2**30:.2f} GiB, well within this "
        f"machine's {report['machine']['ram_gib']} GiB. Extrapolating the held state at "
        f"{EXACT_BYTES_PER_PIXEL} bytes per pixel, exact mode would need about "
        f"{RAM_LIMIT_GIB * 2**30 / EXACT_BYTES_PER_PIXEL / MAP_SIDE**2 / 1e6:.1f} M images of {MAP_SIDE} px "
        f"(or {RAM_LIMIT_GIB * 2**30 / EXACT_BYTES_PER_PIXEL / 256**2 / 1e3:.0f} k of 256 px) to fill "
        f"{RAM_LIMIT_GIB} GiB; MVTec AD's 1,725 test images at 256 px hold 0.57 GB. Past that, binned mode "
        "(bounded per image) is the way.",
        *predict_markdown(report),
    ]
    return "\n".join(lines) + "\n"


def written_date(path: Path) -> str:
    """The date and hash of the last commit of ``path``; its modification date outside git or when uncommitted."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args, "--", str(path)], cwd=REPO, capture_output=True, text=True, check=False)

    last = git("log", "-1", "--format=%cs, commit %h").stdout.strip()
    if last and git("diff", "--quiet", "HEAD").returncode == 0:
        return last
    return time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=(*MODES, PREDICT), help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", choices=(PREDICT,),
        help="run only these rows; the others are copied from the existing bench_memory.json (the results say so)",
    )
    args = parser.parse_args()
    if args.child == PREDICT:
        predict_child(args.scale, args.probe)
        return
    if args.child:
        child(args.scale, args.child, args.probe)
        return
    previous = None
    if args.only:
        previous = json.loads((RESULTS / "bench_memory.json").read_text())
    WORK.mkdir(parents=True, exist_ok=True)
    generation = {}
    for scale in SCALES:
        print(f"generating the embedded set at {scale}x ...", flush=True)
        generation[f"x{scale}"] = generate(scale)
    modes = (PREDICT,) if args.only else (*MODES, PREDICT)
    runs = {f"{mode}_x{scale}": run_child(scale, mode) for mode in modes for scale in SCALES}
    test_folders = len([folder for folder in data_root(1).glob("*/test/*") if folder.is_dir()])
    test_rows_from = None
    if previous is not None:  # the test rows of the previous run, unchanged
        runs = {**{name: m for name, m in previous["runs"].items() if not name.startswith(PREDICT)}, **runs}
        test_folders = previous.get("test_folders", 25)
        test_rows_from = previous.get("test_rows_from") or {
            "command": previous["command"],
            "written": written_date(RESULTS / "bench_memory.json"),
            "versions": previous["versions"],
            "generation_s": previous["generation_s"],
        }
    header, _ = results_header(
        "2 cores shared with other developers' jobs while measuring (children run with nice -n 5); times are "
        "indicative",
        extra_versions=("torchmetrics", "numpy"),
    )
    report = {
        **header,
        "test_rows_from": test_rows_from,
        "cli_args": {name: cli_args(int(name.rsplit("_x", 1)[1]), name.split("_")[0]) for name in runs},
        "load_average": list(os.getloadavg()),
        "generation_s": generation,
        "test_folders": test_folders,
        "memory_measure": "whole-process peak RSS (os.wait4 ru_maxrss) of a fresh process per run",
        "runs": runs,
        "analysis": None,
        "before_heatmap_fix": BEFORE_HEATMAP_FIX,
        "before_predict_fix": BEFORE_PREDICT_FIX,
        "allocator_check": ALLOCATOR_CHECK,
    }
    report["analysis"] = analysis(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from anomaly_diff.utils.io import atomic_write_text

    json_path = atomic_write_text(RESULTS / "bench_memory.json", json.dumps(report, indent=2, allow_nan=True) + "\n")
    md_path = atomic_write_text(RESULTS / "bench_memory.md", markdown(report))
    print(f"wrote {json_path} and {md_path}")

if __name__ == "__main__":
    main()
