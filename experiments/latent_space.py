"""Which offline latent space, and which DeCo-Diff settings, for the embedded data: chosen on a tuning split.

The paper's DeCo-Diff works in Stable Diffusion's VAE latent space, which cannot be downloaded here. Each
candidate below is a stage-1 autoencoder (``configs/autoencoder/embedded.yaml`` with overrides) plus DeCo-Diff
(``configs/deco_diff/embedded.yaml`` with overrides), trained through the CLI exactly as `make run` trains them.
Candidates are trained on the training images of the **tuning split** (the embedded data generated with
``data_seed`` 1) and scored on its test images; the test split (``data_seed`` 0, what `make run` reports) is never
used to choose. For each trained model the test-time settings (chain, map clips/blurs, fusion) are then tried on
the tuning split from one pass of the model per chain (the map settings only change how the two discrepancies
are turned into a map, :func:`~anomaly_diff.models.deco_diff.torch_model.compose_maps`).

    python experiments/latent_space.py train NAME        # one candidate: autoencoder + DeCo-Diff, tuning split
    python experiments/latent_space.py maps NAME         # test-time settings of a trained candidate, tuning split
    python experiments/latent_space.py test NAME         # score a candidate on the test split (once, at the end)
    python experiments/latent_space.py report            # write experiments/results/latent_space.{md,json}

Everything is kept in .cache/latent_space/NAME/ (record.json, the autoencoder, the DeCo-Diff checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from bench_common import results_header

from anomaly_diff.data import Embedded
from anomaly_diff.metrics import AnomalyMetrics
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig, compose_maps
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
WORK = ROOT / ".cache" / "latent_space"
CLI = str(Path(sys.executable).with_name("anomaly-diff"))
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRC", "pixel_AUPRO")
SPLITS = {"tuning": {"data_seed": 1, "root": ".cache/embedded_tuning"}, "test": {"data_seed": 0,
                                                                               "root": ".cache/embedded"}}

# Every candidate's DeCo-Diff is trained for the same 40 epochs, so the rows compare latent spaces, not budgets.
DECO_DIFF = {"trainer.max_epochs": 40}
# The pretrained encoder's decoder is lighter than the KL autoencoder's (64 instead of 128 channels at 32 x 32,
# half the step time): its latent already carries the features, the decoder only draws them.
PRETRAINED = {"model.init_args.encoder": "pretrained", "model.init_args.block_out_channels": [32, 32, 64, 64]}

# name -> (autoencoder overrides, DeCo-Diff overrides); dotted keys under model.init_args / trainer.
CANDIDATES: dict[str, tuple[dict | str, dict]] = {
    # (a) today's AutoencoderKL, trained from scratch (40 epochs).
    "kl": ({}, DECO_DIFF),
    # (c) the same, trained twice as long.
    "kl_long": ({"trainer.max_epochs": 80}, DECO_DIFF),
    # (d) DeCo-Diff in the frozen EfficientNet-Lite0 feature space (stages 1-2, 64 channels at stride 8) with a
    # trained decoder.
    "features": ({**PRETRAINED, "model.init_args.latent_channels": None, "trainer.max_epochs": 20}, DECO_DIFF),
    # (b) the pretrained encoder with a learned 1x1 projection to 4 latent channels (SD's width).
    "features_proj4": ({**PRETRAINED, "model.init_args.latent_channels": 4, "trainer.max_epochs": 20}, DECO_DIFF),
    # DeCo-Diff's epochs, in the latent space of "features" (its autoencoder reused): 60 epochs, checkpoints at
    # 20, 40 and 60.
    "features_e60": ("features", {"trainer.max_epochs": 60, "checkpoint.every_n_epochs": 20,
                                  "checkpoint.save_top_k": -1}),
}


def cli_args(overrides: dict) -> list[str]:
    """``--key=value`` arguments, values as JSON/YAML (``None`` -> ``null``)."""
    return [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in overrides.items()]


def split_args(split: dict) -> list[str]:
    return [f"--data.init_args.data_seed={split['data_seed']}", f"--data.init_args.root={split['root']}"]


def run(args: list[str]) -> float:
    """Run the CLI from the repository root; return the seconds it took."""
    start = time.time()
    print("$", shlex.join(args), flush=True)
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def load_record(name: str) -> dict:
    path = WORK / name / "record.json"
    return json.loads(path.read_text()) if path.exists() else {"name": name}


def save_record(record: dict) -> None:
    atomic_write_text(WORK / record["name"] / "record.json", json.dumps(record, indent=2) + "\n")


def read_metrics(save_dir: Path) -> dict[str, float]:
    metrics = json.loads(next(save_dir.rglob("metrics.json")).read_text())
    return {m: metrics["mean"][m] for m in METRICS}


def train(name: str) -> None:
    """Train the candidate's autoencoder and DeCo-Diff on the tuning split; DeCo-Diff's test runs on its test images."""
    autoencoder_overrides, deco_overrides = CANDIDATES[name]
    folder = WORK / name
    record = {"name": name, "autoencoder_overrides": autoencoder_overrides, "deco_diff_overrides": deco_overrides}
    split = SPLITS["tuning"]
    autoencoder = folder / "autoencoder"
    if isinstance(autoencoder_overrides, str):  # another candidate's autoencoder
        autoencoder = WORK / autoencoder_overrides / "autoencoder"
    else:
        record["autoencoder_seconds"] = run(
            [CLI, "fit", "--config", "configs/autoencoder/embedded.yaml", *split_args(split), "--test_after_fit=false",
             f"--model.init_args.export_dir={autoencoder}", f"--trainer.logger.init_args.save_dir={folder}",
             "--trainer.enable_progress_bar=false", *cli_args(autoencoder_overrides)])
    record["deco_diff_seconds"] = run(
        [CLI, "fit", "--config", "configs/deco_diff/embedded.yaml", *split_args(split),
         f"--model.init_args.autoencoder={autoencoder}", f"--trainer.logger.init_args.save_dir={folder}",
         "--trainer.enable_progress_bar=false", "--heatmaps.per_category=0", "--report.examples=0",
         *cli_args(deco_overrides)])
    record["checkpoint"] = str(next((folder / "deco_diff").rglob("last.ckpt")))
    record["tuning"] = read_metrics(folder / "deco_diff")
    record["reconstruction_l1"] = reconstruction_error(autoencoder, split)
    save_record(record)
    print(json.dumps(record, indent=2))


def datamodule(split: dict) -> Embedded:
    data = Embedded(root=str(ROOT / split["root"]), image_size=144, crop_size=128, data_seed=split["data_seed"],
                    eval_batch_size=32)
    data.prepare_data()
    data.setup("test")
    return data


@torch.no_grad()
def reconstruction_error(autoencoder: Path, split: dict) -> float:
    """Mean absolute error in ``[0, 1]`` units of the autoencoder's reconstruction of the normal test images."""
    codec = LatentCodec(str(autoencoder))
    total, count = 0.0, 0
    for batch in datamodule(split).test_dataloader():
        good = batch["label"] == 0
        if good.any():
            image = batch["image"][good]
            total += (codec.decode(codec.encode(image)) - image).abs().sum().item()
            count += image.numel()
    return total / count


@torch.no_grad()
def discrepancies(checkpoint: str, split: dict, chains: list[list[int]]) -> dict:
    """One pass of the model per chain over the split's test images: the raw image and latent discrepancies."""
    model = DeCoDiff.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    net = model.model
    out = {"masks": [], "labels": [], "categories": [], "chains": {tuple(c): {"image": [], "latent": []}
                                                                   for c in chains}}
    for batch in datamodule(split).test_dataloader():
        classes = model.class_indices(batch["category"])
        latents = net.codec.encode(batch["image"])
        decoded = net.codec.decode(latents, clamp=False)
        for chain in chains:
            corrected = net.correct(latents, classes, chain).float()
            image_diff = 2.0 * (net.codec.decode(corrected, clamp=False) - decoded).abs().amax(dim=1)
            out["chains"][tuple(chain)]["image"].append(image_diff)
            out["chains"][tuple(chain)]["latent"].append((corrected - latents).abs().mean(dim=1))
        out["masks"].append(batch["mask"])
        out["labels"].append(batch["label"])
        out["categories"] += list(batch["category"])
    return out


def score_maps(parts: dict, chain: tuple[int, ...], cfg: AnomalyMapConfig, only: str | None = None) -> dict:
    """Metrics of the maps ``cfg`` makes from stored discrepancies; ``only`` = "image"/"latent" scores one part."""
    metrics = AnomalyMetrics()
    start = 0
    for image_diff, latent_diff, masks, labels in zip(parts["chains"][chain]["image"], parts["chains"][chain]["latent"],
                                                      parts["masks"], parts["labels"], strict=True):
        fused, image_map, latent_map = compose_maps(image_diff, latent_diff, cfg)
        maps = {"image": image_map, "latent": latent_map, None: fused}[only]
        scores = maps.flatten(1).topk(cfg.score_top_k, dim=1).values.mean(1)
        metrics.update(maps, masks, scores, labels, parts["categories"][start:start + len(maps)])
        start += len(maps)
    mean = metrics.compute()["mean"]
    return {m: mean[m] for m in METRICS}


def maps(name: str) -> None:
    """Try chains and map settings of a trained candidate on the tuning split; keep every row.

    Per chain: the latent part alone over clips and blurs; then, with the best latent setting, the image part alone
    and both fused (geometric and arithmetic), over image blurs and clips. Only the tuning split chooses; every row
    is scored on the test split too, for the record.
    """
    record = load_record(name)
    chains = [[0], [1, 0], [2, 1, 0], [4, 2, 0]]
    parts = {split: discrepancies(record["checkpoint"], SPLITS[split], chains) for split in SPLITS}
    base = DeCoDiff.load_from_checkpoint(record["checkpoint"], map_location="cpu").model.map_config
    rows = []

    def add(chain: list[int], cfg: AnomalyMapConfig, only: str | None) -> dict:
        row = {"chain": chain, "map": dataclasses.asdict(cfg), "only": only,
               **{split: score_maps(parts[split], tuple(chain), cfg, only) for split in SPLITS}}
        row["tuning_mean"] = sum(row["tuning"].values()) / len(METRICS)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("chain", "only", "tuning_mean")}), json.dumps(row["map"]), flush=True)
        return row

    for chain in chains:
        latent_rows = [add(chain, dataclasses.replace(base, latent_clip=clip, latent_scale=1.0 / clip,
                                                      latent_sigma=sigma), "latent")
                       for clip in (0.2, 0.5, 1.0, 100.0) for sigma in (0.5, 1.0, 2.0)]
        best = AnomalyMapConfig(**max(latent_rows, key=lambda r: r["tuning_mean"])["map"])
        for image_sigma in (1.5, 3.0):
            for image_clip in (0.4, 100.0):
                cfg = dataclasses.replace(best, image_sigma=image_sigma, image_clip=image_clip,
                                          image_scale=1.0 / image_clip)
                add(chain, cfg, "image")
                for fusion in ("geometric", "arithmetic"):
                    add(chain, dataclasses.replace(cfg, fusion=fusion), None)
    record["maps"] = rows
    record["best_map"] = max(rows, key=lambda r: r["tuning_mean"])
    save_record(record)
    print(json.dumps(record["best_map"], indent=2))


def test(name: str) -> None:
    """Score a trained candidate (its DeCo-Diff checkpoint, with the map settings it was trained with) on the test
    split: for the record only, after the choice."""
    record = load_record(name)
    save_dir = WORK / name / "test_split"
    run([CLI, "test", "--config", "configs/deco_diff/embedded.yaml", "--ckpt_path", record["checkpoint"],
         *split_args(SPLITS["test"]), f"--trainer.logger.init_args.save_dir={save_dir}",
         "--trainer.enable_progress_bar=false", "--heatmaps.per_category=0", "--report.examples=0"])
    record["test"] = read_metrics(save_dir)
    save_record(record)
    print(json.dumps(record["test"]))


def epochs(name: str) -> None:
    """Score the candidate's intermediate checkpoints with the chosen test-time settings (the embedded config's)."""
    record = load_record(name)
    config = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    cfg = AnomalyMapConfig(**config["anomaly_map"])
    chain = tuple(config["timesteps"])
    rows = []
    for checkpoint in sorted((WORK / name / "deco_diff").rglob("epoch*.ckpt")):
        parts = {split: discrepancies(str(checkpoint), SPLITS[split], [list(chain)]) for split in SPLITS}
        row = {"checkpoint": checkpoint.name, "chain": list(chain), "map": dataclasses.asdict(cfg),
               **{split: score_maps(parts[split], chain, cfg) for split in SPLITS}}
        row["tuning_mean"] = sum(row["tuning"].values()) / len(METRICS)
        rows.append(row)
        print(json.dumps(row), flush=True)
    record["epochs"] = rows
    save_record(record)


SETTINGS_A = {"image_clip": 100.0, "image_sigma": 1.5, "latent_clip": 100.0, "latent_sigma": 0.5,
              "fusion": "arithmetic"}


def is_settings_a(row: dict) -> bool:
    """Whether a section-2 row is the settings A (fused, chain [0])."""
    return row["chain"] == [0] and row["only"] is None and all(row["map"][k] == v for k, v in SETTINGS_A.items())


def settings_name(record: dict) -> str:
    """``A`` or ``reference``: the test-time settings a candidate's own DeCo-Diff run was tested with."""
    config = yaml.safe_load(next((WORK / record["name"] / "deco_diff").rglob("config.yaml")).read_text())
    anomaly_map = config["model"]["init_args"]["anomaly_map"]
    return "A" if all(anomaly_map[k] == v for k, v in SETTINGS_A.items()) else "reference"


def percent(values: dict) -> str:
    return " | ".join(f"{100 * values[m]:.1f}" for m in METRICS)


def report() -> None:
    """Collect every candidate's record into experiments/results/latent_space.{json,md}."""
    records = {name: load_record(name) for name in CANDIDATES if (WORK / name / "record.json").exists()}
    header, header_md = results_header("report only: the runs' own times are in the tables")
    atomic_write_text(RESULTS / "latent_space.json", json.dumps({**header, "candidates": records}, indent=2) + "\n")
    lines = [
        "# The offline latent space and DeCo-Diff's settings for the embedded data, chosen on a tuning split",
        "",
        *header_md,
        "",
        "Written by the command above (`report`) from the runs of its `train`, `maps`, `epochs` and "
        "`test` actions (module docstring). Tuning split: the realistic embedded data of `data_seed` 1 (models "
        "trained on its training images, scored on its test images); test split: the test images of `data_seed` 0, "
        "what `make run` reports, scored after the choice and only for the record. Mean over the 9 categories, "
        "percent. The references on the same images (experiments/results/make_run_references.md): feature_knn "
        "tuning 94.5 / 97.7 / 53.8 / 95.2, test 96.6 / 98.2 / 51.0 / 96.3.",
        "",
        "## 1. Latent spaces (DeCo-Diff 40 epochs each)",
        "",
        "Test-time settings: `reference` = chain [0], the reference's clips (image 0.4, latent 0.2), blurs 1.5 / 1, "
        "geometric fusion; `A` = chain [0], no clips, blurs 1.5 / 0.5, arithmetic fusion (the best for `features` in "
        "section 2). Rows at `A` compare the latent spaces at equal settings.",
        "",
        "| candidate | autoencoder | reconstruction L1 | autoencoder s | DeCo-Diff s | test-time settings "
        "| tuning: image AUROC | pixel AUROC | pixel AUPRC | AUPRO | mean "
        "| test: image AUROC | pixel AUROC | pixel AUPRC | AUPRO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        if "tuning" not in r or isinstance(CANDIDATES[name][0], str):
            continue
        rows = [(settings_name(r), r["tuning"], r.get("test"))]
        if settings_name(r) != "A":  # its row at the settings A, from section 2
            rows += [("A", row["tuning"], row["test"]) for row in r.get("maps", []) if is_settings_a(row)]
        for settings, tuning, test_split in rows:
            test_cells = percent(test_split) if test_split else "- | - | - | -"
            lines.append(f"| {name} | `{json.dumps(r['autoencoder_overrides'])}` | {r['reconstruction_l1']:.4f} | "
                         f"{r.get('autoencoder_seconds', 0):.0f} | {r['deco_diff_seconds']:.0f} | {settings} | "
                         f"{percent(tuning)} | {100 * sum(tuning.values()) / len(METRICS):.1f} | {test_cells} |")
    lines += ["", "Seconds are wall time on the 2-core machine shared by up to four single-threaded runs "
              "(OMP_NUM_THREADS=1), so they compare candidates, not `make run` (make_run.md has its own times); `kl`'s "
              "DeCo-Diff time also holds about 40 minutes paused while `make run` was timed.", ""]
    for name, r in records.items():
        if "maps" not in r:
            continue
        lines += [f"## 2. Test-time settings of `{name}` ({len(r['maps'])} rows, all in latent_space.json; the "
                  "best 15 by tuning mean)", "",
                  "| chain | parts | latent clip / sigma | image clip / sigma | fusion | tuning: image AUROC | pixel "
                  "AUROC | pixel AUPRC | AUPRO | mean | test: image AUROC | pixel AUROC | pixel AUPRC | AUPRO |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in sorted(r["maps"], key=lambda x: -x["tuning_mean"])[:15]:
            m = row["map"]
            lines.append(f"| {row['chain']} | {row['only'] or 'both'} | {m['latent_clip']} / {m['latent_sigma']} | "
                         f"{m['image_clip']} / {m['image_sigma']} | {m['fusion']} | {percent(row['tuning'])} | "
                         f"{100 * row['tuning_mean']:.1f} | {percent(row['test'])} |")
        lines.append("")
    for name, r in records.items():
        if "epochs" not in r:
            continue
        first = r["epochs"][0]
        lines += [f"## 3. DeCo-Diff epochs (`{name}`, 60 epochs with checkpoints at 20 / 40 / 60; chain "
                  f"{first['chain']}, map settings `{json.dumps(first['map'])}`)", "",
                  "| checkpoint | tuning: image AUROC | pixel AUROC | pixel AUPRC | AUPRO | mean | test: image AUROC | "
                  "pixel AUROC | pixel AUPRC | AUPRO |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["epochs"]:
            lines.append(f"| {row['checkpoint']} | {percent(row['tuning'])} | {100 * row['tuning_mean']:.1f} | "
                         f"{percent(row['test'])} |")
        lines.append("")
    atomic_write_text(RESULTS / "latent_space.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("train", "maps", "test", "epochs", "report"))
    parser.add_argument("name", nargs="?", choices=sorted(CANDIDATES))
    args = parser.parse_args()
    if args.action == "report":
        report()
    else:
        {"train": train, "maps": maps, "test": test, "epochs": epochs}[args.action](args.name)


if __name__ == "__main__":
    main()
