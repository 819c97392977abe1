"""Score images from Python with a trained model: ``Detector.from_checkpoint(path).predict(images)``.

Example:
    >>> detector = Detector.from_checkpoint("runs/deco_diff/embedded/latest/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> result = detector.predict("photo.png", category="brick")  # doctest: +SKIP
    >>> result.anomaly_map.shape, result.score, result.anomalous  # doctest: +SKIP
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import ModelMixin
from PIL import Image

from anomaly_diff.data.dataset import build_transform
from anomaly_diff.data.image_io import load_rgb
from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from anomaly_diff.errors import ConfigError, MissingFileError
from anomaly_diff.models.base import AnomalyModule
from anomaly_diff.postprocessing import decide, to_image_resolution
from anomaly_diff.utils.imports import import_class

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
"""What :meth:`Detector.predict` accepts per image; a list of them, or a ``(B, 3, H, W)`` tensor, for several."""


@dataclass(frozen=True)
class Detection:
    """One image's result, at the image's own resolution.

    Attributes:
        anomaly_map: ``(H, W)`` float32, higher is more anomalous; NaN where the model did not look (outside the
            centre crop it was trained on, with ``region="crop"``).
        score: The image score.
        anomalous: ``score`` above the category's calibrated threshold; ``None`` if the model has none.
        normalized_score: The score on ``[0, 1]``, 0.5 at the threshold; ``None`` if uncalibrated.
        mask: ``(H, W)`` bool, the pixels above the category's calibrated pixel threshold; ``None`` if uncalibrated.
        category: The category the image was scored as.
        category_source: ``"given"`` or ``"predicted"`` (by the model's category classifier).
    """

    anomaly_map: np.ndarray
    score: float
    anomalous: bool | None
    normalized_score: float | None
    mask: np.ndarray | None
    category: str
    category_source: str


class Detector:
    """A trained anomaly model with its preprocessing and decisions: images in, :class:`Detection` out.

    The preprocessing is the training one (resize to ``image_size`` squared or, with ``keep_aspect``, the shorter side
    to ``image_size``; centre crop of ``crop_size``), read from the checkpoint; maps come back at each image's own
    size. Images are scored in batches of ``batch_size``.

    Args:
        model: A trained :class:`~anomaly_diff.models.base.AnomalyModule`.
        image_size: Side the images are resized to.
        crop_size: Side of the centre crop the model sees.
        batch_size: Images per forward pass.
        region: ``"crop"`` scores the centre crop the model was trained on (the rest of the map is NaN);
            ``"full"`` resizes the whole image to the model's input instead (a square, whatever ``keep_aspect``),
            so every pixel is scored.
        keep_aspect: The training resize kept the aspect ratio (the data module's ``keep_aspect``).
        compile: ``torch.compile`` the model's diffusers networks (UNet, autoencoder): faster after a first call
            that compiles for minutes; off by default (``experiments/results/bench_infer.md``).
    """

    def __init__(self, model: AnomalyModule, image_size: int, crop_size: int, batch_size: int = 8,
                 region: Literal["crop", "full"] = "crop", keep_aspect: bool = False, compile: bool = False) -> None:
        if region not in ("crop", "full"):
            raise ConfigError(f"region must be 'crop' or 'full', got {region!r}")
        self.model = model.eval()
        self.image_size = crop_size if region == "full" else image_size
        self.crop_size = crop_size
        self.keep_aspect = keep_aspect and region == "crop"
        self.batch_size = batch_size
        self.transform = build_transform(self.image_size, crop_size, self.keep_aspect)
        if compile:
            for module in model.modules():
                if isinstance(module, ModelMixin):
                    module.compile()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 8,
                        region: Literal["crop", "full"] = "crop", image_size: int | None = None,
                        crop_size: int | None = None, compile: bool = False) -> "Detector":
        """Load a checkpoint written by ``anomaly-diff fit`` (any model; it needs no other file).

        The checkpoint is unpickled: load only files you trust.

        Args:
            path: The ``.ckpt`` file.
            device: Where the model runs.
            batch_size: Images per forward pass.
            region: See :class:`Detector`.
            image_size: Resize side, if the checkpoint has no datamodule settings (a model trained outside the CLI).
            crop_size: Crop side, likewise.
            compile: See :class:`Detector`.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"checkpoint {path} does not exist; give a <run dir>/checkpoints/*.ckpt file")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        if class_path is None:
            raise ConfigError(f"checkpoint {path} does not name its model class (it was not written by anomaly-diff "
                             "fit); load the model yourself and build Detector(model, image_size, crop_size)")
        model_class = import_class(class_path)
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        image_size, crop_size = image_size or data.get("image_size"), crop_size or data.get("crop_size")
        if image_size is None or crop_size is None:
            raise ConfigError(f"checkpoint {path} holds no image_size/crop_size; give them to from_checkpoint")
        model = model_class.load_from_checkpoint(path, map_location=device, weights_only=False)
        return cls(model, image_size, crop_size, batch_size, region, data.get("keep_aspect", False), compile)

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput],
                category: str | Sequence[str] | None = None) -> Detection | list[Detection]:
        """Score one image or several.

        Args:
            images: A path, a PIL image, an ``(H, W, 3)`` (or ``(H, W)``) uint8 array, a ``(3, H, W)`` float tensor
                in ``[0, 1]``, a ``(B, 3, H, W)`` tensor or a list of these. Float tensors are rounded to 8 bits, as
                image files are.
            category: The category of every image, one per image, or ``None``: the model's only category, else
                the one its category classifier predicts.

        Returns:
            A :class:`Detection`, or a list of them when ``images`` is a list or a ``(B, 3, H, W)`` tensor.
        """
        single = not isinstance(images, list | tuple) and not (torch.is_tensor(images) and images.ndim == 4)
        arrays = [_to_uint8_rgb(image) for image in ([images] if single else list(images))]
        categories = self._categories(category, len(arrays))
        results = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            results += self._predict_batch(chunk, categories[start:start + len(chunk)], start)
        return results[0] if single else results

    def _categories(self, category: str | Sequence[str] | None, count: int) -> list[str]:
        if category is None:
            known = self.model.categories
            return [known[0] if len(known) == 1 else UNKNOWN_CATEGORY] * count
        names = [category] * count if isinstance(category, str) else list(category)
        if len(names) != count:
            raise ConfigError(f"{len(names)} categories for {count} images; give one per image, one for all, or None")
        self.model.class_indices(names)  # a clear UnknownCategoryError for a category the model does not know
        return names

    def _predict_batch(self, arrays: list[np.ndarray], categories: list[str], start: int) -> list[Detection]:
        device = self.model.device
        image = torch.stack([self.transform(image=array)["image"] for array in arrays]).to(device)
        count = len(arrays)
        batch = {"image": image, "category": categories, "path": [f"<image {start + i}>" for i in range(count)],
                 "index": torch.arange(start, start + count, device=device),
                 "label": torch.full((count,), -1, device=device)}
        prediction = self.model.predict_anomaly(batch)
        names = self.model.batch_categories(batch)
        sources = self.model.category_sources(batch)
        classes = self.model.class_indices(names).tolist()
        results = []
        for i, array in enumerate(arrays):
            height, width = array.shape[:2]
            anomaly_map = to_image_resolution(prediction["anomaly_map"][i], height, width, self.image_size,
                                              self.crop_size, self.keep_aspect)
            score = float(prediction["pred_score"][i])
            decision = decide(self.model, classes[i], score)
            mask = None if decision.pixel_threshold is None else anomaly_map > decision.pixel_threshold
            results.append(Detection(anomaly_map, score, decision.anomalous, decision.normalized_score, mask,
                                     names[i], sources[i]))
        return results


def _to_uint8_rgb(image: ImageInput) -> np.ndarray:
    """One image as an ``(H, W, 3)`` uint8 array."""
    if isinstance(image, str | Path):
        return load_rgb(Path(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if torch.is_tensor(image):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"an image tensor must be (3, H, W) (or a (B, 3, H, W) batch), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.permute(1, 2, 0).cpu().numpy()
        return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ConfigError(f"an image array must be (H, W, 3) or (H, W) uint8, got {image.shape} {image.dtype}")
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    raise TypeError(f"cannot read an image from {type(image).__name__}: give a path, a PIL image, an (H, W, 3) uint8 "
                    "array or a (3, H, W) tensor in [0, 1]")
