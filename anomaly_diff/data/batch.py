"""The fields every batch of every datamodule carries, and what models return for them.

Both methods (DeCo-Diff, DRDC) and the shared evaluation callback read these names, so a
new dataset format or a new model only has to honour this contract.
"""

from typing import TypedDict

from torch import Tensor


class Batch(TypedDict):
    """One collated batch of samples.

    Attributes:
        image: ``(B, 3, H, W)`` float32 RGB in ``[0, 1]``; each model normalises it itself.
        mask: ``(B, H, W)`` float32 ground truth in ``{0, 1}``; all zero for normal images, and for images whose
            ground truth is not known (``has_mask`` False), where it means nothing.
        has_mask: ``(B,)`` bool, whether ``mask`` is the ground truth: True for normal images and anomalous images
            with a mask, False for anomalous images without one (``allow_missing_masks``; their categories get no
            pixel metrics) and for images to predict. A batch without this field counts as all True.
        label: ``(B,)`` int64, ``1`` for an anomalous image, ``0`` for a normal one, ``-1`` for an image to
            predict (unknown; its mask is all zero).
        category: the category name of each sample; ``UNKNOWN_CATEGORY`` (``anomaly_diff.data.samples``) for an
            image to predict whose category the data does not tell, which the model predicts.
        path: the image file of each sample.
        index: ``(B,)`` int64 position of the sample in its split; unique per split, so metrics
            can drop the duplicates a distributed sampler pads with.
    """

    image: Tensor
    mask: Tensor
    has_mask: Tensor
    label: Tensor
    category: list[str]
    path: list[str]
    index: Tensor


class Prediction(TypedDict, total=False):
    """What ``test_step`` and ``predict_step`` of every model return, and ``validation_step`` when a callback needs it.

    Attributes:
        anomaly_map: ``(B, H, W)`` float32, same ``H, W`` as ``Batch.image``; higher is more anomalous.
        pred_score: ``(B,)`` float32 image-level anomaly score.
    """

    anomaly_map: Tensor
    pred_score: Tensor
