"""Category-free inference: how often the category predictor is right, and what predicted categories cost a model.

The models condition each image on its category; a flat folder of mixed images has none, so
:class:`~anomaly_diff.models.components.category_classifier.CategoryClassifier` predicts it (nearest class mean of
frozen EfficientNet-Lite0 features, fitted on the training normals). This script measures:

1. The classifier's accuracy (overall, per category, on the normal and the anomalous test images, and the confusions)
   on the test images of the embedded data (realistic, data_seed 0) at 128 px (configs/data/embedded.yaml) and at
   64 px (configs/drdc/embedded_data.yaml), fitted on the training normals of the same data, exactly as ``fit``
   fits it (the training split less the validation share); and on the tiny MVTec AD / VisA / BTAD fixtures of the
   tests (tests/helpers/data.py), whose categories are the same random noise: there, chance is the right answer.
2. DeCo-Diff's image/pixel AUROC, pixel AUPRC and AUPRO with the given and with the predicted categories
   (:func:`score_category_sources`, which takes any :class:`~anomaly_diff.models.base.AnomalyModule`), from the
   trained checkpoint of the chosen latent space in .cache/latent_space/features_proj4 (trained on the realistic
   embedded data of data_seed 1, the tuning split), scored on the test images of that data at the test-time settings
   of configs/deco_diff/embedded.yaml; the checkpoint predates category prediction, so its classifier is fitted here
   on the same training normals.

    OMP_NUM_THREADS=1 python experiments/category_prediction.py [--checkpoint PATH]

Writes experiments/results/category_prediction.{json,md}. Single-threaded, a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
import yaml
from bench_common import header_lines, results_header
from torch.utils.data import DataLoader

from anomaly_diff.data import BTAD, Embedded, MVTecAD, VisA
from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.metrics import AnomalyMetrics
from anomaly_diff.models.base import AnomalyModule
from anomaly_diff.models.components.category_classifier import CategoryClassifier
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the fixtures' writers

from tests.helpers.data import write_btad, write_mvtec_ad, write_visa_raw  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRC", "pixel_AUPRO")
CHECKPOINT = ROOT / ".cache/latent_space/features_proj4/deco_diff/embedded/version_0/checkpoints/last.ckpt"


def data_config(path: str, **overrides) -> dict:
    """The ``init_args`` of a data config file, root made absolute."""
    config = yaml.safe_load((ROOT / path).read_text())["init_args"] | overrides
    return config | {"root": str(ROOT / config["root"]), "num_workers": 0}


def loader(dataset, batch_size: int = 32) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def classifier_accuracy(datamodule: AnomalyDataModule) -> dict:
    """Fit a classifier on the datamodule's training normals (as ``fit`` does) and classify its test images."""
    datamodule.setup("fit")
    datamodule.setup("test")
    categories = datamodule.categories
    classifier = CategoryClassifier(len(categories))
    start = time.time()
    classifier.fit(loader(datamodule.train_dataset), lambda names: torch.tensor([categories.index(n) for n in names]))
    fit_seconds = time.time() - start
    rows, start = [], time.time()
    for batch in loader(datamodule.test_dataset):
        predicted = classifier(batch["image"]).tolist()
        rows += [(c, categories[p], int(y)) for c, p, y in zip(batch["category"], predicted, batch["label"],
                                                                strict=True)]
    predict_seconds = time.time() - start

    def accuracy(chosen: list) -> float:
        return sum(true == predicted for true, predicted, _ in chosen) / len(chosen)

    per_category = {c: accuracy([r for r in rows if r[0] == c]) for c in categories}
    wrong = Counter((true, predicted) for true, predicted, _ in rows if true != predicted)
    return {
        "train_images": len(datamodule.train_dataset), "test_images": len(rows),
        "image_size": datamodule.crop_size,
        "accuracy": accuracy(rows),
        "accuracy_normal": accuracy([r for r in rows if r[2] == 0]),
        "accuracy_anomalous": accuracy([r for r in rows if r[2] == 1]),
        "per_category": per_category,
        "confusions": [{"true": t, "predicted": p, "images": n} for (t, p), n in sorted(wrong.items())],
        "fit_seconds": fit_seconds, "predict_ms_per_image": 1000 * predict_seconds / len(rows),
    }


@torch.no_grad()
def score_pass(model: AnomalyModule, test_loader, seed: int = 0, condition=None) -> tuple[dict, list, float]:
    """One pass of ``model.predict_anomaly`` over labelled test batches, metrics grouped by the true category.

    Args:
        model: A trained model in eval mode.
        test_loader: Labelled test batches.
        seed: ``torch.manual_seed`` before the pass (a sampling model draws the same noise in every pass).
        condition: Maps a batch to the batch the model sees (e.g. other categories); ``None`` keeps it.

    Returns:
        ``({"mean": {name: value}, "per_category": {...}}`` of :data:`METRICS`, the ``(true, conditioned)``
        category of every image (``model.batch_categories``), seconds).
    """
    metrics, decisions, start = AnomalyMetrics(), [], time.time()
    torch.manual_seed(seed)
    for batch in test_loader:
        seen = condition(batch) if condition else batch
        prediction = model.predict_anomaly(seen)
        metrics.update(prediction["anomaly_map"].float(), batch["mask"], prediction["pred_score"].float(),
                       batch["label"], batch["category"])
        decisions += zip(batch["category"], model.batch_categories(seen), strict=True)  # kept by the model: no rerun
    result = metrics.compute()
    scores = {"mean": {m: result["mean"][m] for m in METRICS},
              "per_category": {c: {m: v[m] for m in METRICS} for c, v in result["per_category"].items()}}
    return scores, decisions, time.time() - start


def score_category_sources(model: AnomalyModule, test_loader, seed: int = 0) -> dict:
    """A model's metrics with the given and with the predicted categories, on a labelled test set.

    Each pass runs ``model.predict_anomaly`` over the loader with ``model.category_source`` set to ``"given"`` or
    ``"predicted"``, after ``torch.manual_seed(seed)``: a model that samples noise (DRDC) draws the same noise in both
    passes, so the two differ only where a predicted category differs from the true one. The metrics are always
    grouped by the true category (``batch["category"]``), as the Evaluator does.

    Args:
        model: A trained model in eval mode whose category classifier is fitted.
        test_loader: Labelled test batches (masks and labels).
        seed: The seed each pass starts from.

    Returns:
        ``{"given": metrics, "predicted": metrics, "classifier": {"accuracy", "per_category", "confusions"},
        "seconds": {...}}``, where ``metrics`` is ``{"mean": {name: value}, "per_category": {...}}`` of
        :data:`METRICS`.
    """
    out, before = {"seconds": {}}, model.category_source
    for source in ("given", "predicted"):
        model.category_source = source
        out[source], decisions, out["seconds"][source] = score_pass(model, test_loader, seed)
    model.category_source = before
    by_category = defaultdict(list)
    for true, predicted in decisions:
        by_category[true].append(true == predicted)
    wrong = Counter((true, predicted) for true, predicted in decisions if true != predicted)
    out["classifier"] = {
        "accuracy": sum(t == p for t, p in decisions) / len(decisions),
        "per_category": {c: sum(v) / len(v) for c, v in sorted(by_category.items())},
        "confusions": [{"true": t, "predicted": p, "images": n} for (t, p), n in sorted(wrong.items())],
    }
    return out


def fixtures(work: Path) -> dict[str, AnomalyDataModule]:
    """The tests' tiny MVTec AD, raw VisA and BTAD layouts (the writers' defaults: 4 normals, 32 px noise)."""
    size = {"image_size": 32, "crop_size": 32}
    return {
        "MVTec AD fixture (a, b)": MVTecAD(str(write_mvtec_ad(work / "mvtec")), **size),
        "VisA fixture (candle, pcb1)": VisA(str(write_visa_raw(work / "visa")), split_csv="split_csv/1cls.csv",
                                            **size),
        "BTAD fixture (01, 02)": BTAD(str(write_btad(work / "btad")), **size),
    }


def deco_diff(checkpoint: Path) -> dict:
    """Given vs predicted categories for the DeCo-Diff checkpoint, on the test split of its own training data."""
    from anomaly_diff.models.deco_diff import DeCoDiff
    from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig

    trained_on = yaml.safe_load(next(checkpoint.parents[1].glob("config.yaml")).read_text())["data"]["init_args"]
    settings = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    model = DeCoDiff.load_from_checkpoint(
        checkpoint, map_location="cpu", timesteps=settings["timesteps"], reverse_steps=None,
        anomaly_map=AnomalyMapConfig(**settings["anomaly_map"]),
    ).eval()
    data = Embedded(**data_config("configs/data/embedded.yaml", root=trained_on["root"],
                                  data_seed=trained_on["data_seed"], eval_batch_size=16))
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    fitted_before = bool(model.category_classifier.fitted.any())
    model.category_classifier.fit(loader(data.train_dataset), model.class_indices)  # what fit's on_fit_start does
    result = score_category_sources(model, data.test_dataloader())
    # For scale, what a wrong category costs: every image conditioned on the next category (sorted, cyclic).
    following = dict(zip(model.categories, model.categories[1:] + model.categories[:1], strict=True))
    result["wrong"], _, result["seconds"]["wrong"] = score_pass(
        model, data.test_dataloader(), condition=lambda batch: {**batch, "category": [following[c] for c in
                                                                                      batch["category"]]})
    return {"checkpoint": str(checkpoint.relative_to(ROOT)), "classifier_in_checkpoint": fitted_before,
            "data_seed": trained_on["data_seed"], "root": trained_on["root"], "timesteps": model.model.timesteps,
            "anomaly_map": settings["anomaly_map"], **result}


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def confusion_text(confusions: list[dict]) -> str:
    return ", ".join(f"{c['true']} -> {c['predicted']} ({c['images']})" for c in confusions) or "none"


def report(results: dict) -> str:
    lines = [
        "# Category prediction: accuracy, and what predicted categories cost DeCo-Diff",
        "",
        *header_lines(results)[:-1],
        header_lines(results)[-1] + "  ",
        f"Time: {results['seconds']:.0f} s, one thread (module docstring: what is measured).",
        "",
        "The predictor (`anomaly_diff/models/components/category_classifier.py`): cosine to the mean of each "
        "category's L2-normalised, globally pooled deepest-stage EfficientNet-Lite0 features (320 channels), fitted "
        "on the training normals as `fit` does (the training split less the validation share).",
        "",
        "## 1. Classifier accuracy on test images (percent)",
        "",
        "| data | px | train / test images | accuracy | normal | anomalous | lowest category | confusions "
        "(true -> predicted (images)) | fit s | ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["classifier"].items():
        low = min(r["per_category"], key=r["per_category"].get)
        lines.append(
            f"| {name} | {r['image_size']} | {r['train_images']} / {r['test_images']} | {percent(r['accuracy'])} | "
            f"{percent(r['accuracy_normal'])} | {percent(r['accuracy_anomalous'])} | {low} "
            f"{percent(r['per_category'][low])} | {confusion_text(r['confusions'])} | {r['fit_seconds']:.1f} | "
            f"{r['predict_ms_per_image']:.1f} |")
    lines += ["", "Per category: " + "; ".join(
        f"{name}: " + ", ".join(f"{c} {percent(v)}" for c, v in r["per_category"].items())
        for name, r in results["classifier"].items()) + ".", "",
        "The fixtures' categories are the same seeded random noise (tests/helpers/data.py), so no classifier can tell "
        "them apart: chance (50 %) is the expected result there, and the reason those tests keep their "
        "`<category>/` folders (or one selected category).", ""]
    d = results.get("deco_diff")
    if d:
        lines += [
            "## 2. DeCo-Diff with given and with predicted categories (percent, mean over categories)",
            "",
            f"Checkpoint `{d['checkpoint']}` (the chosen latent space of latent_space.md, trained on the realistic "
            f"embedded data of data_seed {d['data_seed']}); its test split ({d['root']}, 128 px), at the test-time "
            f"settings of configs/deco_diff/embedded.yaml (chain {d['timesteps']}, `{json.dumps(d['anomaly_map'])}`). "
            "The checkpoint predates category prediction (no class means), so the classifier was fitted on the "
            "same training normals here. `predicted` = `model.category_source=predicted`: every test image "
            "conditioned on its predicted category, metrics grouped by the true one.",
            "",
            "| categories | " + " | ".join(METRICS) + " | seconds |",
            "|---|" + "---|" * (len(METRICS) + 1),
        ]
        for source in ("given", "predicted", "wrong"):
            lines.append(f"| {source} | " + " | ".join(percent(d[source]["mean"][m]) for m in METRICS) +
                         f" | {d['seconds'][source]:.0f} |")
        lines += ["", "`wrong`, for scale: every image conditioned on the next category in sorted order (brick -> "
                  "camera, ..., tissue -> brick), what a systematically wrong prediction would cost."]
        c = d["classifier"]
        lines += ["", f"Classifier on these test images: {percent(c['accuracy'])} % right; confusions: "
                  f"{confusion_text(c['confusions'])}."]
        changed = [cat for cat in d["given"]["per_category"]
                   if d["given"]["per_category"][cat] != d["predicted"]["per_category"][cat]]
        lines += ["", "Categories whose metrics changed: " + (", ".join(changed) or "none") + "."]
        for cat in changed:
            lines.append(f"- {cat}: given " + " / ".join(percent(d["given"]["per_category"][cat][m]) for m in METRICS)
                         + ", predicted " + " / ".join(percent(d["predicted"]["per_category"][cat][m])
                                                       for m in METRICS))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="a DeCo-Diff checkpoint (see docstring)")
    parser.add_argument("--skip-deco-diff", action="store_true", help="measure the classifier only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    results = {"classifier": {}}
    for name, path in (("embedded realistic, data_seed 0", "configs/data/embedded.yaml"),
                       ("embedded realistic, data_seed 0 (DRDC's size)", "configs/drdc/embedded_data.yaml")):
        data = Embedded(**data_config(path))
        data.prepare_data()
        results["classifier"][name] = classifier_accuracy(data)
        print(name, json.dumps({k: results["classifier"][name][k] for k in ("accuracy", "confusions")}), flush=True)
    with tempfile.TemporaryDirectory() as work:
        for name, data in fixtures(Path(work)).items():
            results["classifier"][name] = classifier_accuracy(data)
            print(name, results["classifier"][name]["accuracy"], flush=True)
    if not args.skip_deco_diff:
        results["deco_diff"] = deco_diff(args.checkpoint.resolve())
        print(json.dumps({s: results["deco_diff"][s]["mean"] for s in ("given", "predicted")}), flush=True)
    results["seconds"] = time.time() - start
    results = {**results_header("one torch thread; 2 CPU cores shared with other jobs")[0], **results}
    atomic_write_text(RESULTS / "category_prediction.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(RESULTS / "category_prediction.md", report(results))


if __name__ == "__main__":
    main()
