"""Images per second of DeCo-Diff inference (encode, the chain's deviation steps, two decodes, anomaly map).

Two settings, each at batch 1 and 16, in float32 and under bfloat16 autocast (the UNet; the autoencoder always
runs in float32, see ``LatentCodec``), all in one process so the ratios compare like with like:

- ``embedded``: ``configs/deco_diff/embedded.yaml`` as ``make run`` uses it (tiny UNet, 128 x 128 input, the
  autoencoder architecture of ``configs/autoencoder/embedded.yaml``).
- ``unet_S_256``: the paper's scale with UNet S on 256 x 256 input (32 x 32 latents) and an autoencoder with the
  architecture of Stable Diffusion's ``sd-vae-ft-ema``.

Each setting also has a ``compiled`` row (``torch.compile`` of the UNet, default inductor, float32) beside the
eager ones, at batch 1 and 16 for ``embedded`` and at batch 1 only for ``unet_S_256`` (one batch shape, so one
compilation of UNet S, which takes minutes on a CPU). The variants of one cell run round-robin over the repeats, so
their ratios come from the same minutes of a shared machine.

With ``--reference DIR`` (a checkout of the DeCo-Diff reference code, never part of this repository; see
``experiments/deco_diff_reference.py``) a "correction loop" section times the reference's test loop
(``create_diffusion('ddim5', predict_deviation=True, diffusion_steps=10).ddim_deviation_sample_loop`` on its
``UNet_S``, as its ``evaluation_DeCo_Diff.py`` calls it) beside ``DeCoDiffModel.correct`` on the same converted
weights (chain 8, 6, 4, 2, 0; 32 x 32 latents, batch ``--loop-batch``): ours eager, ours with ``torch.compile`` of the
UNet (its compilation time reported separately), the same with inductor's ``freezing`` option (weights as
constants) and ours in channels-last memory format, round-robin over
``--loop-repeats``, with the largest difference of each output from the reference's.

Weights are random (timing does not depend on them, and the pretrained VAE cannot be downloaded here); the
embedded autoencoder is loaded from ``runs/autoencoder/embedded/latest/autoencoder`` when ``make run`` has written it.

    python experiments/bench_infer.py [--repeats 3] [--repeats-batch16 1] [--device cpu] [--no-compile]
        [--reference DIR [--loop-batch 16] [--loop-repeats 3]]
Writes experiments/results/bench_infer.json and bench_infer.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from bench_common import embedded_autoencoder, header_lines, results_header
from diffusers import AutoencoderKL
from torch import nn

from anomaly_diff.diffusion.schedule import resolve_chain
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig, DeCoDiffModel
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
# diffusers' config of stabilityai/sd-vae-ft-ema (block_out_channels, layers_per_block, scaling_factor).
SD_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
# The detect variants: (precision, runtime).
VARIANTS = (("fp32", "eager"), ("bf16-autocast", "eager"), ("fp32", "compiled"))


def embedded_setting() -> tuple[DeCoDiffModel, int]:
    """The DeCo-Diff model of configs/deco_diff/embedded.yaml, and its input size."""
    deco = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    data = yaml.safe_load((ROOT / "configs/data/embedded.yaml").read_text())["init_args"]
    vae, _ = embedded_autoencoder(ROOT)
    model = DeCoDiffModel(
        LatentCodec(vae),
        num_classes=5,
        unet=deco["unet"],
        latent_channels=vae.config.latent_channels,
        timesteps=resolve_chain(deco["num_train_timesteps"], deco["reverse_steps"], deco["timesteps"]),
        anomaly_map=AnomalyMapConfig(**deco["anomaly_map"]),
    )
    return model, data["crop_size"]


def paper_setting() -> tuple[DeCoDiffModel, int]:
    """UNet S on 256 x 256 with an sd-vae-ft-ema-shaped autoencoder and the reference's map settings."""
    return DeCoDiffModel(LatentCodec(AutoencoderKL(**SD_VAE)), num_classes=15, unet="S"), 256


class _Unet:
    """Within the block, ``model.unet`` is ``unet`` (e.g. its ``torch.compile``d version); restored afterwards."""

    def __init__(self, model: DeCoDiffModel, unet: nn.Module) -> None:
        self.model, self.unet = model, unet

    def __enter__(self) -> None:
        self.saved, self.model.unet = self.model.unet, self.unet

    def __exit__(self, *exc) -> None:
        self.model.unet = self.saved


def round_robin(
    runs: dict[str, Callable[[], object]], repeats: int, device: str, warm_up: bool = True
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of every run of each callable, the callables taking turns ``repeats`` times, so that they share
    the machine's conditions; with ``warm_up`` each runs once untimed first (its seconds returned separately: for
    a compiled callable, compilation plus one run)."""
    first = {}
    if warm_up:
        for name, run in runs.items():
            first[name] = _timed(run, device)
            print(f"  warm-up {name}: {first[name]:.1f} s", flush=True)
    times = {name: [] for name in runs}
    for repeat in range(repeats):
        for name, run in runs.items():
            times[name].append(_timed(run, device))
        print(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
              flush=True)
    return times, first


def _timed(run: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def detect_rows(name: str, model: DeCoDiffModel, size: int, args: argparse.Namespace) -> list[dict]:
    """Images/s of ``model.detect`` for each variant at batch 1 and 16 (compiled: see ``compiled_batches``)."""
    compiled_unet = torch.compile(model.unet)
    compiled_batches = (1, 16) if name == "embedded" else (1,)
    rows = []
    for batch in (1, 16):
        images = torch.rand(batch, 3, size, size, device=args.device)
        classes = torch.zeros(batch, dtype=torch.long, device=args.device)

        def detect(precision: str, runtime: str, images=images, classes=classes) -> Callable[[], object]:
            def run():
                autocast = torch.autocast(device_type=args.device, dtype=torch.bfloat16)
                with autocast if precision == "bf16-autocast" else nullcontext():
                    with _Unet(model, compiled_unet) if runtime == "compiled" else nullcontext():
                        return model.detect(images, classes)

            return run

        variants = [v for v in VARIANTS if v[1] == "eager" or (not args.no_compile and batch in compiled_batches)]
        runs = {f"{p}/{r}": detect(p, r) for p, r in variants}
        repeats = args.repeats if batch == 1 else args.repeats_batch16
        # batch 16 runs after batch 1 with the same kernels, so only a variant compiled for this shape warms up
        times, first = round_robin(runs, repeats, args.device, warm_up=batch == 1 or "fp32/compiled" in runs)
        for precision, runtime in variants:
            key = f"{precision}/{runtime}"
            rows.append(
                {
                    "setting": name,
                    "chain": model.timesteps,
                    "input": size,
                    "batch": batch,
                    "precision": precision,
                    "runtime": runtime,
                    "images_per_s": batch / median(times[key]),
                    "seconds": times[key],
                    "first_call_s": first.get(key),
                }
            )
            print(f"{name:12s} {size}px batch {batch:2d} {precision:13s} {runtime:8s} "
                  f"{rows[-1]['images_per_s']:8.2f} images/s", flush=True)
    return rows


@torch.no_grad()
def loop_section(reference_dir: str, batch: int, repeats: int, compile_unet: bool) -> dict:
    """The reference's correction loop beside ``DeCoDiffModel.correct`` (eager, compiled, channels-last) at UNet S,
    32 x 32 latents: seconds per image and the largest output difference from the reference."""
    from deco_diff_reference import reference_code
    from reference_unet_parity import randomize_

    from anomaly_diff.models.deco_diff.reference_checkpoint import convert_reference_state_dict

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, 32, 32, generator=generator)
    classes = torch.randint(0, 15, (batch,), generator=generator)
    with reference_code(reference_dir, "models", "diffusion") as ref:
        reference = ref.models.UNET_models["UNet_S"](latent_size=32, ncls=15).eval()
        randomize_(reference, 0)
        ours = DeCoDiffModel(nn.Identity(), num_classes=15, unet="S").eval()
        assert not ours.load_state_dict(
            convert_reference_state_dict(reference.state_dict(), ours), strict=False
        ).unexpected_keys
        # the reference's evaluation_DeCo_Diff.py: --reverse-steps 5 of 10, i.e. timesteps 8, 6, 4, 2, 0
        diffusion = ref.diffusion.create_diffusion(
            "ddim5", predict_deviation=True, sigma_small=False, predict_xstart=False, diffusion_steps=10
        )
        channels_last = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        latents_cl = latents.contiguous(memory_format=torch.channels_last)
        compiled_unet = torch.compile(ours.unet)
        # inductor's freezing: weights become constants, so convolutions get prepacked mkldnn weights
        frozen_unet = torch.compile(ours.unet, options={"freezing": True})

        def reference_loop():
            return diffusion.ddim_deviation_sample_loop(
                reference, latents.shape, noise=latents, clip_denoised=False, start_t=5,
                model_kwargs={"context": classes.unsqueeze(1), "mask": None}, progress=False, device="cpu", eta=0,
            )

        def compiled():
            with _Unet(ours, compiled_unet):
                return ours.correct(latents, classes)

        def frozen():
            with _Unet(ours, frozen_unet):
                return ours.correct(latents, classes)

        runs = {
            "reference": reference_loop,
            "eager": lambda: ours.correct(latents, classes),
            "compiled": compiled,
            "compiled-frozen": frozen,
            "channels-last": lambda: channels_last.correct(latents_cl, classes),
        }
        if not compile_unet:
            del runs["compiled"], runs["compiled-frozen"]
        # each variant's first call (the compiled one's includes compilation) gives the output compared
        first, outputs = {}, {}
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            first[name] = time.perf_counter() - start
            print(f"  first call {name}: {first[name]:.1f} s", flush=True)
        expected = outputs.pop("reference")
        diffs = {name: float((output - expected).abs().max()) for name, output in outputs.items()}
        from torch._dynamo.utils import counters

        graphs_before = counters["stats"]["unique_graphs"]
        times, _ = round_robin(runs, repeats, "cpu", warm_up=False)
        recompiled = counters["stats"]["unique_graphs"] - graphs_before
    per_image = {name: median(t) / batch for name, t in times.items()}
    return {
        "unet": "S (reference UNet_S, converted weights; randomize_ of experiments/reference_unet_parity.py)",
        "latents": [batch, 4, 32, 32],
        "chain": list(ours.timesteps),
        "repeats": repeats,
        "seconds": times,
        "first_call_s": first,
        "s_per_image": per_image,
        "speedup_over_reference": {n: per_image["reference"] / s for n, s in per_image.items() if n != "reference"},
        "max_abs_diff_to_reference": diffs,
        "reference_output_max_abs": float(expected.abs().max()),
        "graphs_compiled_while_timed": recompiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch-1 cell (after one warm-up)")
    parser.add_argument(
        "--repeats-batch16",
        type=int,
        default=1,
        help="timed runs per batch-16 cell; no warm-up (except a compiled variant), the batch-1 cells ran before",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--reference", help="a checkout of the DeCo-Diff reference code: adds the loop section")
    parser.add_argument("--loop-batch", type=int, default=16, help="batch of the correction-loop section")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed round-robin runs of the loop section")
    parser.add_argument("--settings", nargs="+", default=["embedded", "unet_S_256"],
                        choices=["embedded", "unet_S_256"], help="detect settings to time (default both)")
    parser.add_argument("--render-only", action="store_true",
                        help="only rewrite bench_infer.md from bench_infer.json (and bench_infer_notes.md)")
    args = parser.parse_args()
    if args.render_only:
        write_markdown(json.loads((RESULTS / "bench_infer.json").read_text()))
        return
    torch.manual_seed(0)

    loop = None
    if args.reference:
        if args.device != "cpu":
            raise SystemExit("the correction-loop section runs on the CPU (the reference's loop is called with "
                             "device='cpu')")
        print(f"correction loop: UNet S, batch {args.loop_batch}, reference {args.reference}", flush=True)
        loop = loop_section(args.reference, args.loop_batch, args.loop_repeats, not args.no_compile)
        torch._dynamo.reset()

    rows = []
    builders = {"embedded": embedded_setting, "unet_S_256": paper_setting}
    for name in args.settings:
        model, size = builders[name]()
        model = model.to(args.device).eval()
        rows.extend(detect_rows(name, model, size, args))
        del model
        torch._dynamo.reset()

    def rate(setting, batch, precision, runtime="eager"):
        return next(
            (r["images_per_s"] for r in rows
             if (r["setting"], r["batch"], r["precision"], r["runtime"]) == (setting, batch, precision, runtime)),
            None,
        )

    candidates = {}
    for setting in args.settings:
        for batch in (1, 16):
            candidates[f"{setting}/batch{batch}: bf16 / fp32"] = (
                rate(setting, batch, "bf16-autocast"), rate(setting, batch, "fp32"))
            candidates[f"{setting}/batch{batch}: compiled / eager (fp32)"] = (
                rate(setting, batch, "fp32", "compiled"), rate(setting, batch, "fp32"))
        for precision in ("fp32", "bf16-autocast"):
            candidates[f"{setting}/{precision}: batch 16 / batch 1"] = (
                rate(setting, 16, precision), rate(setting, 1, precision))
    for batch in (1, 16):
        for precision in ("fp32", "bf16-autocast"):
            candidates[f"batch{batch}/{precision}: embedded / unet_S_256"] = (
                rate("embedded", batch, precision), rate("unet_S_256", batch, precision))
    ratios = {k: a / b for k, (a, b) in candidates.items() if a is not None and b is not None}

    header, _ = results_header("one process; other jobs may share the cores (see the load average)")
    header["machine"]["device"] = args.device if args.device == "cpu" else torch.cuda.get_device_name()
    result = {
        **header,
        "repeats": {"batch1": args.repeats, "batch16": args.repeats_batch16},
        "rows": rows,
        "ratios": ratios,
        "correction_loop": loop,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_infer.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result)


def write_markdown(result: dict) -> None:
    """bench_infer.md from the recorded results (``--render-only`` redoes it from bench_infer.json)."""
    rows, ratios, loop, repeats = (result[k] for k in ("rows", "ratios", "correction_loop", "repeats"))
    lines = [
        "# DeCo-Diff inference throughput",
        "",
        *header_lines(result),
        "",
        f"Device: {result['machine'].get('device', 'cpu')}. Median of {repeats['batch1']} timed runs after one "
        f"warm-up at batch 1, {repeats['batch16']} timed run(s) at "
        "batch 16 (kernels already warm; a compiled variant warms up, i.e. compiles, first); the variants of a cell "
        "take turns; random weights. One image = encode, one UNet pass per timestep of the setting's chain, two "
        "decodes, the anomaly map. bf16 autocast covers the UNet; the autoencoder runs in float32. compiled = "
        "`torch.compile(model.unet)` (inductor, default mode, float32; the autoencoder stays eager); its first call "
        "(compilation + one run) is the last column. At unet_S_256 the compiled variant runs at batch 1 only "
        "(one compilation of UNet S per batch shape).",
        "",
        "| setting | chain | input | batch | precision | runtime | images/s | first call s |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['setting']} | {r['chain']} | {r['input']} | {r['batch']} | {r['precision']} | {r['runtime']} "
            f"| {r['images_per_s']:.3g} | {'' if r['first_call_s'] is None else format(r['first_call_s'], '.1f')} |"
            for r in rows
        ],
        "",
        "| ratio | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in ratios.items()],
        "",
    ]
    if loop is not None:
        lines += [
            "## Correction loop: the reference's vs this project's",
            "",
            f"The deviation-correction chain {loop['chain']} alone (no autoencoder), UNet S, latents "
            f"{' x '.join(map(str, loop['latents']))}, float32; the reference's `ddim_deviation_sample_loop` "
            "(`create_diffusion('ddim5', predict_deviation=True, diffusion_steps=10)`, `start_t=5`, `eta=0`) on its "
            "`UNet_S` with random weights, ours `DeCoDiffModel.correct` on the same weights converted by "
            "`convert_reference_state_dict`: eager; compiled = `torch.compile(model.unet)` (inductor, default mode); "
            "compiled-frozen = the same with `options={'freezing': True}` (weights folded in as constants, "
            "convolution weights prepacked); channels-last = model and latents in `torch.channels_last`. Median of "
            f"{loop['repeats']} timed runs per variant, the variants taking turns, after one untimed run each "
            f"(the first call, which gives the compared output; the compiled one's includes compilation); "
            f"graphs compiled during the timed runs: {loop['graphs_compiled_while_timed']}.",
            "",
            "| loop | s / image, median | speed-up, median | s / image, best | speed-up, best "
            "| speed-up per round (same minutes) | max abs diff to the reference | first call s |",
            "|---|---|---|---|---|---|---|---|",
            *[_loop_row(loop, name) for name in loop["seconds"]],
            "",
            f"Largest |output| of the reference loop: {loop['reference_output_max_abs']:.2f}. Best = the fastest of "
            "the timed runs (the least disturbed by other jobs); per round = the reference's seconds over the "
            "variant's in the same round of turns.",
            "",
        ]
    notes = RESULTS / "bench_infer_notes.md"  # the hand-written Conditions and Reading, kept across re-runs
    if notes.is_file():
        lines += [notes.read_text().rstrip("\n"), ""]
    atomic_write_text(RESULTS / "bench_infer.md", "\n".join(lines))
    print(f"wrote {RESULTS / 'bench_infer.md'}")


def _loop_row(loop: dict, name: str) -> str:
    batch = loop["latents"][0]
    times, reference = loop["seconds"][name], loop["seconds"]["reference"]
    per_round = " / ".join(f"{r / t:.2f}" for r, t in zip(reference, times, strict=True))
    diff = 0.0 if name == "reference" else loop["max_abs_diff_to_reference"].get(name)
    diff = "not compared" if diff is None else format(diff, ".1e")
    return (
        f"| {name} | {median(times) / batch:.3f} | {median(reference) / median(times):.2f} "
        f"| {min(times) / batch:.3f} | {min(reference) / min(times):.2f} | {per_round} "
        f"| {diff} | {loop['first_call_s'][name]:.1f} |"
    )


if __name__ == "__main__":
    main()
