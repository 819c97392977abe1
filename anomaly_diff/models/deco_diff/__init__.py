from anomaly_diff.models.deco_diff.lightning_model import DeCoDiff

__all__ = ["DeCoDiff"]
