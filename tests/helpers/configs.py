"""The tiny run config most command-line tests start from, written to a YAML file."""

from pathlib import Path

import yaml

TINY_AUTOENCODER = {
    "class_path": "anomaly_diff.models.autoencoder.Autoencoder",
    "init_args": {"block_out_channels": [8, 8], "norm_num_groups": 8},
}


def write_tiny_config(
    path: Path,
    root: Path | str,
    *,
    run_name: str = "tiny",
    data: dict | None = None,
    model: dict | None = None,
    trainer: dict | None = None,
    **top_level,
) -> Path:
    """Write a config: the tiny autoencoder baseline on the MVTec AD layout at ``root``, 32 px, one CPU epoch.

    ``data`` and ``trainer`` entries update the defaults' ``init_args`` / trainer keys, ``model`` replaces the model,
    ``top_level`` adds keys such as ``heatmaps``; the CSV logger writes ``runs/<run_name>/`` next to ``path``.
    """
    config = {
        "seed_everything": 0,
        "data": {
            "class_path": "anomaly_diff.data.MVTecAD",
            "init_args": {"root": str(root), "image_size": 32, "crop_size": 32, "batch_size": 2, "val_fraction": 0.0,
                          **(data or {})},
        },
        "model": model or TINY_AUTOENCODER,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(path.parent / "runs"), "name": run_name},
            },
            **(trainer or {}),
        },
        **top_level,
    }
    path.write_text(yaml.safe_dump(config))
    return path
