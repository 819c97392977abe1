"""Lightning callbacks shared by every model."""

from anomaly_diff.callbacks.evaluation import Evaluator

__all__ = ["Evaluator"]
