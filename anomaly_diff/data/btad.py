"""BTAD, the beanTech Anomaly Detection data set (Mishra et al., "VT-ADL", ISIE 2021).

Layout: MVTec AD's, with ``ok``/``ko`` for normal/defective and masks named like their image::

    <root>/01/train/ok/0000.bmp
    <root>/01/test/ok/0000.bmp
    <root>/01/test/ko/0000.bmp
    <root>/01/ground_truth/ko/0000.png      (.png or .bmp depending on the product; matched by stem)
"""

from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.mvtec_ad import find_category_directories, make_mvtec_style_samples
from anomaly_diff.data.samples import Sample


class BTAD(AnomalyDataModule):
    """BTAD (products ``01``, ``02``, ``03``), all products in one multi-class data module.

    The arguments are those of :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`; ``root`` is the
    directory holding ``01/``, ``02/`` and ``03/``.
    """

    def _find_categories(self) -> list[str]:
        return find_category_directories(self.root, "BTAD: <root>/<product>/train/ok/*.bmp")

    def _make_samples(self, category: str) -> list[Sample]:
        return make_mvtec_style_samples(
            self.root / category, category, "ok", mask_suffix="", allow_missing_masks=self.allow_missing_masks
        )
