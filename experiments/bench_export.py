"""Images per second of DeCo-Diff inference, eager vs exported (``anomaly-diff export``'s formats), on CPU.

The model of ``configs/deco_diff/embedded.yaml`` (tiny UNet, 128 x 128 input, its chain and map settings, the
embedded autoencoder architecture; built as ``experiments/bench_infer.py`` builds it, random weights unless
``make run`` has written the autoencoder) is wrapped as ``anomaly_diff.export.DeCoDiffExport`` (image and class
indices in, map and score out) and exported at batch 1 and 8 to each format: ``exported-program`` (run with
``torch.export.load(...).module()``), ``torchscript`` (``torch.jit.load``) and ``onnx`` (ONNX Runtime, CPU execution
provider, as many intra-op threads as torch has). Eager is the wrapper itself under ``torch.no_grad``, i.e.
``DeCoDiffModel.detect``. Every artifact is saved and loaded back before it is timed; the largest difference of its
maps and scores from eager on the timed batch is recorded too.

    OMP_NUM_THREADS=1 python experiments/bench_export.py [--repeats 3] [--repeats-batch8 2] [--threads N]
Writes experiments/results/bench_export.json and bench_export.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import machine as bench_machine
from bench_infer import embedded_setting

from anomaly_diff.export import FORMATS, SUFFIXES, DeCoDiffExport, trace
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def runner(format: str, path: Path, threads: int):
    """A callable ``(image, class_index) -> (map, score)`` running the saved artifact."""
    if format == "exported-program":
        module = torch.export.load(str(path)).module()
        return lambda image, class_index: module(image, class_index)
    if format == "torchscript":
        module = torch.jit.load(str(path))
        return lambda image, class_index: module(image, class_index)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(image, class_index):
        feed = {"image": image.numpy(), "class_index": class_index.numpy()}
        outputs = session.run(["anomaly_map", "pred_score"], feed)
        return tuple(torch.from_numpy(array) for array in outputs)

    return run


def images_per_second(run, image, class_index, repeats: int) -> float:
    """Median images/s over ``repeats`` timed runs after one untimed one."""
    with torch.no_grad():
        run(image, class_index)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(image, class_index)
            times.append(time.perf_counter() - start)
    return image.shape[0] / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch-1 cell (after one warm-up)")
    parser.add_argument("--repeats-batch8", type=int, default=2, help="timed runs per batch-8 cell")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch and ONNX Runtime intra-op threads (default: torch's, i.e. OMP_NUM_THREADS)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, size = embedded_setting()
    wrapper = DeCoDiffExport(model.eval()).eval()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in (1, 8):
            generator = torch.Generator().manual_seed(batch)
            image = torch.rand(batch, 3, size, size, generator=generator)
            class_index = torch.randint(0, 5, (batch,), generator=generator)
            repeats = args.repeats if batch == 1 else args.repeats_batch8
            with torch.no_grad():
                expected = wrapper(image, class_index)
            rate = images_per_second(wrapper, image, class_index, repeats)
            rows.append({"batch": batch, "runtime": "eager", "images_per_s": rate, "export_s": None,
                         "max_abs_diff": {"anomaly_map": 0.0, "pred_score": 0.0}})
            print(f"batch {batch} eager {rate:.2f} images/s", flush=True)
            for fmt in args.formats:
                path = Path(folder) / f"batch{batch}{SUFFIXES[fmt]}"
                start = time.perf_counter()
                trace(wrapper, (image, class_index), path, fmt)
                export_s = time.perf_counter() - start
                run = runner(fmt, path, args.threads)
                with torch.no_grad():
                    got = run(image, class_index)
                diff = {name: float((a - b).abs().max())
                        for name, a, b in zip(("anomaly_map", "pred_score"), got, expected, strict=True)}
                rate = images_per_second(run, image, class_index, repeats)
                label = "onnxruntime" if fmt == "onnx" else fmt
                rows.append({"batch": batch, "runtime": label, "images_per_s": rate, "export_s": export_s,
                             "max_abs_diff": diff})
                print(f"batch {batch} {label} {rate:.2f} images/s (export {export_s:.1f} s, max diff "
                      f"{max(diff.values()):.1e})", flush=True)

    eager = {r["batch"]: r["images_per_s"] for r in rows if r["runtime"] == "eager"}
    ratios = {f"batch{r['batch']}: {r['runtime']} / eager": r["images_per_s"] / eager[r["batch"]]
              for r in rows if r["runtime"] != "eager"}
    machine = {**bench_machine("one process; other jobs may share the cores (see the load average)"),
               "torch": torch.__version__}
    try:
        import onnxruntime

        machine["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    result = {"command": command, "machine": machine, "setting": {"input": size, "chain": model.timesteps,
              "unet": "tiny"}, "repeats": {"batch1": args.repeats, "batch8": args.repeats_batch8}, "rows": rows,
              "ratios": ratios}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_export.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "# DeCo-Diff inference: eager vs exported",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads (ONNX Runtime: "
        f"{args.threads} intra-op), torch {machine['torch']}, onnxruntime {machine.get('onnxruntime', '-')}, load "
        f"average at the end (1/5/15 min) {machine['load_average']}  ",
        f"Model: configs/deco_diff/embedded.yaml's DeCo-Diff (tiny UNet, {size} x {size}, chain {model.timesteps}), "
        f"random weights. One image = encode, one UNet pass per timestep, two decodes, the anomaly map and score. "
        f"Median of {args.repeats} timed runs at batch 1 and {args.repeats_batch8} at batch 8, each after one "
        "untimed run; artifacts saved and loaded back first; the batch is fixed at export.",
        "",
        "| batch | runtime | images/s | ratio to eager | export s | max abs diff map / score |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['batch']} | {r['runtime']} | {r['images_per_s']:.2f} | {r['images_per_s'] / eager[r['batch']]:.2f} "
            f"| {'' if r['export_s'] is None else format(r['export_s'], '.1f')} "
            f"| {r['max_abs_diff']['anomaly_map']:.1e} / {r['max_abs_diff']['pred_score']:.1e} |"
            for r in rows
        ],
        "",
    ]
    atomic_write_text(RESULTS / "bench_export.md", "\n".join(lines))
    print(f"wrote {RESULTS / 'bench_export.md'}")


if __name__ == "__main__":
    main()
