"""anomaly-diff: multi-class unsupervised anomaly detection with diffusion models.

``anomaly_diff.Detector`` scores images with a trained checkpoint (imported on first use, so importing the package
stays light).
"""

__all__ = ["Detection", "Detector"]


def __getattr__(name: str):
    if name in __all__:
        from anomaly_diff import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'anomaly_diff' has no attribute {name!r}")
