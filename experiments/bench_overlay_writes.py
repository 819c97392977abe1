"""Seconds to write ``predict``'s overlay PNGs with and without an ``fsync`` per file.

``predict`` writes one overlay per image (``anomaly_diff.visualization.write_png``: a temporary file renamed into
place). Each of ``--images`` overlays of a ``--size`` squared image (``[image | map over image]``, as
``PredictionWriter`` draws them, from a smooth random image and map) is encoded once; then the encoded files are
written into a fresh folder with an ``fsync`` before each rename (``sync=True``, the other result files) and without
(``sync=False``, the overlays), alternating for ``--rounds`` rounds. The encoding time is recorded for comparison.

    OMP_NUM_THREADS=1 python experiments/bench_overlay_writes.py [--images 200] [--size 256] [--rounds 3] [--dir runs]
Writes experiments/results/bench_overlay_writes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench_common import results_header

from anomaly_diff.utils.io import atomic_write_bytes, atomic_write_text
from anomaly_diff.visualization import overlay_panel

RESULTS = Path(__file__).parent / "results"


def encoded_overlays(count: int, size: int) -> tuple[list[bytes], float]:
    """``count`` PNG-encoded overlays of ``size`` squared images, and the seconds the encoding took."""
    rng = np.random.default_rng(0)
    small = size // 16
    pngs, seconds = [], 0.0
    for _ in range(count):
        image = cv2.resize(rng.random((small, small, 3)), (size, size)) + 0.02 * rng.standard_normal((size, size, 3))
        anomaly_map = cv2.resize(rng.random((small, small)), (size, size))
        start = time.perf_counter()
        panel = overlay_panel(image, anomaly_map, None, 0.0, 1.0)
        _, png = cv2.imencode(".png", np.ascontiguousarray(panel[..., ::-1]))
        seconds += time.perf_counter() - start
        pngs.append(png.tobytes())
    return pngs, seconds


def write_all(folder: Path, pngs: list[bytes], sync: bool) -> float:
    """Seconds to write every PNG into ``folder`` as ``write_png`` does (``sync`` as given)."""
    start = time.perf_counter()
    for number, png in enumerate(pngs):
        atomic_write_bytes(folder / f"{number:06d}_image.png", png, sync=sync)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="runs", help="where the temporary folders are made (predict's file system)")
    args = parser.parse_args()
    pngs, encoding = encoded_overlays(args.images, args.size)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for round_ in range(args.rounds):
            for sync in (True, False):
                folder = Path(scratch) / f"{round_}-{sync}"
                folder.mkdir()
                times[sync].append(write_all(folder, pngs, sync))
    header, header_md = results_header("one process; other jobs may share the cores and disk (see the load average)")
    per_image = {sync: 1000 * statistics.median(values) / args.images for sync, values in times.items()}
    result = {**header, "images": args.images, "size": args.size, "rounds": args.rounds, "dir": args.dir,
              "seconds_per_round": {"fsync": times[True], "rename_only": times[False]},
              "encoding_seconds": encoding,
              "ms_per_overlay": {"fsync": per_image[True], "rename_only": per_image[False]}}
    lines = [
        "# Overlay PNG writes with and without fsync",
        "",
        *header_md,
        "",
        f"{args.images} overlays of {args.size} x {args.size} images ({args.size} x {2 * args.size} PNG panels, "
        f"{statistics.mean(map(len, pngs)) / 1024:.0f} KiB on average), written through a temporary file and a "
        f"rename into a fresh folder under `{args.dir}`; {args.rounds} rounds, alternating.",
        "",
        "| write | seconds per round (each round) | ms per overlay (median round) |",
        "|---|---|---|",
        *(f"| {'fsync, rename' if sync else 'rename only'} | {', '.join(f'{t:.3f}' for t in times[sync])} | "
          f"{per_image[sync]:.2f} |" for sync in (True, False)),
        f"| (drawing and PNG encoding, once) | {encoding:.3f} | {1000 * encoding / args.images:.2f} |",
        "",
        f"The fsync adds {per_image[True] - per_image[False]:.2f} ms per overlay, "
        f"{100 * (per_image[True] - per_image[False]) / (1000 * encoding / args.images + per_image[True]):.0f}% of "
        "drawing, encoding and writing one with it, on this disk (more where an fsync waits on a slower or network "
        "disk). Overlays can be drawn again, so `write_png` renames without it; checkpoints, metrics, configs and "
        "`predictions.csv` keep theirs (`anomaly_diff.utils.io`).",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_overlay_writes.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / "bench_overlay_writes.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
