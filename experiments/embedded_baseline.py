"""What simple baselines and a strong reference score on the embedded data set: how hard the set is.

Three baselines, all fitted per category on the training normals only:

- ``colour_gaussian``: one Gaussian over the RGB colours of all training pixels; a pixel's score is its Mahalanobis
  distance to it.
- ``position_gaussian``: an independent Gaussian per pixel position and channel; a pixel's score is the root of the
  summed squared z-scores of its three channels (it knows where an object's parts should be).
- ``feature_knn``: the strong reference, PatchCore without coreset subsampling (Roth et al., CVPR 2022: "Towards
  Total Recall in Industrial Anomaly Detection", Eq. 1-2 with the full memory bank): the distance of each test
  feature to its nearest training feature of the category, features of the frozen ImageNet EfficientNet-Lite0
  (this project's offline backbone, stages 1-2 at stride 8). That family scores about 99 % image AUROC on MVTec AD,
  so it tells how much harder than MVTec AD these defects are.

The anomaly map is the score blurred by a Gaussian (sigma 4 px, as anomaly maps usually are); the image score is
the map's maximum. Metrics per category over its test split: image AUROC, pixel AUROC and pixel AUPRC (average
precision) from scikit-learn, and the image AUROC of normal-vs-each-defect-type. The data set is generated fresh
(into a temporary directory) so its generation time is measured too.

Each run is one entry ``<difficulty>/seed<seed>`` of results/embedded_baseline.json (entries of other settings are
kept, so both difficulties and the calibration seed live in one file); results/embedded_baseline.md is rewritten
from all entries. A seed-0 run also draws results/embedded_baseline_examples.png (``realistic``) or
results/embedded_baseline_examples_hard.png: per category one normal test image and one per defect type, mask outlined.

    python experiments/embedded_baseline.py [--seed 0] [--difficulty realistic] [--image-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import header_lines, results_header
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_diff.data.synthetic import DEFECT_TYPES, DIFFICULTIES, generate_embedded_dataset
from anomaly_diff.models.components.backbone import FeatureExtractor
from anomaly_diff.utils.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
BLUR_SIGMA = 4.0


def load_images(folder: Path) -> np.ndarray:
    """All PNGs of a folder, sorted, as ``(N, H, W, 3)`` float64 in ``[0, 1]``."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0
                     for p in sorted(folder.glob("*.png"))])


def load_test(category_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Test images ``(N, H, W, 3)``, masks ``(N, H, W)`` bool, labels ``(N,)`` and each image's folder name."""
    images, masks, labels, kinds = [], [], [], []
    for folder in sorted((category_dir / "test").iterdir()):
        batch = load_images(folder)
        images.append(batch)
        kinds += [folder.name] * len(batch)
        if folder.name == "good":
            masks.append(np.zeros(batch.shape[:3], dtype=bool))
            labels.append(np.zeros(len(batch), dtype=int))
        else:
            mask_dir = category_dir / "ground_truth" / folder.name
            masks.append(np.stack([np.asarray(Image.open(p)) > 127 for p in sorted(mask_dir.glob("*_mask.png"))]))
            labels.append(np.ones(len(batch), dtype=int))
    return np.concatenate(images), np.concatenate(masks), np.concatenate(labels), kinds


def colour_gaussian(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each test pixel's colour to the Gaussian of all training colours, ``(N, H, W)``."""
    pixels = train.reshape(-1, 3)
    mean = pixels.mean(0)
    precision = np.linalg.inv(np.cov(pixels, rowvar=False) + 1e-6 * np.eye(3))
    centred = test - mean
    return np.sqrt(np.einsum("nhwc,cd,nhwd->nhw", centred, precision, centred))


def position_gaussian(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Root of the summed squared per-position, per-channel z-scores of each test pixel, ``(N, H, W)``."""
    z = (test - train.mean(0)) / (train.std(0) + 1e-3)
    return np.sqrt((z**2).sum(-1))


_FEATURES: list[FeatureExtractor] = []  # built once, on first use


@torch.no_grad()
def feature_knn(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Distance of each test feature to its nearest training feature, upsampled to ``(N, H, W)``."""
    if not _FEATURES:
        _FEATURES.append(FeatureExtractor(layers=(1, 2), output_stride=8))

    def features(images: np.ndarray) -> torch.Tensor:
        batches = torch.from_numpy(images).float().permute(0, 3, 1, 2).split(16)
        return torch.cat([_FEATURES[0](batch) for batch in batches])

    bank = features(train).permute(0, 2, 3, 1).flatten(0, 2)
    query = features(test)
    n, _, h, w = query.shape
    rows = query.permute(0, 2, 3, 1).flatten(0, 2).split(4096)  # bounded memory of the distance matrix
    distance = torch.cat([torch.cdist(chunk, bank).amin(1) for chunk in rows])
    maps = F.interpolate(distance.reshape(n, 1, h, w), size=test.shape[1:3], mode="bilinear", align_corners=False)
    return maps[:, 0].double().numpy()


BASELINES = {"colour_gaussian": colour_gaussian, "position_gaussian": position_gaussian, "feature_knn": feature_knn}


def evaluate(scores: np.ndarray, masks: np.ndarray, labels: np.ndarray, kinds: list[str],
             defect_types: tuple[str, ...]) -> dict[str, float]:
    """Blur the per-pixel scores into anomaly maps and score them against the ground truth."""
    maps = np.stack([ndimage.gaussian_filter(s, BLUR_SIGMA) for s in scores])
    image_scores = maps.reshape(len(maps), -1).max(1)
    result = {
        "image_AUROC": roc_auc_score(labels, image_scores),
        "pixel_AUROC": roc_auc_score(masks.ravel(), maps.ravel()),
        "pixel_AUPRC": average_precision_score(masks.ravel(), maps.ravel()),
    }
    kinds = np.asarray(kinds)
    for defect in defect_types:
        subset = (kinds == "good") | (kinds == defect)
        if (kinds == defect).any():
            result[f"image_AUROC/{defect}"] = roc_auc_score(labels[subset], image_scores[subset])
    return {key: float(value) for key, value in result.items()}


def contact_sheet(root: Path, categories: list[str], defect_types: tuple[str, ...], thumb: int = 128,
                  goods: int = 1) -> Image.Image:
    """One row per category: ``goods`` normal test images, then one image per defect type with its mask outlined.

    Tiles are ``thumb`` px, the working resolution of configs/data/embedded.yaml.
    """
    rows = []
    for category in categories:
        tiles = [Image.open(root / category / "test" / "good" / f"{i:03d}.png") for i in range(goods)]
        tiles = [np.asarray(tile.resize((thumb, thumb), Image.Resampling.LANCZOS)) for tile in tiles]
        for defect in defect_types:
            image = Image.open(root / category / "test" / defect / "000.png").resize((thumb, thumb),
                                                                                    Image.Resampling.LANCZOS)
            mask = Image.open(root / category / "ground_truth" / defect / "000_mask.png").resize(
                (thumb, thumb), Image.Resampling.NEAREST)
            image = np.asarray(image).copy()
            image[find_boundaries(np.asarray(mask) > 127, mode="outer")] = (255, 0, 0)
            tiles.append(image)
        rows.append(np.concatenate(tiles, axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def markdown(entries: dict) -> str:
    """All entries of the json as one page: per entry its command, data and one table per baseline."""
    lines = [
        "# Baselines and a strong reference on the embedded data set",
        "",
        "Anomaly map: per-pixel score blurred with a Gaussian (sigma 4 px); image score: the map's maximum. "
        "`colour_gaussian`: Mahalanobis distance to one RGB Gaussian of all training pixels; `position_gaussian`: "
        "per-position, per-channel z-scores; `feature_knn`: PatchCore-style nearest training feature of the pretrained "
        "EfficientNet-Lite0 (stride 8). The last columns are the image AUROC of normal vs one defect type.",
        "",
        "Seed 0 is the data everyone reports on; seed 1 is where the `realistic` defects were calibrated (target: "
        "`feature_knn` mean image AUROC 95-98, pixel AUROC >= 95, MVTec AD-like). With 10 normal and 20 defective test "
        "images per category the per-category image AUROC moves by several points between seeds (compare grass at "
        "seeds 0 and 1). On the stochastic textures (grass, gravel, tissue) `feature_knn`'s image score is often "
        "the map's maximum in an image corner (zero padding of the backbone at a randomly cropped texture's border), "
        "so a defect there counts only if it scores above the corners: contamination and holes do, dark stains and "
        "thin lines on gravel mostly do not although they are plain to the eye (embedded_baseline_examples.png).",
        "",
        "## Summary (mean over categories)",
        "",
        "| entry | baseline | image_AUROC | pixel_AUROC | pixel_AUPRC |",
        "|---|---|---|---|---|",
    ]
    for key, report in entries.items():
        for name, result in report["baselines"].items():
            mean = result["mean"]
            lines.append(f"| {key} | {name} | {mean['image_AUROC']:.3f} | {mean['pixel_AUROC']:.3f} | "
                         f"{mean['pixel_AUPRC']:.3f} |")
    for key, report in entries.items():
        defect_types = report["defect_types"]
        lines += [
            "",
            f"## {key}",
            "",
            *[line if line.endswith("  ") else line + "  " for line in header_lines(report)],
            f"Data: {json.dumps(report['data_parameters'])} (generator version {report['generator_version']})  ",
            f"Generation time of the data set: {report['generation_seconds']:.1f} s",
        ]
        for name, result in report["baselines"].items():
            keys = ["image_AUROC", "pixel_AUROC", "pixel_AUPRC"] + [f"image_AUROC/{d}" for d in defect_types]
            lines += ["", f"### {key}: {name}", "", "| category | " + " | ".join(keys) + " |",
                      "|---" * (len(keys) + 1) + "|"]
            for category, metrics in {**result["per_category"], "**mean**": result["mean"]}.items():
                lines.append(f"| {category} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="realistic")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    defect_types = DEFECT_TYPES[args.difficulty]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = generate_embedded_dataset(Path(tmp) / "embedded", seed=args.seed, image_size=args.image_size,
                                         difficulty=args.difficulty)
        generation_seconds = time.perf_counter() - start
        manifest = json.loads((root / "manifest.json").read_text())
        categories = manifest["parameters"]["categories"]
        baselines = {name: {"per_category": {}} for name in BASELINES}
        for category in categories:
            train = load_images(root / category / "train" / "good")
            test, masks, labels, kinds = load_test(root / category)
            for name, baseline in BASELINES.items():
                baselines[name]["per_category"][category] = evaluate(baseline(train, test), masks, labels, kinds,
                                                                     defect_types)
            print(category, {k: round(v, 3) for k, v in baselines["feature_knn"]["per_category"][category].items()},
                  flush=True)
        for result in baselines.values():
            keys = next(iter(result["per_category"].values())).keys()
            result["mean"] = {k: float(np.mean([m[k] for m in result["per_category"].values()])) for k in keys}
        RESULTS.mkdir(exist_ok=True)
        if args.seed == 0:
            suffix = "" if args.difficulty == "realistic" else f"_{args.difficulty}"
            contact_sheet(root, categories, defect_types).save(RESULTS / f"embedded_baseline_examples{suffix}.png",
                                                               optimize=True)
    header, _ = results_header(argv=[os.path.relpath(__file__), *sys.argv[1:]])
    report = {
        **header,
        "data_parameters": manifest["parameters"],
        "generator_version": manifest["version"],
        "defect_types": list(defect_types),
        "generation_seconds": generation_seconds,
        "baselines": baselines,
    }
    path = RESULTS / "embedded_baseline.json"
    entries = json.loads(path.read_text()) if path.exists() else {}
    if "baselines" in entries:  # the single-run format of generator version 1: superseded
        entries = {}
    entries[f"{args.difficulty}/seed{args.seed}"] = report
    entries = dict(sorted(entries.items(), key=lambda item: (item[0].split("/")[0] != "realistic", item[0])))
    atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
    atomic_write_text(RESULTS / "embedded_baseline.md", markdown(entries))
    print(markdown({f"{args.difficulty}/seed{args.seed}": report}))


if __name__ == "__main__":
    main()
