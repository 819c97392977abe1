"""The embedded default data set as a data module: generated offline on first use, then read as MVTec AD."""

from pathlib import Path
from typing import Literal

from anomaly_diff.data import synthetic
from anomaly_diff.data.mvtec_ad import MVTecAD


class Embedded(MVTecAD):
    """The embedded data set (:mod:`anomaly_diff.data.synthetic`), written to ``root`` by ``prepare_data``.

    All of :data:`~anomaly_diff.data.synthetic.EMBEDDED_CATEGORIES` are always generated, so selecting a
    subset with ``categories`` reuses the same cache; the generator rebuilds ``root`` only when its own
    parameters (``data_seed``, ``generated_size``, the counts, ``difficulty``) change. The categories are known before
    the data exists, so ``categories``/``num_classes`` are available right after construction.

    Args:
        root: Where the data set is generated (and cached), relative to the working directory unless
            absolute. Defaults to ``".cache/embedded"``.
        data_seed: Seed of the generated images (kept apart from ``seed`` so that changing the split
            does not regenerate the data). Defaults to 0.
        generated_size: Side of the generated square images, before ``image_size``/``crop_size``.
            Defaults to 256.
        num_train: Normal training images per category. Defaults to 60.
        num_test_good: Normal test images per category. Defaults to 10.
        num_test_defective: Defective test images per category. Defaults to 20.
        difficulty: Defect preset of the generator, one of :data:`~anomaly_diff.data.synthetic.DIFFICULTIES`:
            ``"realistic"`` (MVTec AD-like defects) or ``"hard"`` (generator version 1's far harder ones). Defaults
            to ``"realistic"``.
        **kwargs: The other arguments of :class:`~anomaly_diff.data.datamodule.AnomalyDataModule` (the generated
            data has every mask: ``allow_missing_masks`` changes nothing).
    """

    def __init__(
        self,
        root: str = ".cache/embedded",
        data_seed: int = 0,
        generated_size: int = 256,
        num_train: int = 60,
        num_test_good: int = 10,
        num_test_defective: int = 20,
        difficulty: Literal["realistic", "hard"] = "realistic",
        **kwargs,
    ) -> None:
        self.difficulty = difficulty
        self.data_seed = data_seed
        self.generated_size = generated_size
        self.num_train = num_train
        self.num_test_good = num_test_good
        self.num_test_defective = num_test_defective
        super().__init__(root, **kwargs)

    def _find_categories(self) -> list[str]:
        return list(synthetic.EMBEDDED_CATEGORIES)

    def prepare_data(self) -> None:
        """Generate the data set at ``root`` unless the same one is already there."""
        synthetic.generate_embedded_dataset(
            Path(self.root),
            seed=self.data_seed,
            image_size=self.generated_size,
            num_train=self.num_train,
            num_test_good=self.num_test_good,
            num_test_defective=self.num_test_defective,
            difficulty=self.difficulty,
        )
