"""The embedded default data set as a data module: generated offline on first use, then read as MVTec AD."""

from pathlib import Path

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
        categories: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        image_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        crop_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        batch_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        eval_batch_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        num_workers: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        val_fraction: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        seed: Seed of the validation split. Defaults to 0.
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
        path: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
    """

    def __init__(
        self,
        root: str = ".cache/embedded",
        categories: list[str] | None = None,
        image_size: int = 288,
        crop_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        data_seed: int = 0,
        generated_size: int = 256,
        num_train: int = 60,
        num_test_good: int = 10,
        num_test_defective: int = 20,
        difficulty: str = "realistic",
        path: str | None = None,
    ) -> None:
        if difficulty not in synthetic.DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {synthetic.DIFFICULTIES}, got {difficulty!r}")
        self.difficulty = difficulty
        self.data_seed = data_seed
        self.generated_size = generated_size
        self.num_train = num_train
        self.num_test_good = num_test_good
        self.num_test_defective = num_test_defective
        super().__init__(
            root, categories, image_size, crop_size, batch_size, eval_batch_size, num_workers, val_fraction, seed,
            path=path,
        )

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
