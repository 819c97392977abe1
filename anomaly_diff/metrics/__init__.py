"""Anomaly detection metrics: exact (or binned) image and pixel AUROC, AUPRC, F1max and AUPRO per category."""

from anomaly_diff.metrics.anomaly_metrics import METRIC_NAMES, AnomalyMetrics

__all__ = ["METRIC_NAMES", "AnomalyMetrics"]
