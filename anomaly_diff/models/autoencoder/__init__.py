from anomaly_diff.models.autoencoder.lightning_model import Autoencoder

__all__ = ["Autoencoder"]
