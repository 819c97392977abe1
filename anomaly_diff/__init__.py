"""anomaly-diff: multi-class unsupervised anomaly detection with diffusion models.

``anomaly_diff.Detector`` scores images with a trained checkpoint (imported on first use, so importing the package
stays light). ``anomaly_diff.__version__`` is the installed distribution's version (``anomaly-diff --version``),
``"unknown"`` when the package runs from a folder that was not installed.
"""

import importlib.metadata

__all__ = ["Detection", "Detector"]

try:
    __version__ = importlib.metadata.version("anomaly-diff")
except importlib.metadata.PackageNotFoundError:
    __version__ = "unknown"


def __getattr__(name: str):
    if name in __all__:
        from anomaly_diff import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'anomaly_diff' has no attribute {name!r}")
