"""Images per second of DeCo-Diff inference, eager vs exported (``anomaly-diff export``'s formats), on CPU.

``--setting embedded`` (the default): the model of ``configs/deco_diff/embedded.yaml`` (tiny UNet, 128 x 128 input,
its chain and map settings, the embedded autoencoder architecture; built as ``experiments/bench_infer.py`` builds
it, random weights unless ``make run`` has written the autoencoder) is wrapped as
``anomaly_diff.export.DeCoDiffExport`` (image and class indices in, map and score out) and exported at batch 1 and 8
to each format: ``exported-program`` (run with ``torch.export.load(...).module()``), ``torchscript``
(``torch.jit.load``) and ``onnx`` (ONNX Runtime, CPU execution provider, as many intra-op threads as torch has).
Eager is the wrapper itself under ``torch.no_grad``, i.e. ``DeCoDiffModel.detect``. Every artifact is saved and
loaded back before it is timed; the largest difference of its maps and scores from eager on the timed batch is
recorded too.

``--setting unet_S_256``: the paper-scale model of ``experiments/bench_infer.py`` (UNet S, 256 x 256 input, an
autoencoder with the architecture of ``sd-vae-ft-ema``, 15 classes, random weights), at batch 1 only by default
(``--batches``): one image takes seconds there, and every format is exported once per batch shape. Its results go to
their own files, so the embedded ones are kept.

    OMP_NUM_THREADS=1 python experiments/bench_export.py [--setting embedded|unet_S_256] [--repeats 3]
        [--repeats-batch8 2] [--batches 1 8] [--threads N] [--formats ...]
Writes experiments/results/bench_export.{json,md} (embedded) or bench_export_unet_S_256.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_common import results_header
from bench_infer import embedded_setting, paper_setting

from anomaly_diff.export import FORMATS, SUFFIXES, DeCoDiffExport, trace
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
# setting: (model builder, UNet, classes, default batches, results file stem)
SETTINGS = {
    "embedded": (embedded_setting, "tiny", 5, (1, 8), "bench_export"),
    "unet_S_256": (paper_setting, "S", 15, (1,), "bench_export_unet_S_256"),
}


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
    names = {node.name for node in session.get_inputs()}

    def run(image, class_index):
        feed = {"image": image.numpy(), "class_index": class_index.numpy()}
        outputs = session.run(["anomaly_map", "pred_score"], {k: v for k, v in feed.items() if k in names})
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
    parser.add_argument("--repeats-batch8", type=int, default=2, help="timed runs per cell of batch > 1")
    parser.add_argument("--setting", choices=list(SETTINGS), default="embedded",
                        help="embedded (configs/deco_diff/embedded.yaml) or unet_S_256 (UNet S, 256 px, sd-vae-sized)")
    parser.add_argument("--batches", type=int, nargs="+",
                        help="batch sizes (default: 1 8 for embedded, 1 for unet_S_256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch and ONNX Runtime intra-op threads (default: torch's, i.e. OMP_NUM_THREADS)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, unet, num_classes, default_batches, stem = SETTINGS[args.setting]
    batches = args.batches or default_batches
    model, size = build()
    wrapper = DeCoDiffExport(model.eval()).eval()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in batches:
            generator = torch.Generator().manual_seed(batch)
            image = torch.rand(batch, 3, size, size, generator=generator)
            class_index = torch.randint(0, num_classes, (batch,), generator=generator)
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
                try:
                    trace(wrapper, (image, class_index), path, fmt)
                except Exception as error:  # recorded, not fatal: the other formats still get timed
                    label = "onnxruntime" if fmt == "onnx" else fmt
                    rows.append({"batch": batch, "runtime": label, "images_per_s": None,
                                 "export_s": time.perf_counter() - start, "max_abs_diff": None,
                                 "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"})
                    print(f"batch {batch} {label} export failed: {rows[-1]['error']}", flush=True)
                    continue
                export_s = time.perf_counter() - start
                artifact_mib = path.stat().st_size / 2**20 if path.is_file() else None
                run = runner(fmt, path, args.threads)
                with torch.no_grad():
                    got = run(image, class_index)
                diff = {name: float((a - b).abs().max())
                        for name, a, b in zip(("anomaly_map", "pred_score"), got, expected, strict=True)}
                rate = images_per_second(run, image, class_index, repeats)
                label = "onnxruntime" if fmt == "onnx" else fmt
                rows.append({"batch": batch, "runtime": label, "images_per_s": rate, "export_s": export_s,
                             "max_abs_diff": diff, "artifact_mib": artifact_mib})
                print(f"batch {batch} {label} {rate:.2f} images/s (export {export_s:.1f} s, max diff "
                      f"{max(diff.values()):.1e})", flush=True)

    eager = {r["batch"]: r["images_per_s"] for r in rows if r["runtime"] == "eager"}
    ratios = {f"batch{r['batch']}: {r['runtime']} / eager": r["images_per_s"] / eager[r["batch"]]
              for r in rows if r["runtime"] != "eager" and r["images_per_s"] is not None}
    header, header_md = results_header(
        f"one process, ONNX Runtime with {args.threads} intra-op thread(s); other jobs may share the cores (see the "
        "load average)", extra_versions=("onnxruntime",))
    result = {**header, "setting": {"name": args.setting, "input": size,
              "chain": model.timesteps, "unet": unet}, "repeats": {"batch1": args.repeats,
              "larger_batches": args.repeats_batch8}, "rows": rows, "ratios": ratios}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    description = {
        "embedded": f"configs/deco_diff/embedded.yaml's DeCo-Diff (tiny UNet, {size} x {size}, chain "
                    f"{model.timesteps})",
        "unet_S_256": f"DeCo-Diff at the paper's scale (UNet S, {size} x {size}, an autoencoder with the architecture "
                      f"of sd-vae-ft-ema, 15 classes, chain {model.timesteps})",
    }[args.setting]
    lines = [
        "# DeCo-Diff inference: eager vs exported",
        "",
        *header_md,
        "",
        f"Model: {description}, random weights. One image = encode, one UNet pass per timestep, two decodes, the "
        f"anomaly map and score. Median of {args.repeats} timed runs at batch 1 and {args.repeats_batch8} at larger "
        "batches, each after one untimed run; artifacts saved and loaded back first; the batch is fixed at export.",
        "",
        "| batch | runtime | images/s | ratio to eager | export s | max abs diff map / score |",
        "|---|---|---|---|---|---|",
        *[_row(r, eager) for r in rows],
        "",
    ]
    notes = RESULTS / f"{stem}_notes.md"  # the hand-written Conditions and Reading, kept across re-runs
    if notes.is_file():
        lines += [notes.read_text().rstrip("\n"), ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines))
    print(f"wrote {RESULTS / f'{stem}.md'}")


def _row(r: dict, eager: dict) -> str:
    export_s = "" if r["export_s"] is None else format(r["export_s"], ".1f")
    if r["images_per_s"] is None:
        return f"| {r['batch']} | {r['runtime']} | export failed: {r['error']} | | {export_s} | |"
    return (f"| {r['batch']} | {r['runtime']} | {r['images_per_s']:.3g} | {r['images_per_s'] / eager[r['batch']]:.2f} "
            f"| {export_s} | {r['max_abs_diff']['anomaly_map']:.1e} / {r['max_abs_diff']['pred_score']:.1e} |")


if __name__ == "__main__":
    main()
