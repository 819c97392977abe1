"""Multi-class anomaly-detection data: the batch contract, layout parsers and LightningDataModules."""

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.data.btad import BTAD
from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.dataset import AnomalyDataset, build_transform
from anomaly_diff.data.embedded import Embedded
from anomaly_diff.data.folder import Folder
from anomaly_diff.data.mvtec_ad import MVTecAD
from anomaly_diff.data.samples import Sample
from anomaly_diff.data.visa import VisA

__all__ = [
    "BTAD",
    "AnomalyDataModule",
    "AnomalyDataset",
    "Batch",
    "Embedded",
    "Folder",
    "MVTecAD",
    "Prediction",
    "Sample",
    "VisA",
    "build_transform",
]
