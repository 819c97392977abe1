"""Numerical parity of this project's DeCo-Diff with the reference code, element by element.

For each element of the method (schedule, masks, shuffling, forward, target, loss, chain, latent encode, image map,
latent map, fusion, score, learning-rate curve) the reference's own function and this project's are fed the same
inputs and the largest absolute difference of their outputs is recorded; for every UNet preset a reference UNet
with random weights is compared with its conversion (``experiments/reference_unet_parity.py``).

The reference code is never committed here: ``experiments/deco_diff_reference.py`` says how to get it and what
it needs (``pip install transformers pandas`` for its training and evaluation scripts). Then:

    python experiments/reference_parity.py --reference /path/to/DeCo-Diff

It writes ``experiments/results/reference_parity.{json,md}``. No metric is compared here (the reference's come from
anomalib, which is replaced by an empty module; this project's metrics are tested against scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from bench_common import results_header
from deco_diff_reference import DEFAULT_REFERENCE, reference_code
from diffusers import AutoencoderKL
from reference_unet_parity import markdown_table, unet_parity_rows

from anomaly_diff.diffusion.deviation import correct_deviations, corrupt, deviation_target
from anomaly_diff.diffusion.masks import random_patch_mask, shuffle_patches
from anomaly_diff.diffusion.schedule import NoiseSchedule, respaced_timesteps
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.components.lr_schedulers import WarmupCosineLR
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig, DeCoDiffModel, UNetPreset
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
TOLERANCE = 1e-5


def max_abs(a, b) -> float:
    """Largest absolute difference of two arrays or tensors, in float64."""
    a = a.detach().cpu().double().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().double().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max())


def row(element: str, reference: str, ours: str, inputs: str, diff: float, note: str = "") -> dict:
    return {"element": element, "reference": reference, "ours": ours, "inputs": inputs, "max_abs_diff": diff,
            "note": note}


class DummyDeviationModel(torch.nn.Module):
    """A fixed, non-linear, timestep- and class-dependent stand-in for the UNet (for the chain alone)."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.weight = torch.nn.Parameter(torch.randn(channels, channels, 3, 3, generator=generator) * 0.2)
        self.class_bias = torch.nn.Parameter(torch.randn(classes, channels, generator=generator) * 0.1)

    def forward(self, x, t, class_index):
        out = torch.tanh(torch.nn.functional.conv2d(x, self.weight, padding=1))
        return out * (1 + t.float().reshape(-1, 1, 1, 1) / 10) + self.class_bias[class_index][..., None, None]


def reference_model(model) -> callable:
    """The reference calls its UNet as ``model(x, t, context=class[:, None], mask=...)``."""
    return lambda x, t, context=None, mask=None, **_: model(x, t, context[:, 0].long())


def training_rows(ref) -> list[dict]:
    rows = []
    diffusion = ref.diffusion.create_diffusion("ddim10", predict_deviation=True, diffusion_steps=10)
    schedule = NoiseSchedule(10, "squaredcos_cap_v2")
    rows.append(row("schedule a_t (T = 10, cosine)", "create_diffusion('ddim10', diffusion_steps=10).alphas_cumprod",
                    "NoiseSchedule(10, 'squaredcos_cap_v2').alphas_cumprod", "t = 0..9",
                    max_abs(schedule.alphas_cumprod, diffusion.alphas_cumprod), "float32 here, float64 there"))

    torch.manual_seed(0)
    x0 = torch.randn(8, 4, 32, 32)
    noise = torch.randn(8, 4, 32, 32)
    t = torch.arange(8) % 10 + 2
    rows.extend(mask_rows(ref, x0))
    keep = 1.0 - random_patch_mask(32, 32, torch.full((8,), 4), torch.rand(8) * 0.7)
    keep4 = keep.expand(-1, 4, -1, -1)  # the reference's masks carry the channel axis
    rows.append(row("forward x_t", "GaussianDiffusion.q_sample(x0, t, mask, noise)", "deviation.corrupt",
                    "random x0, e, patch mask, t in 2..9", max_abs(
                        corrupt(x0, noise, keep, schedule, t), diffusion.q_sample(x0, t, keep4, noise=noise))))
    rows.append(row("target d", "GaussianDiffusion.direction_of_deviation(e, x0, mask, t)",
                    "deviation.deviation_target", "same", max_abs(
                        deviation_target(x0, noise, keep, schedule, t),
                        diffusion.direction_of_deviation(noise, x0, keep4, t))))
    model = DummyDeviationModel()
    classes = torch.arange(8) % 3
    with torch.no_grad():
        reference_loss = diffusion.training_losses(reference_model(model), x0, t,
                                                   {"context": classes[:, None], "mask": keep4}, noise=noise)["loss"]
        ours = torch.nn.functional.mse_loss(model(corrupt(x0, noise, keep, schedule, t), t, classes),
                                            deviation_target(x0, noise, keep, schedule, t))
    rows.append(row("loss", "training_losses(...)['loss'].mean()", "DeCoDiff.compute_losses: F.mse_loss",
                    "same, a fixed non-linear stand-in model", max_abs(ours, reference_loss.mean())))
    return rows


def mask_rows(ref, x0: torch.Tensor) -> list[dict]:
    """Masks draw from different generators (numpy there, torch here): compare what a draw is, not the draw."""
    cells = 32 * 32
    worst_count, worst_alignment = 0, 0
    for patch in (1, 2, 4, 8, 16):
        ratios = np.linspace(0.0, 0.7, x0.shape[0])
        theirs = ref.train_DeCo_Diff.random_mask(x0, mask_ratios=ratios, mask_patch_size=patch)  # 1 = keep
        ours = 1.0 - random_patch_mask(32, 32, torch.full((x0.shape[0],), patch), torch.as_tensor(ratios).float())
        worst_count = max(worst_count, max_abs(theirs.sum((1, 2, 3)) / 4, ours.sum((1, 2, 3))))
        # patch alignment: every patch of ours is constant (as the reference's are by construction)
        blocks = ours.unfold(2, patch, patch).unfold(3, patch, patch)
        worst_alignment = max(worst_alignment, max_abs(blocks.amax((-1, -2)), blocks.amin((-1, -2))))
    rows = [row("masks: kept cells per sample", "train_DeCo_Diff.random_mask (1 = keep)",
                "1 - masks.random_patch_mask", f"8 ratios in [0, 0.7], patch sizes 1..16, {cells} cells",
                worst_count, "same count rule n - floor(n (1 - r)); which patches: numpy vs torch generator"),
            row("masks: patch alignment", "random_mask (patch-constant by construction)", "random_patch_mask",
                "same", worst_alignment, "max - min within every patch")]
    # frequencies: over many draws, every cell is masked as often in both (uniform choice of patches)
    torch.manual_seed(1)
    np.random.seed(1)
    draws, ratio = 4000, 0.5
    batch = torch.zeros(draws, 4, 32, 32)
    theirs = 1 - ref.train_DeCo_Diff.random_mask(batch, mask_ratios=[ratio] * draws, mask_patch_size=4)[:, 0]
    ours = random_patch_mask(32, 32, torch.full((draws,), 4), torch.full((draws,), ratio))[:, 0]
    # the largest of 1024 differences of two independent frequencies is about 3.4 standard errors by chance alone
    noise = 3.4 * (2 * ratio * (1 - ratio) / draws) ** 0.5
    rows.append(row("masks: per-cell frequency", f"random_mask, {draws} draws", f"random_patch_mask, {draws} draws",
                    "ratio 0.5, patch 4", max_abs(theirs.mean(0), ours.mean(0)),
                    f"a comparison in distribution: sampling noise alone gives about {noise:.3f}"))
    return rows


def shuffle_row(ref) -> dict:
    torch.manual_seed(3)
    x = torch.randn(6, 4, 32, 32)
    worst = 0.0
    for patch in (1, 2, 4, 8, 16):
        torch.manual_seed(patch)
        theirs = ref.train_DeCo_Diff.shuffle_patches(x, patch)
        torch.manual_seed(patch)
        ours = shuffle_patches(x, torch.full((6,), patch))
        worst = max(worst, max_abs(theirs, ours))
    return row("shuffled-latent noise", "train_DeCo_Diff.shuffle_patches(x, P)", "masks.shuffle_patches",
               "random latents, one patch size per batch (1..16), same torch seed", worst,
               "same permutation of the batch's patches (same generator call)")


def chain_rows(ref) -> list[dict]:
    rows = []
    model = DummyDeviationModel().eval()
    torch.manual_seed(4)
    x = torch.randn(4, 4, 16, 16)
    classes = torch.tensor([0, 1, 2, 1])
    schedule = NoiseSchedule(10)
    for steps in (5, 2, 3, 4, 10):
        diffusion = ref.diffusion.create_diffusion(f"ddim{steps}", predict_deviation=True, diffusion_steps=10)
        chain = respaced_timesteps(10, steps)
        visited = sorted(diffusion.timestep_map, reverse=True)
        with torch.no_grad():
            theirs = diffusion.ddim_deviation_sample_loop(
                reference_model(model), x.shape, noise=x, clip_denoised=False, start_t=steps,
                model_kwargs={"context": classes[:, None], "mask": None}, device="cpu", eta=0)
            ours = correct_deviations(lambda z, t: model(z, t, classes), x, schedule, chain)
        assert visited == chain, (visited, chain)
        rows.append(row(f"chain, reverse_steps {steps}",
                        f"ddim_deviation_sample_loop on create_diffusion('ddim{steps}')",
                        f"correct_deviations over {chain}", "random latents, fixed stand-in model",
                        max_abs(ours, theirs), f"timesteps visited: {visited} (both)"))
    return rows


def detection_rows(ref) -> list[dict]:
    """Encode, chain, decode and maps of a whole image, the reference's evaluation against ``DeCoDiffModel.detect``."""
    torch.manual_seed(5)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.18215,
    ).eval()
    preset = UNetPreset(32, 2, 32, channel_mult=(1, 2), attention=(True, True), layers_per_block=1, dropout=0.0)
    chain = respaced_timesteps(10, 5)
    images = torch.rand(3, 3, 256, 256)
    classes = torch.tensor([0, 2, 1])
    rows = []
    outputs = {}
    for fusion in ("geometric", "arithmetic"):
        torch.manual_seed(6)
        model = DeCoDiffModel(LatentCodec(vae), num_classes=3, unet=preset, timesteps=chain,
                              anomaly_map=AnomalyMapConfig(fusion=fusion)).eval()
        outputs[fusion] = model.detect(images, classes)
    diffusion = ref.diffusion.create_diffusion("ddim5", predict_deviation=True, diffusion_steps=10)
    with torch.no_grad():
        normalised = images * 2 - 1  # the reference's transforms.Normalize(0.5, 0.5)
        encoded = vae.encode(normalised).latent_dist.mean.mul_(0.18215)
        latents = diffusion.ddim_deviation_sample_loop(
            reference_model(model), encoded.shape, noise=encoded, clip_denoised=False, start_t=5,
            model_kwargs={"context": classes[:, None], "mask": None}, device="cpu", eta=0)
        image_samples = vae.decode(latents / 0.18215).sample
        x0 = vae.decode(encoded / 0.18215).sample
    split = lambda t: [v.unsqueeze(0) for v in t]  # noqa: E731 - the reference's per-image lists
    maps = ref.evaluation_DeCo_Diff.calculate_anomaly_maps(split(x0), split(encoded), split(image_samples),
                                                           split(latents), center_size=256)
    ours = outputs["geometric"]
    codec = LatentCodec(vae)
    inputs = "3 random 256 x 256 images, random SD-shaped VAE (8x, 4 x 32 x 32), random UNet, chain 8..0"
    rows.append(row("latent encode", "vae.encode(2x - 1).latent_dist.mean * 0.18215", "LatentCodec.encode(x)",
                    inputs, max_abs(codec.encode(images), encoded)))
    rows.append(row("image map", "calculate_anomaly_maps: image_discrepancy", "detect: image_map", inputs,
                    max_abs(ours.image_map, maps["image_discrepancy"]),
                    "max_RGB |raw decodes|, clip .4, x2.5, gaussian_filter sigma 3 (mode reflect)"))
    rows.append(row("latent map", "calculate_anomaly_maps: latent_discrepancy", "detect: latent_map", inputs,
                    max_abs(ours.latent_map, maps["latent_discrepancy"]),
                    "mean_C |z_hat - z|, clip .2, x5, gaussian_filter sigma 1, skimage resize to 256"))
    rows.append(row("fusion, geometric", "anomaly_geometric", "detect: anomaly_map (fusion geometric)", inputs,
                    max_abs(ours.anomaly_map, maps["anomaly_geometric"])))
    rows.append(row("fusion, arithmetic", "anomaly_aritmetic", "detect: anomaly_map (fusion arithmetic)", inputs,
                    max_abs(outputs["arithmetic"].anomaly_map, maps["anomaly_aritmetic"])))
    rows.append(row("image score", "calculate_metrics: np.max(prediction[idx])", "detect: pred_score (top_k 1)",
                    inputs, max_abs(ours.pred_score, maps["anomaly_geometric"].reshape(3, -1).max(1))))
    return rows


def learning_rate_rows() -> list[dict]:
    from transformers import get_cosine_schedule_with_warmup  # the reference's schedule (train_DeCo_Diff.py)

    epochs, warmup_epochs = 800, 10
    parameter = [torch.nn.Parameter(torch.zeros(1))]
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD(parameter, lr=1.0), num_warmup_steps=warmup_epochs,
                                                num_training_steps=epochs * 1.5)
    theirs = []
    for _ in range(epochs):  # the reference steps its scheduler once per epoch
        theirs.append(reference.get_last_lr()[0])
        reference.step()
    rows = []
    for steps_per_epoch in (1, 7):
        ours_scheduler = WarmupCosineLR(torch.optim.SGD(parameter, lr=1.0), warmup_fraction=warmup_epochs / epochs,
                                        cosine_length=1.5, total_steps=epochs * steps_per_epoch)
        ours = [ours_scheduler.lr_lambdas[0](e * steps_per_epoch) for e in range(epochs)]
        rows.append(row(f"learning-rate curve, {steps_per_epoch} optimiser step(s) per epoch",
                        "transformers get_cosine_schedule_with_warmup(10, 1.5 x 800), stepped per epoch",
                        "WarmupCosineLR(warmup_fraction=10/800, cosine_length=1.5), per optimiser step",
                        "800 epochs, value at each epoch's first step", max_abs(ours, theirs),
                        "" if steps_per_epoch == 1 else "between epoch starts ours moves per step, theirs stays"))
    return rows


def reference_commit(reference_dir: Path) -> str:
    """The reference copy's git commit, or a note that it is not a git checkout."""
    result = subprocess.run(["git", "-C", str(reference_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def markdown(rows: list[dict], unet_rows: list[dict], header_md: list[str], commit: str) -> str:
    lines = [
        "# DeCo-Diff: this project against the reference code, element by element",
        "",
        *header_md,
        "",
        f"Reference commit {commit} (fetched, never committed). Each row feeds the reference's",
        "function and this project's the same inputs (float32, CPU) and gives the largest absolute difference of the",
        f"outputs. Target: <= {TOLERANCE:g} (float precision) for the elements, <= 1e-4 for the UNets.",
        "",
        "| element | reference | this project | inputs | max abs diff | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['element']} | `{r['reference']}` | `{r['ours']}` | {r['inputs']} | "
                     f"{r['max_abs_diff']:.2e} | {r['note']} |")
    if unet_rows:
        lines += ["", "## UNets: a reference UNet with random weights against its conversion", "",
                  "15 classes, 32 x 32 latents, batch 2, every tensor random (seed 0); float32, CPU, 1 thread.", "",
                  markdown_table(unet_rows)]
    lines += ["", "## Differences that remain, on purpose", "", *REMAINING]
    return "\n".join(lines) + "\n"


REMAINING = [
    "- **Which patches are masked**: the reference draws with numpy (`np.random.shuffle` per sample), this project",
    "  with torch's generator (one batched `argsort`): the same count rule and patch alignment (0 difference above)",
    "  and the same per-cell frequencies up to sampling noise, but not the same draw for a seed.",
    "- **Patch size per sample**: the reference draws one patch size per batch, this project one per sample (same",
    "  marginal distribution; less correlated batches). With one patch size in a batch the shuffling is identical.",
    "- **Posterior mean in training**: the reference samples the posterior (`latent_dist.sample()`) while training;",
    "  this project always encodes with the mean (which allows caching latents). At test time both use the mean.",
    "- **Learning rate between epoch starts**: the reference steps its schedule once per epoch, this project once per",
    "  optimiser step on the same curve (equal at every epoch start, row above).",
    "- **Image preprocessing** (not a function compared here): the reference resizes images with PIL's bicubic",
    "  `Image.resize` and thresholds bicubically resized masks at > 0; this project uses OpenCV's area averaging",
    "  (bilinear when enlarging) and exact nearest-neighbour masks. On scikit-image's photos resized to 288 px the",
    "  images differ by 0.0035 on average and 0.11 at most (in [0, 1]). Released weights therefore see slightly",
    "  different inputs, and metrics use slightly thinner masks than the reference's.",
    "- **Class indices**: the reference numbers MVTec AD's and VisA's categories in a fixed order of its own; this",
    "  project by sorted names. `reference_checkpoint` re-orders the class embedding by name, so converted weights",
    "  condition each category as the reference does (tests/unit/models/deco_diff/test_reference_checkpoint.py).",
    "- **Augmentation**: the reference translates training images by up to 4 px (p = 0.5) before cropping; this",
    "  project's datamodules have no random augmentation (which lets DeCo-Diff cache its training latents).",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path(DEFAULT_REFERENCE),
                        help="a copy of the DeCo-Diff reference code (default: $DECO_DIFF_REFERENCE or /tmp/ref)")
    parser.add_argument("--skip-unets", action="store_true",
                        help="leave out the UNet presets (minutes); print the elements, write no results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with reference_code(args.reference, "diffusion", "train_DeCo_Diff", "evaluation_DeCo_Diff") as ref:
        rows = [*training_rows(ref), shuffle_row(ref), *chain_rows(ref), *detection_rows(ref)]
    rows.extend(learning_rate_rows())
    if not args.skip_unets:
        unet_rows = unet_parity_rows(args.reference)
        # The command without the path of the reference copy, which is the reader's own.
        argv = [("--reference=<DeCo-Diff copy>" if a.startswith("--reference=") else
                 "<DeCo-Diff copy>" if i and sys.argv[i - 1] == "--reference" else a) for i, a in enumerate(sys.argv)]
        header, header_md = results_header("float32, one torch thread", argv=argv)
        commit = reference_commit(args.reference)
        record = {**header, "reference_commit": commit, "elements": rows, "unets": unet_rows}
        atomic_write_text(RESULTS / "reference_parity.json", json.dumps(record, indent=2) + "\n")
        atomic_write_text(RESULTS / "reference_parity.md", markdown(rows, unet_rows, header_md, commit))
    for r in rows:
        print(f"{r['max_abs_diff']:.2e}  {r['element']}")
    print(shlex.join(sys.argv))


if __name__ == "__main__":
    main()
