"""Tell an image's category without its label: the nearest class mean of frozen pretrained features.

Cosine to the mean L2-normalised pooled feature of each category's training normals (the "imprinted weights"
classifier of Qi et al., "Low-Shot Learning with Imprinted Weights", CVPR 2018, Sec. 3.2, without fine-tuning);
accuracy in ``experiments/results/category_prediction.md``. Only the class means ``(C, D)`` are state: the backbone
is rebuilt from its weights source, not saved in checkpoints.
"""

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_diff.errors import NotFittedError
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS, FeatureExtractor


def _drop_backbone(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: leave the frozen backbone out (it is rebuilt from its weights source)."""
    for key in [key for key in state_dict if key.startswith(prefix + "backbone.")]:
        del state_dict[key]


def _fill_missing(module: "CategoryClassifier", state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: keep the module's own backbone; no ``class_means`` (older state dicts) is unfitted."""
    for key, value in module.backbone.state_dict().items():
        state_dict.setdefault(f"{prefix}backbone.{key}", value)
    state_dict.setdefault(prefix + "class_means", torch.full_like(module.class_means, math.nan))


class CategoryClassifier(nn.Module):
    """Nearest class mean (cosine) of globally pooled, L2-normalised features of a frozen pretrained CNN.

    Args:
        num_classes: The number of categories; class ``c`` is row ``c`` of ``class_means``.
        model_name: A timm model name. Defaults to ``"tf_efficientnet_lite0"``.
        layer: The index into the model's ``feature_info`` whose output is pooled. Defaults to 4 (EfficientNet-Lite0's
            deepest stage: stride 32, 320 channels).
        weights: Where the pretrained weights come from (``backbone`` module docstring). Defaults to
            :data:`~anomaly_diff.models.components.backbone.DEFAULT_WEIGHTS`.

    Example:
        >>> classifier = CategoryClassifier(2)
        >>> classifier.fit([{"image": torch.rand(4, 3, 64, 64), "category": ["a", "b", "a", "b"]}],
        ...                lambda names: torch.tensor([["a", "b"].index(n) for n in names]))
        tensor([2, 2])
        >>> classifier(torch.rand(3, 3, 64, 64)).shape
        torch.Size([3])
    """

    def __init__(
        self, num_classes: int, model_name: str = "tf_efficientnet_lite0", layer: int = 4,
        weights: str = DEFAULT_WEIGHTS,
    ) -> None:
        super().__init__()
        # timm initialises the network randomly before the weights load: that must not shift the caller's random stream
        with torch.random.fork_rng(devices=[]):
            self.backbone = FeatureExtractor(model_name, (layer,), output_stride=None, weights=weights)
        self.register_buffer("class_means", torch.full((num_classes, self.backbone.out_channels), math.nan))
        self.register_state_dict_post_hook(_drop_backbone)
        self.register_load_state_dict_pre_hook(_fill_missing)

    @property
    def fitted(self) -> Tensor:
        """``(C,)`` bool: whether each class has a mean (NaN until fitted)."""
        return ~self.class_means.isnan().any(dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """``(B, D)`` float32 unit-length features of ``(B, 3, H, W)`` images in ``[0, 1]`` (any size).

        Computed in float32 outside autocast, so mixed-precision inference sees the features the means were fitted on.
        """
        with torch.autocast(images.device.type, enabled=False):
            features = self.backbone(images.float()).float().mean(dim=(-2, -1))
        return F.normalize(features, dim=1)

    @torch.no_grad()
    def fit(self, batches: Iterable[dict], class_indices: Callable[[Sequence[str]], Tensor]) -> Tensor:
        """Set the mean feature of every class present in ``batches``; the other classes keep theirs.

        Sums are taken per class in float64, in the order of ``batches``, so the means do not depend on the device's
        reduction order beyond that (the same on every process when each iterates the same batches). The backbone is
        frozen, so the means of classes absent here stay valid.

        Args:
            batches: Batches with ``image`` ``(B, 3, H, W)`` in ``[0, 1]`` and ``category`` (names), e.g. a
                ``DataLoader`` of the training normals.
            class_indices: Maps category names onto class indices (``AnomalyModule.class_indices``).

        Returns:
            ``(C,)`` int64: how many images each class was fitted on.

        Raises:
            ValueError: ``batches`` holds no image.
        """
        device = self.class_means.device
        sums = torch.zeros(self.class_means.shape, dtype=torch.float64, device=device)
        counts = torch.zeros(len(self.class_means), dtype=torch.long, device=device)
        for batch in batches:
            features = self.embed(batch["image"].to(device)).double()
            classes = class_indices(batch["category"]).to(device)
            for index in classes.unique().tolist():  # not index_add_: its float atomics are non-deterministic on GPU
                chosen = classes == index
                sums[index] += features[chosen].sum(dim=0)
                counts[index] += int(chosen.sum())
        if not counts.any():
            raise ValueError("the category classifier got no image to fit its class means on; give training normals")
        seen = counts > 0
        self.class_means[seen] = (sums[seen] / counts[seen, None]).to(self.class_means.dtype)
        return counts

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``(B,)`` int64: the class whose normalised mean is nearest by cosine to each image's feature.

        Only fitted classes can be predicted.

        Raises:
            NotFittedError: No class has a mean.
        """
        fitted = self.fitted
        if not fitted.any():
            raise NotFittedError(
                "the category classifier has no class means: the model was never fitted, or its checkpoint predates "
                "category prediction; retrain the model (anomaly-diff fit), or give each image's category "
                "(<path>/<category>/ folders, or data.init_args.categories=[<its one category>])"
            )
        similarity = self.embed(images) @ F.normalize(self.class_means[fitted], dim=1).T
        return fitted.nonzero().squeeze(1)[similarity.argmax(dim=1)]
