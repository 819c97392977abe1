"""anomaly-diff: multi-class unsupervised anomaly detection with diffusion models."""
