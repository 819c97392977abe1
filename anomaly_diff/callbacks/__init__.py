"""Lightning callbacks shared by every model."""

from anomaly_diff.callbacks.calibration import NormalCalibration
from anomaly_diff.callbacks.evaluation import Evaluator
from anomaly_diff.callbacks.heatmaps import HeatmapWriter
from anomaly_diff.callbacks.predictions import PredictionWriter
from anomaly_diff.callbacks.report import RunReport

__all__ = ["Evaluator", "HeatmapWriter", "NormalCalibration", "PredictionWriter", "RunReport"]
